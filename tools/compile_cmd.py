"""`optc compile`: optimize, lower through TVM and export a shared library."""

from __future__ import annotations

import json
import os
import time

from ..codegen.artifact import EMIT_SUFFIXES
from ..codegen.input_shapes import parse_input_shapes
from ..codegen.precision import PRECISIONS, describe_precision
from ..codegen.static_batch import parse_sizes
from ..errors import OptcError
from ..runtime import LIBRARY_SUFFIX
from .native_log import stdout_to_stderr
from .paths import check_output_path


def run(args) -> int:
    from ..ir import load

    check_output_path(args.model, args.output, (EMIT_SUFFIXES[args.emit],) if args.emit else (LIBRARY_SUFFIX,))
    if args.tune and args.trials < 1:
        raise OptcError(f"--trials must be >= 1 with --tune, got {args.trials} (without --tune, --db applies an "
                        "existing database)")
    if args.tune and not args.db:
        raise OptcError("--tune needs --db DIR, the tuning database directory (reused by later compiles)")
    if args.db and not args.tune and not os.path.isdir(args.db):
        raise OptcError(f"--db {args.db}: no such directory (without --tune, --db applies an existing database)")
    input_shapes = parse_input_shapes(args.input_shape)
    static_batch = parse_sizes(args.static_batch) if args.static_batch is not None else None
    model = load(args.model)  # a bad input fails here, before TVM is imported
    from ..codegen.compile import compile_to_file, describe_kernels
    from ..codegen.targets import describe_target, resolve_target, target_metadata

    target = resolve_target(args.target, mcpu=args.mcpu)
    report: dict = {}
    start = time.perf_counter()
    with stdout_to_stderr(args.json):
        path = compile_to_file(model, args.output, target, level=args.level, trials=args.trials if args.tune else 0,
                               db=args.db, progress=not args.quiet, report=report, fast_math=args.fast_math,
                               rpc=args.rpc, cc=args.cc, emit=args.emit, input_shapes=input_shapes,
                               precision=args.precision, static_batch=static_batch)
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps({"model": args.model, "output": str(path),
                          "metadata": None if args.emit else f"{path}.json", "emit": args.emit or "so",
                          "target": args.target, "target_info": target_metadata(target), "opt_level": args.level,
                          "fast_math": args.fast_math, "precision": args.precision, "seconds": seconds,
                          **report}, indent=2, default=str))
        return 0
    build = report.get("build", {})
    math = "" if args.fast_math else ", no fast math"
    check = report.get("tuning_check") or {}
    tuned = 0 if check.get("kept") == "untuned" else build.get("tuned", 0)  # (the untuned build was written)
    line = (f"wrote {path} ({describe_target(target, args.target)}, -O{args.level}{math}) in {seconds:.1f} s: "
            f"{build.get('kernels', '?')} kernels, {tuned} tuned")
    if build.get("tuned_entries") and check.get("kept") != "untuned":
        line += f" (and {build['tuned_entries']} of the static batch entries' {build['kernels_entries']})"
    entries = build.get("static_batch")
    if entries and not entries["sizes"]:
        line += f" (no static batch entries: {entries['skipped']})"
        entries = None
    if entries:
        sizes = entries["sizes"]
        which = f"a batch-{sizes[0]} entry" if len(sizes) == 1 else \
            "batch-" + ", batch-".join(map(str, sizes[:-1])) + f" and batch-{sizes[-1]} entries"
        line += (f" (with {which}: {', '.join(entries['dims'])} = {' or '.join(map(str, sizes))} runs static "
                 "kernels, the symbolic batch's shape work skipped)")
    cuda = report.get("cuda")
    if cuda is not None:
        line += f"; CUDA kernels compiled with nvcc to a {cuda['arch']} cubin ({cuda['cubin_bytes'] / 1024:.0f} KiB)"
    elif target.kind.name == "cuda":
        line += "; CUDA kernels not compiled here (no GPU, no nvcc): they compile when the library loads on a GPU"
    if "database" in report:
        line += f" from the database {report['database']}"
    tuning = report.get("tuning")
    if tuning is not None:
        line += f"; tuning ran {tuning.get('trials', 0)} new trials on {tuning.get('tuned_tasks', 0)} of " \
                f"{tuning.get('tasks', 0)} tasks"
        if tuning.get("skipped_symbolic"):
            line += (f"; {tuning['skipped_symbolic']} kernels with symbolic shapes were not tuned "
                     + ("(main's: the static batch entries' run at their sizes)" if entries else
                        "(fix them with --input-shape NAME:DIMS)"))
        if tuning.get("skipped_padded_weights"):
            line += (f"; {tuning['skipped_padded_weights']} kernels keep their untuned schedule (it pads a weight at "
                     "compile time, which the tuner cannot measure)")
    if "kept" in check:  # (codegen/tuned_check.py: the two builds timed in turns on this CPU)
        line += (f"; end to end the tuned build ran {check['ratio']:.2f}x the untuned one's time: "
                 + ("kept" if check["kept"] == "tuned" else "the untuned schedules are kept"))
    print(line)
    kernels = report.get("kernels")
    if kernels:  # (describe_kernels is empty for a model with no quantized conv/matmul)
        line = describe_kernels(kernels)
        if line:
            print(line)
    if "bf16" in report:
        print(describe_precision(report["bf16"]))
    return 0


