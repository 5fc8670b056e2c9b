"""Vector table lookups as AVX-512 gathers (a TIR pass after TVM's lowering, before code generation).

A vectorized read of a small 1-D buffer at a per-lane index -- `optc.TableLookup`'s `table[x]` in an integer
kernel's epilogue (a quantized GELU, a quantized attention's scale and mask, `lowering/ops/lookup.py`) -- is left
by TVM's LLVM code generator as one scalar load per lane: for 16 lanes, 16 index extracts, 16 loads and 16
inserts (BERT-like int8's Q K^T kernels: 56 `vpextrd`, 75 `vpinsrb`, no gather). On a CPU with AVX-512 this makes
each such read one ``vgatherdps`` / ``vpgatherdd`` (``llvm.x86.avx512.gather.dps.512`` / ``.dpi.512``: 16 32-bit
elements at base + 4 * index, all lanes enabled): BERT-like int8 7% faster (Zen 5). The same elements are read:
exact.

Only reads of 16, 32, 48 or 64 lanes (one gather per 16) of float32 / int32 from a 1-D buffer of at most
`MAX_TABLE` elements are rewritten (the tables; the index is then < 2^31 and fits the instruction's int32 lanes);
anything else keeps TVM's code. The
pipeline is registered as ``optc-gather`` (``tvm.tirx.compilation_pipeline.register_tir_pipeline``): TVM's
default one, then this pass. `tir_pipeline(target)` names it for targets with AVX-512F and the default
otherwise.
"""

from __future__ import annotations

#: the largest buffer (elements) whose vector reads become gathers: lookup tables (256 entries)
MAX_TABLE = 4096
#: lanes of one AVX-512 gather of 32-bit elements
GATHER_LANES = 16
#: the widest vector read rewritten (as one gather per 16 lanes): a 64-lane kernel of 8-bit results
MAX_LANES = 64
PIPELINE = "optc-gather"
_INTRINSICS = {"float32": "llvm.x86.avx512.gather.dps.512", "int32": "llvm.x86.avx512.gather.dpi.512"}


def _gather_reads(func):
    """`func` with its vector table reads as gather calls."""
    import tvm  # noqa: PLC0415
    import tvm_ffi  # noqa: PLC0415
    from tvm import tirx  # noqa: PLC0415
    from tvm.ir.expr import TensorLoad  # noqa: PLC0415  (a tirx.BufferLoad)

    def on_load(node, mutator):
        dtype = tvm.DataType(str(node.ty.dtype))
        if len(node.indices) != 1 or dtype.lanes % GATHER_LANES or dtype.lanes > MAX_LANES:
            return mutator.default_mutate(node)
        element = str(dtype.with_lanes(1))
        index = mutator.mutate(node.indices[0])
        shape = node.source.shape
        if element not in _INTRINSICS or isinstance(index, (tirx.Ramp, tirx.Broadcast)) \
                or tvm.DataType(str(index.ty.dtype)).lanes != dtype.lanes or len(shape) != 1 \
                or not isinstance(shape[0], tirx.IntImm) or int(shape[0]) > MAX_TABLE:
            return mutator.default_mutate(node)
        lanes = dtype.lanes
        index32 = index if str(index.ty.dtype) == f"int32x{lanes}" else tirx.Cast(f"int32x{lanes}", index)
        zero_index = tirx.IntImm(str(tvm.DataType(str(index.ty.dtype)).with_lanes(1)), 0)
        base = tirx.address_of(tirx.BufferLoad(node.source, [zero_index]))
        parts = []
        for first in range(0, lanes, GATHER_LANES):  # (wider vectors: one gather per 16 lanes, concatenated)
            part = index32 if lanes == GATHER_LANES else tirx.Shuffle(
                [index32], [tirx.IntImm("int32", first + i) for i in range(GATHER_LANES)])
            parts.append(tirx.call_llvm_pure_intrin(
                f"{element}x{GATHER_LANES}", _INTRINSICS[element],
                tirx.Broadcast(tirx.const(0, element), GATHER_LANES), base, part, tirx.IntImm("int16", -1),
                tirx.IntImm("int32", 4)))
        if len(parts) == 1:
            return parts[0]
        return tirx.Shuffle(parts, [tirx.IntImm("int32", i) for i in range(lanes)])

    return tvm_ffi.structural_mutate(func, ((TensorLoad, on_load),))


def gather_pass():
    """The PrimFunc pass (a function, so that importing optc does not import TVM)."""
    from tvm import tirx  # noqa: PLC0415

    @tirx.transform.prim_func_pass(opt_level=0, name="optc_table_gathers")
    def _pass(func, _mod, _ctx):
        return _gather_reads(func)

    return _pass


def _register() -> None:
    import tvm  # noqa: PLC0415
    from tvm.tirx import compilation_pipeline  # noqa: PLC0415

    if PIPELINE in compilation_pipeline.PIPELINE_MAP:
        return

    def factory(**kwargs):
        lower, host, device = compilation_pipeline.get_tir_pipeline("default", **kwargs)
        return tvm.transform.Sequential([lower, gather_pass()]), host, device

    compilation_pipeline.register_tir_pipeline(PIPELINE, factory)


def tir_pipeline(target) -> str:
    """The TIR pipeline name for `tvm.compile`: ``optc-gather`` on an LLVM target with AVX-512F, else
    ``default``."""
    from .targets import llvm_features  # noqa: PLC0415

    if target.kind.name != "llvm" or "avx512f" not in llvm_features(target):
        return "default"
    _register()
    return PIPELINE
