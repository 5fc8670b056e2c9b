"""Max ulp error of codegen's fast-math approximations (and of the libm path `--no-fast-math` uses) over every
float32 input, against a float64 reference. Writes the "Fast math" section of benchmarks/RESULTS.md.

    python benchmarks/fast_math_ulp.py --jobs 16       # all 2^32 bit patterns (hours on one core)
    python benchmarks/fast_math_ulp.py --stride 16     # one pattern in each run of 16 (+ the special values)

With `--stride N` the i-th tested pattern is i * N + (i * 2654435761 mod N), so every residue of the low
mantissa bits is exercised.

Each op (exp, tanh, erf, softmax on rows [x, 0], and sigmoid) is compiled with `optc.codegen.fast_math.compiled_op`:
a tiny Relax function built by `codegen.build.build` exactly as inside a model (the fast-math pass, or its
libm replacement, legalization, optc's CPU schedules), run on chunks of 2^24 inputs.

References (float64, no scipy): numpy's exp and tanh, `math.erf`, softmax [x, 0] = [1, t] / (1 + t) with
t = exp(-|x|), sigmoid = 1 / (1 + t) for x >= 0 and t / (1 + t) below, all rounded once more to float32 only
for the "correctly rounded" count. tanh and erf are odd
(computed for |x|, negated), softmax of [-x, 0] is softmax of [x, 0] with its columns swapped; where the
float64 value is known in closed form it is used (tanh x = x and erf x = 2x / sqrt(pi) below 2^-30, +-1 beyond
20 and 6, exp(x) = 0 / inf beyond -/+128).

Error of a result y: |y - ref| / ulp(ref), ulp(ref) the float32 spacing at ref (2^-149 below the normal range).
Reported separately, not as ulp errors: subnormal results flushed to zero, NaN where the reference is not NaN
(or the reverse), +-inf where the reference rounds to a finite float (or the reverse), and the wrong sign of a
zero.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from optc.codegen.fast_math import MAX_ULP, OPS, compiled_op
from report import RESULTS, cpu_model, write_section

TINY_NORMAL = 2.0**-126
F32_MAX = float(np.finfo(np.float32).max)


def llvm_cpu() -> str:
    """The -mcpu optc's cpu target detected (what LLVM generated code for)."""
    try:
        from optc.codegen.targets import resolve_target  # noqa: PLC0415

        return str(resolve_target("cpu").attrs.get("mcpu", "?"))
    except Exception:  # noqa: BLE001
        return "?"


def cpu_flags() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return " ".join(f for f in ("avx2", "fma", "avx512f") if f in flags)
    except OSError:
        pass
    return ""


# -- float64 references --------------------------------------------------------------------------------------

_erf = np.frompyfunc(math.erf, 1, 1)


def _odd(x: np.ndarray, small, big: float, f) -> np.ndarray:
    """An odd function of float64 x: `small(a)` below 2^-30, sign(x) beyond `big`, `f` in between (on |x|)."""
    a = np.abs(x)
    out = np.empty_like(x)
    lo, hi = a < 2.0**-30, a >= big
    mid = ~(lo | hi | np.isnan(a))
    out[lo] = small(a[lo])
    out[hi] = 1.0
    out[mid] = f(a[mid])
    out[np.isnan(a)] = np.nan
    return np.copysign(out, x)


def reference(op: str, x32: np.ndarray) -> np.ndarray:
    """float64 reference of `op` at float32 inputs `x32`; softmax: shape (n, 2) for the rows [x, 0]."""
    with np.errstate(all="ignore"):
        x = x32.astype(np.float64)
        if op == "exp":
            out = np.where(x > 0, np.inf, 0.0)
            mid = np.abs(x) < 128
            out[mid] = np.exp(x[mid])
            out[np.isnan(x)] = np.nan
            return out
        if op == "tanh":
            return _odd(x, lambda a: a, 20.0, np.tanh)
        if op == "erf":
            return _odd(x, lambda a: a * (2.0 / math.sqrt(math.pi)), 6.0,
                        lambda a: _erf(a).astype(np.float64))
        if op == "sigmoid":  # 1 / (1 + t) for x >= 0, t / (1 + t) below, t = exp(-|x|)
            a = np.abs(x)
            t = np.zeros_like(a)
            mid = a < 128
            t[mid] = np.exp(-a[mid])
            out = np.where(~(x < 0), 1.0 / (1.0 + t), t / (1.0 + t))
            out[np.isnan(x)] = np.nan
            return out
        if op == "softmax":
            a = np.abs(x)
            t = np.zeros_like(a)
            mid = a < 128
            t[mid] = np.exp(-a[mid])
            big, small = 1.0 / (1.0 + t), t / (1.0 + t)
            pos = ~(x < 0)  # x >= 0 (and NaN, overwritten below)
            out = np.stack([np.where(pos, big, small), np.where(pos, small, big)], axis=1)
            out[np.isnan(x)] = np.nan
            out[x == np.inf] = np.nan   # inf - max(inf, 0) = inf - inf
            return out
    raise ValueError(op)