def register(sub) -> None:
    p = sub.add_parser("compile", help="compile a model to a shared library with TVM",
                       description="Optimize a model (-O), lower it to TVM Relax, optionally tune its kernels "
                       "with MetaSchedule, and export a shared library plus a JSON metadata file beside it.")
    p.add_argument("model", help="an ONNX file")
    p.add_argument("-o", "--output", required=True, help="the library to write (a .so), e.g. model.so; its metadata "
                   "goes to model.so.json")
    p.add_argument("--target", default="cpu", help="cpu (this machine's CPU; default), cuda[:sm_XX] (the GPU's "
                   "architecture, else sm_75), arm64 (aarch64 Linux), or any TVM target as JSON "
                   "('{\"kind\": \"llvm\", \"mcpu\": \"znver4\"}') or in TVM's string form ('llvm -mcpu=skylake')")
    p.add_argument("--mcpu", metavar="NAME", help="the CPU to generate code for (cpu and arm64 targets): native (this "
                   "one, its features checked against /proc/cpuinfo), a portable level x86-64, x86-64-v2, x86-64-v3, "
                   "x86-64-v4, or any LLVM CPU name (skylake-avx512, znver4, neoverse-n1, ...)")
    p.add_argument("--cc", metavar="COMPILER", help="the compiler that links the library, e.g. aarch64-linux-gnu-g++ "
                   "(default: g++; for arm64 the aarch64 cross compiler found on PATH)")
    p.add_argument("--emit", choices=sorted(EMIT_SUFFIXES), help="write LLVM IR (-o x.ll), assembly (-o x.s) or the "
                   "object files as a tar archive (-o x.tar) instead of linking a library")
    p.add_argument("--input-shape", action="append", metavar="NAME:DIMS", help="fix an input's shape before "
                   "compiling, e.g. input_ids:1x128 (repeatable); symbolic dims it names are fixed everywhere, and "
                   "the library then takes only that shape")
    p.add_argument("--static-batch", metavar="N[,N...]", help="batch sizes that get an entry with static shapes and "
                   "kernels beside the symbolic one (no shape work at run time; each compiles the kernels once "
                   "more), for a model whose symbolic input dims are all named leading batch dims, e.g. 1,32, or "
                   "none (default: 1 for such a model of at most 16M multiply-accumulates per sample); CPU "
                   "targets only, and not for integer or bf16 kernels (the summary says when none were built)")
    levels = p.add_mutually_exclusive_group()
    for level in range(4):
        levels.add_argument(f"-O{level}", dest="level", action="store_const", const=level,
                            help=f"optimization level {level}" + (" (default)" if level == 2 else ""))
    p.set_defaults(level=2)
    p.add_argument("--tune", action="store_true", help="tune the kernels: measure optc's default schedule and its rule variants, then "
                   "MetaSchedule's search (see codegen/SCHEDULES.md)")
    p.add_argument("--trials", type=int, default=64, metavar="N", help="measured candidates in all, rule variants included (default 64)")
    p.add_argument("--db", metavar="DIR", help="tuning database directory; a second compile with the same "
                   "database runs no new trials; without --tune an existing database is applied")
    p.add_argument("--rpc", metavar="HOST:PORT:KEY", help="with --tune: measure the candidates on the servers "
                   "registered under KEY with the TVM RPC tracker at HOST:PORT, in parallel (see `optc rpc`)")
    p.add_argument("--no-fast-math", dest="fast_math", action="store_false",
                   help="use libm's exp, tanh and erf and the plain softmax instead of the vectorized polynomial "
                   "approximations, and direct 3x3 convolutions instead of Winograd's (default: fast math; measured "
                   "errors in benchmarks/RESULTS.md 'Fast math' and 'Winograd')")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="fp32 (default), or bf16: Conv, MatMul, "
                   "Gemm and attention matmuls on bfloat16 operands with float32 accumulation, float32 inputs and "
                   "outputs (error bound in codegen/precision.py; emulated on CPUs without AVX512-BF16/AMX-BF16)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout: model, output, metadata, "
                   "emit, target, target_info, opt_level, fast_math, precision, seconds, build (kernels, tuned, ...), "
                   "kernels (conv/matmul ops by how they run: integer, bfloat16, float, float_reasons), "
                   "database (--db without --tune), when tuning, tuning, and with --precision bf16 "
                   "bf16 (converted and kept_float32 op counts, native)")
    p.set_defaults(func=run)
