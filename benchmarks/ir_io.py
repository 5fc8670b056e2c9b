"""Benchmark: optc load+save against plain protobuf (onnx.load + onnx.save) and onnx-graphsurgeon.

    python benchmarks/ir_io.py [--sizes 10000,100000,200000] [--repeat N] [--big [--big-gb 3]]

Every measurement runs in a fresh subprocess, so peak RSS (the child's max RSS, from `os.wait4`) is honest;
the tools take turns within each repeat, so machine noise hits all of them alike. Times are medians over the
repeats (each child reports the median of a few inner runs for the small models, whose load+save takes
milliseconds). Models: the nine "light" models shipped with onnx, and generated transformer-like stacks
(MatMul + bias + Relu + a decomposed LayerNorm + residual Add per block, small weights, value_info on every
intermediate, as exported by shape-inferring tools) of N nodes, under benchmarks/_work/.

`--big` also writes a ~3 GB external-data model (weights written straight to the data file) and runs
`optc convert big.onnx -o out.onnx` on it, recording wall time and peak RSS (target: under 1 GB).

The latest results go to benchmarks/RESULTS.md, section "IR load+save" (other sections are left alone).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
RESULTS = HERE / "RESULTS.md"
SECTION = "## IR load+save"
TOOLS = ("protobuf", "optc", "graphsurgeon")
LIGHT = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet", "squeezenet",
         "vgg19", "zfnet512")


# -- the child: one tool, one model ----------------------------------------------------------------------


def _child(tool: str, path: str, out: str, inner: int) -> None:
    """Load and save `path` with `tool` `inner` times; print the median load and save seconds as JSON."""
    import onnx

    if tool == "optc":
        from optc.ir import load, save

        def run():
            t0 = time.perf_counter()
            m = load(path)
            t1 = time.perf_counter()
            save(m, out)
            return t1 - t0, time.perf_counter() - t1
    elif tool == "protobuf":
        def run():
            t0 = time.perf_counter()
            m = onnx.load(path)
            t1 = time.perf_counter()
            onnx.save(m, out)
            return t1 - t0, time.perf_counter() - t1
    else:
        import onnx_graphsurgeon as gs

        def run():
            t0 = time.perf_counter()
            g = gs.import_onnx(onnx.load(path))
            t1 = time.perf_counter()
            onnx.save(gs.export_onnx(g), out)
            return t1 - t0, time.perf_counter() - t1

    runs = []
    for _ in range(inner):
        if os.path.exists(out):  # every tool writes a new file (no replace-over-existing flush by the FS)
            os.unlink(out)
        runs.append(run())
    print(json.dumps({"load": statistics.median(r[0] for r in runs),
                      "save": statistics.median(r[1] for r in runs)}))


def _measure(argv: list[str]) -> tuple[str, float, int]:
    """Run a command; its stdout, wall seconds and peak RSS in bytes."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_text = proc.stdout.read()
    err_text = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{err_text[-2000:]}")
    return out_text, wall, usage.ru_maxrss * 1024


def bench_model(path: Path, repeat: int, inner: int) -> dict[str, dict[str, float]]:
    """Medians of load, save, load+save seconds and of peak RSS for each tool on one model."""
    samples: dict[str, list[tuple[float, float, int]]] = {t: [] for t in TOOLS}
    out = WORK / f"out_{os.getpid()}.onnx"
    for _ in range(repeat):
        for tool in TOOLS:
            text, _, rss = _measure([sys.executable, __file__, "--child", tool, str(path), str(out), str(inner)])
            r = json.loads(text.strip().splitlines()[-1])
            samples[tool].append((r["load"], r["save"], rss))
    out.unlink(missing_ok=True)
    med = statistics.median
    return {t: {"load": med(s[0] for s in v), "save": med(s[1] for s in v),
                "total": med(s[0] + s[1] for s in v), "rss": med(s[2] for s in v)}
            for t, v in samples.items()}


# -- generated models ------------------------------------------------------------------------------------


