"""The whole compile pipeline: optimize (-O) -> lower to Relax -> (tune) -> build -> export / load.

`compile` is `optc.compile`; `compile_to_file` is what `optc compile` runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import OptcError
from ..ir import Model, load
from ..lowering import lower, signature
from .artifact import check_emit, export
from .artifact import emit as emit_file
from .build import build, compile_cuda_kernels, fast_math_default, find_nvcc
from .input_shapes import fix_input_shapes
from .precision import bf16_kernels, check_precision, native_bf16, to_bfloat16
from .static_batch import check_sizes, default_sizes, entry_name, model_batch_vars
from .targets import check_measurable, gpu_arch, linker, resolve_target, target_kind
from .tuned_check import keep_faster, runs_here
from .tuning import open_database
from .tuning import tune as tune_kernels


def _as_model(model: Model | str | os.PathLike | bytes) -> Model:
    return model if isinstance(model, Model) else load(model)


def build_executable(model: Model | str | os.PathLike, target="cpu", *, level: int = 2,
                     trials: int = 0, db: str | os.PathLike | None = None, progress: bool = False,
                     report: dict | None = None, fast_math: bool = True, rpc: str | None = None,
                     mcpu: str | None = None, input_shapes: dict[str, tuple[int, ...]] | None = None,
                     precision: str = "fp32", static_batch: Sequence[int] | None = None):
    """Optimize, lower and build a model. Returns `(executable, metadata)`.

    `target`, `mcpu`: see `targets.resolve_target` (a preset, any TVM target as dict/JSON, an LLVM CPU name).
    `input_shapes` (`{input name: shape}`) fixes symbolic input dims before optimizing (`input_shapes.py`).
    With `trials > 0` the kernels are tuned with MetaSchedule first, into the database directory `db`
    (required); a database that already holds them runs no new trials. With `trials == 0` an existing `db` is
    applied (OptcError when the directory does not exist). Tuning for a target this machine cannot run (cuda
    without a GPU, arm64 on x86) without `rpc` is refused before lowering. `report` receives `tuning` (tasks,
    trials, skipped_symbolic) and `build` (kernels, tuned, scheduled) figures; where a database was applied and the
    library runs on this CPU, `tuning_check` (the tuned and the untuned build timed in turns, the faster returned:
    `tuned_check.keep_faster`). `fast_math` (default True): polynomial
    exp / softmax / tanh / erf in the kernels (max errors in benchmarks/RESULTS.md "Fast math") and float32 3x3
    stride-1 convolutions by Winograd's F(2x2, 3x3) (``winograd.py``); False uses libm's and direct convolutions. With fast math, from -O2, the transformer blocks are also fused into the standard ops (attention into
    one kernel: ``codegen/attention.py``), which differ from the graph where the scores hold NaN, infinities or
    overflow (README, "Transformers"); the other graph rewrites are IEEE-exact either way (their own `fast_math`
    stays off).
    `rpc` (`HOST:PORT:KEY`): tuning measures on the servers of that key of a TVM RPC tracker (see
    `codegen.tuning.tune`); the tracker, the key and one server are checked before anything else (OptcError).
    `precision` (`fp32`, `bf16`): `bf16` computes Conv / MatMul / Gemm (and attention matmuls that no fused float32
    attention kernel takes) on bfloat16 operands with float32 accumulation, float32 I/O (`precision.to_bfloat16`,
    error bound there); `report["bf16"]` and the metadata's `precision` / `bf16` say what was converted and whether
    the target has native bf16 instructions.
    `static_batch` (batch sizes, each 1..65536, or one int): a model whose symbolic input dims are all named
    leading batch dims also gets an entry with static shapes and kernels for each, which `optc.runtime` calls at
    that batch size (`static_batch.py`; OptcError for another model); None: batch 1 for such a model of at most
    16M multiply-accumulates per sample (`static_batch.default_sizes`); (): none. CPU targets only, and not
    where the lowering writes kernels of its own for the symbolic shapes (integer and bf16 kernels, libm math,
    index checks): then none are built and `report["build"]["static_batch"]["skipped"]` says why, as the
    compile summary does. `report["build"]["static_batch"]` and the metadata's `entries` say which were built.
    """
    from ..rewrites import optimize
    from ..rewrites.pipelines import copy_model
    from ..rewrites.rules.qoperator import to_qdq_ops
    from ..rewrites.rules.weight_int4 import to_weight_int4_ops

    tvm_target = resolve_target(target, mcpu=mcpu)
    check_precision(precision, tvm_target)
    if trials < 0:
        raise OptcError(f"--trials must be >= 0, got {trials}")
    if trials > 0:
        check_measurable(tvm_target, remote=rpc is not None)
    if rpc is not None:
        if trials <= 0:
            raise OptcError("--rpc sends tuning measurements to remote servers: use it with --tune")
        from ..remote.measure import check_servers

        check_servers(rpc)
    report = report if report is not None else {}
    model = _as_model(model)
    if input_shapes:
        model = copy_model(model)
        fix_input_shapes(model, input_shapes)
    sizes = check_sizes(static_batch, model) if static_batch is not None else None
    # with fast math, from -O2, the transformer blocks become the standard fused ops, which lower to kernels of
    # their own (one float32 attention kernel: codegen/attention.py). Only with fast math: the fused Attention adds
    # its mask where the graph's Where replaced masked scores (a NaN key score then spoils the row), zeroes a fully
    # masked row where the graph's Softmax gives NaN, and scales Q and K by sqrt(scale) each (another overflow
    # threshold). With bf16 too: the fused attention stays the float32 kernel (``to_bfloat16``). The "optc" form:
    # masks that can mask a whole row fuse too (GPT-2's causal + padding mask), as optc's lowering computes such a row as the spec does.
    fuse = "optc" if level >= 2 and fast_math else None
    model = optimize(model, level=level, runtime=fuse)
    to_qdq_ops(model)
    int4_matmuls = to_weight_int4_ops(model)
    kernels = integer_kernels(model, level)
    kernels["int4_weights"] = int4_matmuls
    if precision == "bf16":
        kernels = bf16_kernels(model, kernels)
    report["kernels"] = kernels
    batch_dims = model_batch_vars(model)
    sizes = (default_sizes(model) if sizes is None else sizes) if batch_dims else ()
    mod = lower(model)
    if tvm_target.kind.name != "llvm":  # a GPU kernel cannot fail the call
        from ..lowering.ops.indexing import without_index_asserts

        mod = without_index_asserts(mod)
    if precision == "bf16":
        native = native_bf16(tvm_target)
        mod, converted = to_bfloat16(mod, tvm_target, fast_math=fast_math, separate_padding=native)
        report["bf16"] = {**converted, "native": native}
    database = None
    if db is not None and trials == 0:
        if not (Path(db) / "database_workload.json").is_file():
            raise OptcError(f"no tuning database in '{db}' (tune into it first: --tune --db {db})")
        database = open_database(db, create=False)
        report["database"] = str(db)
    elif db is not None:
        report["tuning"] = {}
        with fast_math_default(fast_math):  # tuning prepares the module itself: the same kernels as the build
            database = tune_kernels(mod, None, tvm_target, Path(db), trials, progress=progress,
                                    report=report["tuning"], rpc=rpc, batch_sizes=sizes)
    elif trials:
        raise OptcError("tuning needs a database directory (--db DIR) to keep its results")
    report["build"] = {}
    executable = build(mod, None, tvm_target, database=database, report=report["build"], fast_math=fast_math,
                       batch_sizes=sizes)
    inputs, outputs = signature(model)
    if database is not None and rpc is None and runs_here(tvm_target):
        # the tuned library against the untuned one, end to end on this CPU: the faster is kept (tuned_check.py)
        report["tuning_check"] = {}
        entry = (entry_name(sizes[0]), dict.fromkeys(batch_dims, sizes[0])) if sizes else None
        executable = keep_faster(executable, lambda: build(mod, None, tvm_target, database=None, report={},
                                                           fast_math=fast_math, batch_sizes=sizes),
                                 inputs, report["tuning_check"], entry)
    kernels["instructions"] = dict(report["build"].get("dot_products", {}))
    if precision == "bf16":
        report["bf16"]["amx"] = kernels["instructions"].get("AMX bf16", 0)
        report["bf16"]["avx512bf16"] = kernels["instructions"].get("AVX512-BF16", 0)
    meta = {"inputs": inputs, "outputs": outputs, "target": target_kind(tvm_target),
            "target_spec": json.loads(str(tvm_target)), "opt_level": level,
            "fast_math": bool(fast_math), "kernels": kernel_metadata(kernels), "precision": precision}
    if precision == "bf16":
        meta["bf16"] = report["bf16"]
    skipped = report["build"].pop("batch_skipped", None)
    if report["build"].pop("batch_vars", None):  # the runtime calls an entry when every one of these dims is its size
        report["build"]["static_batch"] = {"dims": batch_dims, "sizes": list(sizes)}  # the model's names (TVM's
        meta["entries"] = {entry_name(n): dict.fromkeys(batch_dims, n) for n in sizes}  # are C identifiers)
    elif static_batch and skipped:  # asked for and not built: the summary says why
        report["build"]["static_batch"] = {"dims": batch_dims, "sizes": [], "skipped": skipped}
    return executable, meta


def integer_kernels(model: Model, level: int) -> dict:
    """From -O1 on, turn the model's QDQ patterns into optc's integer ops (in place: `model` is the optimized
    copy; `rewrites/rules/qinteger.py`); return how its convolutions and matmuls run (`kernel_summary`)."""
    from ..rewrites.rules.qinteger import kernel_summary, to_integer_ops

    return to_integer_ops(model) if level >= 1 else kernel_summary(model)


#: float ops listed with their reason in the artifact's metadata (the compile report lists them all)
_META_REASONS = 8


def kernel_metadata(kernels: dict) -> dict:
    """The artifact metadata key `kernels`: `{"integer": n, "bfloat16": n, "float": n, "float_reasons": {op: why},
    "instructions": {isa: n}}` counting the convolutions and matmuls (Conv, MatMul, Gemm and the integer ops) by
    how they run (at most 8 float ops keep their reason) and the compiled kernels by the dot-product instructions
    they use (``build.DOT_PRODUCT_INTRINSICS``: "AMX int8", "AVX512-VNNI", "AMX bf16", ...)."""
    reasons = dict(list(kernels["float_reasons"].items())[:_META_REASONS])
    return {**{k: kernels[k] for k in ("integer", "bfloat16", "float")}, "float_reasons": reasons,
            "instructions": dict(kernels.get("instructions", {})), "int4_weights": kernels.get("int4_weights", 0)}


def describe_kernels(kernels: dict | None) -> str:
    """One line for the compile / bench summaries, e.g. 'integer kernels: 12 of 14 conv/matmul (2 float: ...)',
    followed by 'weight-only int4: N matmuls ...' when the model has 4-bit weights (`int4_weights`); empty for a
    model with no quantized conv/matmul (a float model)."""
    if not kernels:
        return "integer kernels: unknown (an artifact from before optc recorded them)"
    int4 = kernels.get("int4_weights", 0)
    line = _describe_integer(kernels)
    if int4:
        what = f"weight-only int4: {int4} matmul{'s' if int4 != 1 else ''} with 4-bit weights unpacked in the kernel " \
               "(float32 compute)"
        line = f"{line}; {what}" if line else what
    return line


def _describe_integer(kernels: dict) -> str:
    total = kernels["integer"] + kernels["bfloat16"] + kernels["float"]
    if not total:
        return ""
    line = f"integer kernels: {kernels['integer']} of {total} conv/matmul"
    if kernels["bfloat16"]:
        line += f", {kernels['bfloat16']} bfloat16"
    integer_isas = {isa: n for isa, n in kernels.get("instructions", {}).items()
                    if isa not in ("AMX bf16", "AVX512-BF16")}
    if integer_isas:
        line += " [compiled kernels by instruction: " + ", ".join(f"{n} {isa}" for isa, n in integer_isas.items()) + "]"
    if kernels["float"]:
        whys: dict[str, int] = {}
        for why in kernels["float_reasons"].values():
            whys[why] = whys.get(why, 0) + 1
        if not kernels["integer"] and not kernels["bfloat16"] and list(whys) \
                and all(w.startswith("not quantized") for w in whys):
            return ""  # a float model: nothing to say
        listed = [f"{n} {w}" for w, n in whys.items()]
        unlisted = kernels["float"] - sum(whys.values())  # the artifact metadata keeps 8 reasons
        if unlisted > 0:
            listed.append(f"{unlisted} more")
        line += f" ({kernels['float']} float: " + "; ".join(listed) + ")"
    return line


def compile_to_file(model: Model | str | os.PathLike, output: str | os.PathLike, target="cpu", *,
                    cc: str | None = None, emit: str | None = None, **options) -> Path:
    """Compile a model into a shared library at `output` (metadata in `output + '.json'`), linked with `cc` (default:
    g++, or the aarch64 cross compiler for arm64; checked before the build). `emit` (`llvm`, `asm`, `tar`) writes
    LLVM IR, assembly or the object files to `output` instead (`artifact.emit`). For cuda on a machine without a GPU
    the kernels are compiled with nvcc when one is found (`build.compile_cuda_kernels`; `report["cuda"]`), since TVM
    then only keeps their source. `options`: `build_executable`'s."""
    tvm_target = resolve_target(target, mcpu=options.pop("mcpu", None))
    if emit is not None:
        check_emit(emit, output)
        if cc is not None:
            raise OptcError(f"--cc links a library; --emit {emit} links nothing")
    else:
        cc = linker(tvm_target, cc)
    executable, meta = build_executable(model, tvm_target, **options)
    if target_kind(tvm_target) == "cuda" and gpu_arch() is None and find_nvcc() is not None:
        # no GPU: TVM kept only the kernels' source; check that they compile (when there is an nvcc to do it)
        report = options.get("report")
        cuda = compile_cuda_kernels(executable, tvm_target)
        if report is not None:
            report["cuda"] = cuda
    if emit is not None:
        return emit_file(executable, output, emit, target=tvm_target)
    return export(executable, output, meta, target=tvm_target, cc=cc)