def mirror(op: str, ref: np.ndarray) -> np.ndarray:
    """The reference at -x from the one at x (exact: odd functions, swapped softmax columns); None for exp."""
    if op in ("tanh", "erf"):
        return -ref
    if op == "softmax":
        out = ref[:, ::-1].copy()
        return out
    return None


# -- accumulated statistics ----------------------------------------------------------------------------------


@dataclass
class Stats:
    n: int = 0
    exact: int = 0                      # results equal to the correctly rounded float32
    max_ulp: float = 0.0
    at: tuple = ()                      # (x, column, y, ref) of the max
    over1: int = 0                      # results more than 1 ulp away
    flush: int = 0                      # subnormal results flushed to 0
    flush_range: list = field(default_factory=lambda: [math.inf, -math.inf])   # of x
    nan: int = 0
    nan_at: tuple = ()
    inf: int = 0
    inf_at: tuple = ()
    zero_sign: int = 0
    zero_sign_at: tuple = ()

    def merge(self, o: Stats) -> None:
        for k in ("n", "exact", "over1", "flush", "nan", "inf", "zero_sign"):
            setattr(self, k, getattr(self, k) + getattr(o, k))
        if o.max_ulp > self.max_ulp:
            self.max_ulp, self.at = o.max_ulp, o.at
        self.flush_range = [min(self.flush_range[0], o.flush_range[0]), max(self.flush_range[1], o.flush_range[1])]
        for k in ("nan_at", "inf_at", "zero_sign_at"):
            setattr(self, k, getattr(self, k) or getattr(o, k))

    def add(self, x32: np.ndarray, y: np.ndarray, ref: np.ndarray) -> None:
        if y.ndim == 1:
            y, ref = y[:, None], ref[:, None]
        cols = y.shape[1]
        xs = np.repeat(x32, cols)
        yf, rf = y.reshape(-1), ref.reshape(-1)
        with np.errstate(all="ignore"):
            cr = rf.astype(np.float32)
        self.n += yf.size
        same = (yf.view(np.uint32) == cr.view(np.uint32)) | (np.isnan(yf) & np.isnan(cr))
        self.exact += int(same.sum())
        bad = np.flatnonzero(~same)
        if bad.size == 0:
            return
        yb, cb, rb, xb = yf[bad], cr[bad], rf[bad], xs[bad]
        col = bad % cols
        ynan, cnan = np.isnan(yb), np.isnan(cb)
        k = ynan != cnan
        if k.any():
            self.nan += int(k.sum())
            self.nan_at = self.nan_at or _where(xb, col, yb, rb, k)
        rest = ~(ynan | cnan)
        k = rest & (np.isinf(yb) | np.isinf(cb))
        if k.any():
            self.inf += int(k.sum())
            self.inf_at = self.inf_at or _where(xb, col, yb, rb, k)
        rest &= ~k
        k = rest & (yb == 0) & (cb == 0)
        if k.any():
            self.zero_sign += int(k.sum())
            self.zero_sign_at = self.zero_sign_at or _where(xb, col, yb, rb, k)
        rest &= ~k
        k = rest & (yb == 0) & (np.abs(cb) < TINY_NORMAL)
        if k.any():
            self.flush += int(k.sum())
            ax = np.abs(xb[k].astype(np.float64))
            self.flush_range = [min(self.flush_range[0], float(ax.min())), max(self.flush_range[1], float(ax.max()))]
        rest &= ~k
        if rest.any():
            r = rb[rest]
            a = np.abs(r)
            ulp = np.where(a < TINY_NORMAL, 2.0**-149, np.ldexp(1.0, np.frexp(a)[1] - 24))
            err = np.abs(yb[rest].astype(np.float64) - r) / ulp
            self.over1 += int((err > 1.0).sum())
            i = int(np.argmax(err))
            if err[i] > self.max_ulp:
                self.max_ulp = float(err[i])
                self.at = (float(xb[rest][i]), int(col[rest][i]), float(yb[rest][i]), float(r[i]))


def _where(x, col, y, ref, mask) -> tuple:
    i = int(np.flatnonzero(mask)[0])
    return (float(x[i]), int(col[i]), float(y[i]), float(ref[i]))


# -- the sweep -----------------------------------------------------------------------------------------------