def generate_stack(n_nodes: int, path: Path, width: int = 8) -> None:
    """A transformer-like stack of about `n_nodes` nodes (13 per block) with small weights and value_info."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    f32 = TensorProto.FLOAT
    nodes, inits, infos = [], [numpy_helper.from_array(np.array([1e-5], np.float32), "eps")], []
    x, block = "input", 0
    while len(nodes) < n_nodes:
        p = f"/blocks.{block}"
        weights = {
            "w": rng.standard_normal((width, width), dtype=np.float32),
            "b": rng.standard_normal(width, dtype=np.float32),
            "g": np.ones(width, np.float32),
            "beta": np.zeros(width, np.float32),
        }
        names = {k: f"blocks.{block}.{k}" for k in weights}
        inits += [numpy_helper.from_array(a, names[k]) for k, a in weights.items()]

        def op(op_type, inputs, label, p=p, **attrs):
            out = f"{p}/{label}_output_0"
            nodes.append(helper.make_node(op_type, inputs, [out], name=f"{p}/{label}", **attrs))
            infos.append(helper.make_tensor_value_info(out, f32, ["batch", width]))
            return out

        h = op("MatMul", [x, names["w"]], "fc/MatMul")
        h = op("Add", [h, names["b"]], "fc/Add")
        h = op("Relu", [h], "Relu")
        mean = op("ReduceMean", [h], "ln/ReduceMean", axes=[-1], keepdims=1)
        d = op("Sub", [h, mean], "ln/Sub")
        var = op("ReduceMean", [op("Mul", [d, d], "ln/Mul")], "ln/ReduceMean_1", axes=[-1], keepdims=1)
        std = op("Sqrt", [op("Add", [var, "eps"], "ln/Add")], "ln/Sqrt")
        y = op("Mul", [op("Div", [d, std], "ln/Div"), names["g"]], "ln/Mul_1")
        x = op("Add", [op("Add", [y, names["beta"]], "ln/Add_1"), x], "residual")
        block += 1
    graph = helper.make_graph(nodes, "stack", [helper.make_tensor_value_info("input", f32, ["batch", width])],
                              [infos.pop()], inits, value_info=infos)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="optc-bench")
    onnx.save(model, str(path))


def generate_big(path: Path, gigabytes: float) -> int:
    """A chain of MatMuls whose 64 MiB weights (about `gigabytes` in all) are written straight to
    `<path>.data`, never through protobuf. Returns the data file's size."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    dim = 4096
    layer_bytes = dim * dim * 4
    layers = max(1, round(gigabytes * 2**30 / layer_bytes))
    location = path.name + ".data"
    block = (np.arange(dim * 256, dtype=np.float32) % 251 / 251.0).tobytes()  # 4 MiB pattern
    nodes, inits, x = [], [], "x"
    with open(path.parent / location, "wb") as f:
        for i in range(layers):
            offset = f.tell()
            for _ in range(layer_bytes // len(block)):
                f.write(block)
            t = onnx.TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[dim, dim],
                                 data_location=TensorProto.EXTERNAL)
            for k, v in (("location", location), ("offset", str(offset)), ("length", str(layer_bytes))):
                e = t.external_data.add()
                e.key, e.value = k, v
            inits.append(t)
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
            x = f"h{i}"
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, dim])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return (path.parent / location).stat().st_size


def bench_big(gigabytes: float) -> dict[str, float]:
    """Generate the big model, then time `optc convert` on it and take its peak RSS."""
    big_dir = WORK / "big"
    big_dir.mkdir(parents=True, exist_ok=True)
    src = big_dir / "big.onnx"
    data_bytes = int(subprocess.run([sys.executable, __file__, "--generate-big", str(gigabytes), str(src)],
                                    check=True, capture_output=True, text=True).stdout.split()[-1])
    out = big_dir / "out.onnx"
    optc = [sys.executable, "-c", "import sys; from optc.tools.cli import main; sys.exit(main())"]
    _, wall, rss = _measure([*optc, "convert", str(src), "-o", str(out)])
    out_data = big_dir / "out.onnx.data"
    same = _same_bytes(big_dir / "big.onnx.data", out_data)
    result = {"data_gb": data_bytes / 2**30, "wall_s": wall, "rss_mb": rss / 2**20, "same_bytes": same}
    for p in big_dir.iterdir():
        p.unlink()
    return result


def _same_bytes(a: Path, b: Path) -> bool:
    """The data files hold the same bytes (the writer aligns tensors to 4 KiB; these are already aligned)."""
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(16 << 20), fb.read(16 << 20)
            if x != y:
                return False
            if not x:
                return True


# -- reporting -------------------------------------------------------------------------------------------