def compile(model: Model | str | os.PathLike, target="cpu", *, level: int = 2, trials: int = 0,  # noqa: A001
            db: str | os.PathLike | None = None, progress: bool = False, fast_math: bool = True,
            mcpu: str | None = None, input_shapes: dict[str, tuple[int, ...]] | None = None,
            precision: str = "fp32", static_batch: Sequence[int] | None = None):
    """Compile a model for `target` (`cpu`, `cuda`, `arm64`) and load it: returns a `optc.runtime.Module`
    with `run({name: array}) -> {name: array}`. Cross targets (arm64) and cuda without a GPU can only be
    compiled to a file (`optc compile`); `Module.export(path)` writes the artifact `optc compile` would.
    `fast_math=False`: libm's exp / tanh / erf, the plain softmax and direct 3x3 convolutions
    instead of the polynomial approximations and Winograd's (see `build_executable`). `trials` > 0 tunes with MetaSchedule
    into the database `db` (a directory, reused across runs); `trials=0` with `db` applies that database. `mcpu`,
    `input_shapes`, `precision` (`fp32`, `bf16`), `static_batch`: see `build_executable`.

    Raises OptcError (one line) for an unreadable model, an unknown target, an op or attribute the back end
    refuses (`UnsupportedError`, naming the node and the reason), a target this machine cannot run, and a
    build failure."""
    from tvm.runtime.vm import VirtualMachine

    from ..runtime import Module, _device_for

    tvm_target = resolve_target(target, mcpu=mcpu)
    kind = target_kind(tvm_target)
    if kind == "arm64":
        raise OptcError("an arm64 module cannot run here; compile it to a file with `optc compile --target arm64`")
    executable, meta = build_executable(model, tvm_target, level=level, trials=trials, db=db, progress=progress,
                                        fast_math=fast_math, input_shapes=input_shapes, precision=precision,
                                        static_batch=static_batch)
    device = _device_for(kind)
    return Module(None, meta, VirtualMachine(executable, device), device, executable)