SPECIALS = np.array([np.nan, np.inf, 0.0, 2.0**-149, 2.0**-126, F32_MAX, 1.0, 1e-8,
                     88.72283, 88.72284, 87.33654, 103.97208, 103.9721, 3.92, 9.01, 20.0], np.float32)


def _patterns(first: int, last: int, stride: int) -> np.ndarray:
    """The tested non-negative float32 patterns number first..last-1 (see the module docstring)."""
    i = np.arange(first, last, dtype=np.uint64)
    bits = i * np.uint64(stride)
    if stride > 1:
        bits += (i * np.uint64(2654435761)) % np.uint64(stride)
    return bits.astype(np.uint32).view(np.float32)


def _kernels(ops, chunk: int) -> dict:
    kernels = {}
    for op in ops:
        shape = (chunk, 2) if op == "softmax" else (chunk,)
        for fast in (True, False):
            kernels[op, fast] = compiled_op(op, shape, fast_math=fast)
    return kernels


def _run(kernels, chunk, op, fast, x):
    n = x.size
    pad = np.zeros(chunk, np.float32)
    pad[:n] = x
    inp = np.stack([pad, np.zeros_like(pad)], axis=1) if op == "softmax" else pad
    return kernels[op, fast](inp)[:n]


def _process(kernels, chunk, ops, stats, x) -> None:
    """Run every kernel on x and -x and add the errors to `stats`."""
    neg = -x
    for op in ops:
        ref = reference(op, x)
        ref_neg = mirror(op, ref)
        if ref_neg is None:
            ref_neg = reference(op, neg)
        else:
            inf = np.isinf(neg)  # softmax [-inf, 0] is [0, 1], not the mirror of [inf, 0] (NaN)
            ref_neg[inf] = reference(op, neg[inf])
        for fast in (True, False):
            stats[op, fast].add(x, _run(kernels, chunk, op, fast, x), ref)
            stats[op, fast].add(neg, _run(kernels, chunk, op, fast, neg), ref_neg)


