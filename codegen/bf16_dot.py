"""AVX512-BF16 dot products (``vdpbf16ps``) for bfloat16 kernels, as a tensor intrinsic of ``int8_kernels``'
register-tiled schedule (the ``avx512bf16`` entry of ``int8_kernels.ISAS``): the CPUs with AVX512-BF16 but no
AMX-BF16 (AMD Zen 4 and later, Intel Cooper Lake), and on AMX machines the kernels no AMX block fits.

``vdpbf16ps zmm_acc, zmm_a, zmm_b``: for each of 16 float32 lanes i, ``acc[i] += a[2i+1] * b[2i+1]`` then
``acc[i] += a[2i] * b[2i]``: products of two bfloat16 values (exact in float32), each addition rounded to nearest
even in float32, denormal operands and results flushed to zero (Intel SDM, VDPBF16PS). So a kernel keeps
``precision.py``'s error bound (a float32 sum, in another order) except for the flushed denormals, as on AMX.

TVM cannot emit the instruction itself: its TIR pipeline widens every bfloat16 value to float32 before LLVM sees
it (``BF16ComputeLegalize``), and LLVM 22's ``llvm.x86.avx512bf16.dpbf16ps.512`` takes ``<32 x bfloat>`` operands
that no TIR type lowers to (``call_llvm_pure_intrin`` with int16 vectors fails LLVM's verifier). So the
instruction sits in a small LLVM IR function, ``LLVM_IR``, that takes the operands as int32 vectors (each lane a
pair of bfloat16) and bit-casts them. The kernel imports it (the loop annotation ``pragma_import_llvm``: TVM's
LLVM code generator links the IR into the kernel's module, where it is inlined) and calls it with
``call_extern`` on the activation pair broadcast to the 16 lanes and 16 lanes x 2 weights of the packed panel,
both loaded through int32 views of the bfloat16 buffers. Kernel parameters keep their 2-byte bfloat16 storage; an
intermediate bf16 buffer of the kernel is stored as float32 by TVM's legalization, so the rule takes only
activations that are parameters, as for AMX.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.script import tirx as T

#: LLVM features the kernel's target needs
FEATURES = ("avx512bf16", "avx512f")
#: the imported function's name (what ``call_extern`` calls and the build report counts)
EXTERN = "optc_dpbf16ps"
LANES, GROUP = 16, 2
#: acc (16 x float32) + the bf16 pairs of %a x those of %b (16 x 2 bfloat16 each, as 16 x int32)
LLVM_IR = f"""
declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x bfloat>)
define linkonce_odr <16 x float> @{EXTERN}(<16 x float> %acc, <16 x i32> %a, <16 x i32> %b) #0 {{
  %av = bitcast <16 x i32> %a to <32 x bfloat>
  %bv = bitcast <16 x i32> %b to <32 x bfloat>
  %r = call <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float> %acc, <32 x bfloat> %av, <32 x bfloat> %bv)
  ret <16 x float> %r
}}
attributes #0 = {{ alwaysinline }}
"""


def make_impl():
    """The implementation of ``int8_kernels``' tensor intrinsic ``C[i] += sum_k float32(A[k]) * float32(B[i, k])``
    (i < 16, k < 2; its description is built there with the other dot products'): one ``vdpbf16ps``."""

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (GROUP,), "bfloat16", offset_factor=GROUP)
        B = T.match_buffer(b, (LANES, GROUP), "bfloat16", offset_factor=GROUP)
        C = T.match_buffer(c, (LANES,), "float32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:GROUP], B[0:LANES, 0:GROUP])
            T.writes(C[0:LANES])
            # the bf16 pairs read as int32 through views of the same storage: TIR never holds a bfloat16 value
            # (which it would widen to float32), and the loads keep TVM's alias information (the accumulators
            # stay in registers)
            A_pairs = T.decl_buffer((1,), "int32", data=A.data, elem_offset=A.elem_offset // GROUP)
            B_pairs = T.decl_buffer((LANES,), "int32", data=B.data, elem_offset=B.elem_offset // GROUP)
            C[T.ramp(T.int32(0), 1, LANES)] = T.call_extern(
                f"float32x{LANES}", EXTERN, C.vload([0], f"float32x{LANES}"), T.broadcast(A_pairs[0], LANES),
                B_pairs.vload([0], f"int32x{LANES}"))

    return impl


def import_into(sch: s_tir.Schedule, loop) -> None:
    """Make the kernel's code generator link ``LLVM_IR`` in (once per kernel: an annotation of its outer loop)."""
    sch.annotate(loop, "pragma_import_llvm", LLVM_IR)
