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

Byte tables on AVX512-VBMI (``optc-gather-vbmi``): a read of a 256-entry 32-bit table whose value is cast to 8 bits
(`TableLookup` of an 8-bit result: the table holds the entries as int32, `y = uint8(table[x])`) at an index that
is an 8-bit value (`int32(x)` for uint8 x, `int32(x) + 128` for int8 x) is done without memory reads per lane: the
256 low bytes of the table are four 64-byte registers (hoisted out of the loops by LLVM: the table is read-only), and
each 16 lanes are two ``vpermi2b`` (``llvm.x86.avx512.vpermi2var.qi.512``: a 128-byte table each, the index's bit 6
choosing the register) and a byte select on the index's bit 7. Exact: the result is the entry's low byte, which the
cast to 8 bits keeps. Measured: a vpgatherdd of 16 lanes cost about 33 cycles on Zen 5, the ViT-like int8 MLP's
first matmul 178 us, 92 us with no table at all (`optc profile`).
"""

from __future__ import annotations

#: the largest buffer (elements) whose vector reads become gathers: lookup tables (256 entries)
MAX_TABLE = 4096
#: lanes of one AVX-512 gather of 32-bit elements
GATHER_LANES = 16
#: the widest vector read rewritten (as one gather per 16 lanes): a 64-lane kernel of 8-bit results
MAX_LANES = 64
PIPELINE = "optc-gather"
#: the pipeline whose pass also does byte tables with vpermi2b (targets with AVX512-VBMI)
PIPELINE_VBMI = "optc-gather-vbmi"
_PERMUTE = "llvm.x86.avx512.vpermi2var.qi.512"
_INTRINSICS = {"float32": "llvm.x86.avx512.gather.dps.512", "int32": "llvm.x86.avx512.gather.dpi.512"}


def _is_byte_index(index) -> bool:
    """Whether a table index is `int32(x)` (x uint8) or `int32(x) + 128` (x int8): in [0, 256), so its low byte is
    the whole index."""
    import tvm  # noqa: PLC0415
    from tvm import tirx  # noqa: PLC0415

    def eight_bit(e, kind: str) -> bool:
        t = tvm.DataType(str(e.ty.dtype))
        return t.bits == 8 and t.type_code == (tvm.DataTypeCode.UINT if kind == "u" else tvm.DataTypeCode.INT)

    if isinstance(index, tirx.Cast):
        return eight_bit(index.value, "u")
    return isinstance(index, tirx.Add) and isinstance(index.b, tirx.Broadcast) and \
        isinstance(index.b.value, tirx.IntImm) and int(index.b.value) == 128 and \
        isinstance(index.a, tirx.Cast) and eight_bit(index.a.value, "i")


def _byte_table_read(cast, mutator):
    """`uint8/int8(table[i])` (the `TableLookup` read of an 8-bit result) as vpermi2b lookups (module doc), or None
    when `cast` is not such a read."""
    import tvm  # noqa: PLC0415
    from tvm import tirx  # noqa: PLC0415
    from tvm.ir.expr import TensorLoad  # noqa: PLC0415

    dtype = tvm.DataType(str(cast.ty.dtype))
    load = cast.value
    if dtype.bits != 8 or dtype.lanes % GATHER_LANES or dtype.lanes > MAX_LANES or \
            not isinstance(load, TensorLoad) or len(load.indices) != 1:
        return None
    shape = load.source.shape
    if str(load.ty.dtype) != f"int32x{dtype.lanes}" or len(shape) != 1 or not isinstance(shape[0], tirx.IntImm) \
            or int(shape[0]) != 256 or not _is_byte_index(load.indices[0]):
        return None
    lanes = dtype.lanes
    index = mutator.mutate(load.indices[0])
    element = str(tvm.DataType(str(index.ty.dtype)).with_lanes(1))
    lane = lambda i: tirx.IntImm("int32", i)  # noqa: E731
    words = [tirx.Cast("int8x16", tirx.BufferLoad(load.source, [tirx.Ramp(tirx.IntImm(element, 16 * j), 1, 16)]))
             for j in range(16)]
    quarters = [tirx.Shuffle(words[4 * q:4 * q + 4], [lane(i) for i in range(64)]) for q in range(4)]
    parts = []
    for first in range(0, lanes, GATHER_LANES):
        part = index if lanes == GATHER_LANES else tirx.Shuffle([index], [lane(first + i) for i in range(16)])
        byte = tirx.Cast("int8x16", part)
        wide = tirx.Shuffle([byte] * 4, [lane(i) for i in range(64)])  # (lanes 16-63: copies, unused)
        low = tirx.call_llvm_pure_intrin("int8x64", _PERMUTE, quarters[0], wide, quarters[1])
        high = tirx.call_llvm_pure_intrin("int8x64", _PERMUTE, quarters[2], wide, quarters[3])
        chosen = tirx.Select(wide < tirx.Broadcast(tirx.IntImm("int8", 0), 64), high, low)
        parts.append(tirx.Shuffle([chosen], [lane(i) for i in range(16)]))
    result = parts[0] if len(parts) == 1 else tirx.Shuffle(parts, [lane(i) for i in range(lanes)])
    return result if dtype.type_code == tvm.DataTypeCode.INT else tirx.reinterpret(str(dtype), result)


def _gather_reads(func, vbmi: bool = False):
    """`func` with its vector table reads as gather calls (and, with `vbmi`, its byte table reads as vpermi2b)."""
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

    def on_cast(node, mutator):
        read = _byte_table_read(node, mutator) if vbmi else None
        return mutator.default_mutate(node) if read is None else read

    return tvm_ffi.structural_mutate(func, ((tirx.Cast, on_cast), (TensorLoad, on_load)))


def gather_pass(vbmi: bool = False):
    """The PrimFunc pass (a function, so that importing optc does not import TVM)."""
    from tvm import tirx  # noqa: PLC0415

    @tirx.transform.prim_func_pass(opt_level=0, name="optc_table_gathers")
    def _pass(func, _mod, _ctx):
        return _gather_reads(func, vbmi)

    return _pass


def _register() -> None:
    import tvm  # noqa: PLC0415
    from tvm.tirx import compilation_pipeline  # noqa: PLC0415

    if PIPELINE in compilation_pipeline.PIPELINE_MAP:
        return

    for name, vbmi in ((PIPELINE, False), (PIPELINE_VBMI, True)):
        def factory(_vbmi=vbmi, **kwargs):
            lower, host, device = compilation_pipeline.get_tir_pipeline("default", **kwargs)
            return tvm.transform.Sequential([lower, gather_pass(_vbmi)]), host, device

        compilation_pipeline.register_tir_pipeline(name, factory)


def tir_pipeline(target) -> str:
    """The TIR pipeline name for `tvm.compile`: ``optc-gather-vbmi`` on an LLVM target with AVX512-VBMI (and BW),
    ``optc-gather`` on one with AVX-512F, else ``default``."""
    from .targets import llvm_features  # noqa: PLC0415

    features = llvm_features(target) if target.kind.name == "llvm" else []
    if "avx512f" not in features:
        return "default"
    _register()
    return PIPELINE_VBMI if "avx512vbmi" in features and "avx512bw" in features else PIPELINE