def _worker(args) -> dict:
    ops, stride, chunk_bits, first, last, progress = args
    chunk = 1 << chunk_bits
    kernels = _kernels(ops, chunk)
    stats = {(op, fast): Stats() for op in ops for fast in (True, False)}
    start = time.time()
    for a in range(first, last, chunk):
        _process(kernels, chunk, ops, stats, _patterns(a, min(a + chunk, last), stride))
        if progress:
            done = min(a + chunk, last) - first
            el = time.time() - start
            print(f"\r{done / (last - first):6.1%}  {el:6.0f} s  (eta {el / done * (last - first - done):6.0f} s)",
                  end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return stats


def sweep(ops, stride: int, chunk_bits: int, jobs: int = 1, progress: bool = True) -> tuple[dict, dict]:
    """Stats per (op, mode) over the tested non-negative float32 patterns (< 2^31) and their negations, plus
    SPECIALS (both signs); and the specials' outputs. `jobs` processes share the patterns."""
    total = -(-(1 << 31) // stride)
    chunk = 1 << chunk_bits
    jobs = max(1, min(jobs, -(-total // chunk)))
    per = -(-total // jobs // chunk) * chunk
    parts = [(ops, stride, chunk_bits, j * per, min((j + 1) * per, total), progress and j == 0)
             for j in range(jobs) if j * per < total]
    if jobs == 1:
        results = [_worker(parts[0])]
    else:
        import multiprocessing  # noqa: PLC0415

        with multiprocessing.get_context("spawn").Pool(len(parts)) as pool:
            results = pool.map(_worker, parts)
    stats = results[0]
    for r in results[1:]:
        for k in stats:
            stats[k].merge(r[k])
    small = 1 << 8
    kernels = _kernels(ops, small)
    _process(kernels, small, ops, stats, SPECIALS)
    special = {}
    xs = np.concatenate([SPECIALS, -SPECIALS])
    for op in ops:
        ref = reference(op, xs)
        for fast in (True, False):
            special[op, fast] = (xs, _run(kernels, small, op, fast, xs), ref)
    return stats, special


# -- report --------------------------------------------------------------------------------------------------


def _g(v: float) -> str:
    return f"{v:.9g}"


def _loc(t: tuple, op: str) -> str:
    if not t:
        return ""
    x, col, y, ref = t
    where = f"x = {_g(x)}" + (f", column {col}" if op == "softmax" else "")
    return f"{where}: {_g(y)} (ref {_g(ref)})"


def table(ops, stats: dict) -> list[str]:
    lines = ["| op | mode | max ulp error | where | > 1 ulp | correctly rounded | subnormal results flushed to 0 "
             "| NaN / inf / zero-sign mismatches |",
             "|---|---|---:|---|---:|---:|---|---|"]
    for op in ops:
        for fast in (True, False):
            s = stats[op, fast]
            flush = (f"{s.flush} (\\|x\\| in [{_g(s.flush_range[0])}, {_g(s.flush_range[1])}])" if s.flush else "0")
            mism = " / ".join(str(c) for c in (s.nan, s.inf, s.zero_sign))
            examples = "; ".join(f"{k}: {_loc(a, op)}" for k, a in (("NaN", s.nan_at), ("inf", s.inf_at),
                                                                  ("zero", s.zero_sign_at)) if a)
            worst = f"{s.max_ulp:.3f}" if s.at else "<= 0.5 (all correctly rounded)"
            lines.append(f"| {op} | {'fast' if fast else 'libm (--no-fast-math)'} | {worst} | "
                         f"{_loc(s.at, op)} | {s.over1} | {s.exact / s.n:.4%} | {flush} | {mism}"
                         f"{' (' + examples + ')' if examples else ''} |")
    return lines


def special_table(ops, special: dict) -> list[str]:
    """One row per special input: each op's float64 reference; fast kernel; libm kernel (softmax: column 0)."""
    xs = special[ops[0], True][0]
    lines = ["| x | " + " | ".join(f"{op}{' [x, 0] col 0' if op == 'softmax' else ''}: ref; fast; libm" for op in ops)
             + " |", "|---:|" + "---|" * len(ops)]
    for i, x in enumerate(xs):
        if np.isnan(x) and i >= len(xs) // 2:
            continue  # -NaN: as NaN
        cells = []
        for op in ops:
            vals = [special[op, True][2]] + [special[op, fast][1] for fast in (True, False)]
            vals = [v[:, 0] if v.ndim == 2 else v for v in vals]
            cells.append("; ".join(_g(float(v[i])) for v in vals))
        lines.append(f"| {_g(float(x))} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stride", type=int, default=1, help="test every N-th bit pattern (default 1: all 2^32)")
    p.add_argument("--chunk-bits", type=int, default=24, help="inputs per kernel call: 2^N (default 24)")
    p.add_argument("--jobs", type=int, default=1, help="processes sharing the patterns (default 1)")
    p.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    p.add_argument("--no-write", action="store_true", help="print the section, do not write RESULTS.md")
    args = p.parse_args(argv)
    ops = [o for o in args.ops.split(",") if o]
    import tvm

    start = time.time()
    stats, special = sweep(ops, args.stride, args.chunk_bits, args.jobs)
    seconds = time.time() - start
    patterns = "all 2^32 float32 bit patterns" if args.stride == 1 else \
        f"one float32 bit pattern in each run of {args.stride} ({2 * -(-(1 << 31) // args.stride)} inputs, all " \
        "low-bit residues)"
    over = [f"{op} ({stats[op, True].max_ulp:.3f} > {MAX_ULP[op]})" for op in ops
            if stats[op, True].max_ulp > MAX_ULP[op]]
    section = [
        "## Fast math",
        "",
        "Written by `benchmarks/fast_math_ulp.py`. Max error of the kernels `optc compile` emits for exp, tanh, erf, "
        "softmax (rows [x, 0]) and sigmoid with fast math (the default) and with `--no-fast-math` (libm), in float32 "
        f"ulp of a float64 reference, over {patterns} plus special values; each op compiled through TVM as in "
        "a model (`codegen.fast_math.compiled_op`).",
        "",
        f"Machine: {cpu_model()} ({cpu_flags()}; LLVM -mcpu={llvm_cpu()}), {os.cpu_count()} cores; TVM {tvm.__version__}, "
        f"numpy {np.__version__}; {seconds:.0f} s.",
        "",
        *table(ops, stats),
        "",
        "\"Subnormal results flushed to 0\": inputs whose correctly rounded result is a nonzero subnormal and "
        "the kernel returned 0 (not counted as ulp errors). Mismatches: NaN where the reference is not NaN "
        "(or the reverse) / +-inf where the reference rounds to a finite float (or the reverse) / a zero of the "
        "wrong sign; the first such input is shown.",
        "",
        "Outputs at special inputs:",
        "",
        *special_table(ops, special),
        "",
        ("The documented bounds (`codegen.fast_math.MAX_ULP`) hold." if not over else
         "**Above the documented bound (`codegen.fast_math.MAX_ULP`): " + ", ".join(over) + ".**"),
    ]
    text = "\n".join(section) + "\n"
    print(text)
    if not args.no_write:
        write_section(RESULTS, text)
        print(f"wrote the 'Fast math' section of {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