def _rows(results: dict[str, dict]) -> list[list[str]]:
    rows = []
    for label, r in results.items():
        o, p, g = r["optc"], r["protobuf"], r["graphsurgeon"]
        rows.append([
            label, _ms(p["total"]), _ms(g["total"]), _ms(o["total"]), f"{o['load'] * 1e3:.1f} + {o['save'] * 1e3:.1f}",
            f"{o['total'] / p['total']:.2f}x", f"{o['total'] / g['total']:.2f}x",
            f"{p['rss'] / 2**20:.0f} / {g['rss'] / 2**20:.0f} / {o['rss'] / 2**20:.0f}",
        ])
    return rows


HEADERS = ["model", "protobuf ms", "graphsurgeon ms", "optc ms", "optc load + save ms", "optc / protobuf",
           "optc / graphsurgeon", "peak RSS MB (pb / gs / optc)"]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def print_table(results: dict[str, dict], big: dict | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="load+save, medians (targets: optc / protobuf <= 2.0x, optc / graphsurgeon < 1.0x)")
    for h in HEADERS:
        table.add_column(h, justify="left" if h == "model" else "right")
    for row in _rows(results):
        table.add_row(*row)
    console = Console(width=200)
    console.print(table)
    if big:
        console.print(f"optc convert, {big['data_gb']:.2f} GB external data: {big['wall_s']:.1f} s, "
                      f"peak RSS {big['rss_mb']:.0f} MB, output data identical: {big['same_bytes']}")


def write_results(results: dict[str, dict], big: dict | None, args) -> None:
    """Replace the "IR load+save" section of RESULTS.md (and only it) with these results."""
    lines = [SECTION, "",
             f"`python benchmarks/ir_io.py --sizes {args.sizes} --repeat {args.repeat}{' --big' if big else ''}`"
             f" — {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}. "
             "Each tool runs in a fresh process per repeat (peak RSS is the process's max RSS, interpreter and "
             "imports included); times are medians; protobuf = `onnx.load` + `onnx.save`, graphsurgeon = "
             "`import_onnx(onnx.load)` + `onnx.save(export_onnx)`. `stack-N`: generated transformer-like "
             "graphs of N nodes (small weights, value_info on every intermediate).", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(results)]
    if big:
        lines += ["", f"Big model: `optc convert big.onnx -o out.onnx` on a generated model with "
                      f"{big['data_gb']:.2f} GB of external data: {big['wall_s']:.1f} s wall, peak RSS "
                      f"{big['rss_mb']:.0f} MB (target < 1024 MB); output data identical to the input: "
                      f"{big['same_bytes']}."]
    section = "\n".join(lines) + "\n"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + (text[nxt + 1:] if nxt != -1 else "")
        text = text.replace(section + "## ", section + "\n## ")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


def _in_subprocess(*args: str) -> None:
    """Run a generator in a child: the parent stays small, since a child's max RSS starts from its parent's."""
    subprocess.run([sys.executable, __file__, *args], check=True)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--generate-stack":
        generate_stack(int(sys.argv[2]), Path(sys.argv[3]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--generate-big":
        print(generate_big(Path(sys.argv[3]), float(sys.argv[2])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,200000", help="node counts of the generated graphs")
    parser.add_argument("--repeat", type=int, default=5, help="fresh processes per tool and model")
    parser.add_argument("--big", action="store_true", help="also run the ~3 GB external-data convert")
    parser.add_argument("--big-gb", type=float, default=3.0, help="size of the big model's weights")
    parser.add_argument("--no-light", action="store_true", help="skip the onnx light models")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    onnx_dir = importlib.util.find_spec("onnx").submodule_search_locations[0]  # without importing onnx here
    light_dir = Path(onnx_dir) / "backend/test/data/light"
    results: dict[str, dict] = {}
    if not args.no_light:
        for name in LIGHT:
            results[name] = bench_model(light_dir / f"light_{name}.onnx", args.repeat, inner=15)
            print(f"{name}: done", file=sys.stderr)
    for size in (int(s) for s in args.sizes.split(",") if s):
        path = WORK / f"stack_{size}.onnx"
        if not path.exists():
            _in_subprocess("--generate-stack", str(size), str(path))
        inner = 3 if size <= 20000 else 1
        results[f"stack-{size}"] = bench_model(path, args.repeat, inner)
        print(f"stack-{size}: done", file=sys.stderr)
    big = bench_big(args.big_gb) if args.big else None
    print_table(results, big)
    if not args.no_write:
        write_results(results, big, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
