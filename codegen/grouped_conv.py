"""Grouped 1x1 convolutions as one batched matmul per pixel block, with the group as a loop of its own (a relax pass).

An NHWC grouped convolution with G groups, a 1x1 HWIO kernel w [1, 1, Cg, G * Kg], stride 1 and no padding is

    y[n, h, w, g * Kg + k] = sum_c x[n, h, w, g * Cg + c] * w[0, 0, c, g * Kg + k]

TVM's own kernel (topi ``group_conv2d_nhwc``) iterates over the output channel g * Kg + k and reads the input
channel ``(g * Kg + k) // Kg * Cg + c``: a schedule cannot pad that index, so its register tile runs in vectors that
divide Kg. ShuffleNet's Kg = 34, 68 and 136 gave vectors of 2 or 4 lanes (``schedules.GROUP_PAIR_MAX``): 10-40
GFLOP/s, 1.7-5.9x onnxruntime's time per layer (AMD EPYC Zen 4, 1 thread). Here the group is an axis of the
iteration space and the input is read as x5 [n, h, w, G, Cg] (a split block the schedule inlines: no copy), so
the reduction is an einsum

    y5[n, g, h, w, k] = sum_c x5[n, h, w, g, c] * w3[c, g, k]         w3 = w reshaped to [Cg, G, Kg]
    y[n, h, w, g * Kg + k] = y5[n, g, h, w, k]

which ``schedules.TiledReduction`` tiles as it tiles a matmul: the constant weight's Kg columns zero-padded to whole
vectors at compile time (``_pad_ragged_tile``), rows of pixels x vectors of output channels in registers, the
merge back to NHWC (and the bias, ReLU and residual add that FuseOps puts after it) written per tile, only the
Kg real channels of each group. The sums are the direct convolution's, term for term in the same order: no
result changes, so the pass runs with or without fast math.
"""

from __future__ import annotations

import numpy as np


def grouped_conv_kernel(n, h: int, w: int, groups: int, cg: int, kg: int):
    """The PrimFunc y [n, h, w, groups * kg] from x [n, h, w, groups * cg] and w3 [cg, groups, kg] (float32): x
    split to x5 [n, h, w, groups, cg] (a block that the schedule inlines), the reduction over cg in a block of its
    own with the group as a spatial axis ([n, groups, h, w, kg]), merged back; ``n`` an int or a symbolic (int64)
    dim. Its fusion pattern is declared a reduction's (OutEWiseFusable), so that the
    bias, ReLU and residual add after it fuse into it."""
    from tvm import te

    from ..lowering.converters import declare_op_pattern
    from .winograd import _i64

    x = te.placeholder([_i64(n), _i64(h), _i64(w), _i64(groups * cg)], "float32", name="x")
    x5 = te.compute([_i64(n), _i64(h), _i64(w), _i64(groups), _i64(cg)],
                    lambda b, i, j, g, c: x[b, i, j, g * _i64(cg) + c], name="grouped_conv_split")
    w3 = te.placeholder([_i64(cg), _i64(groups), _i64(kg)], "float32", name="w")
    c = te.reduce_axis((_i64(0), _i64(cg)), name="c")
    y5 = te.compute([_i64(n), _i64(groups), _i64(h), _i64(w), _i64(kg)],
                    lambda b, g, i, j, k: te.sum(x5[b, i, j, g, c] * w3[c, g, k], axis=c), name="grouped_conv")
    y = te.compute([_i64(n), _i64(h), _i64(w), _i64(groups * kg)],
                   lambda b, i, j, ch: y5[b, ch // _i64(kg), i, j, ch % _i64(kg)], name="grouped_conv_merge")
    func = te.create_prim_func([x, w3, y]).without_attr("global_symbol").with_attr("tirx.noalias", True)
    return declare_op_pattern(func, 4)  # kOutEWiseFusable


def grouped_conv_pass(target):
    """The module pass (a function, so that importing optc does not import TVM): every conv2d that `eligible`
    accepts for the target's vector width becomes `grouped_conv_kernel`."""
    from tvm import relax

    from .relax_rewrite import call_rewrite_pass
    from .schedules import _vector_lanes

    lanes = _vector_lanes(target, 32)

    def rewrite(builder, call):
        plan = eligible(call, lanes)
        if plan is None:
            return None
        (n, h, w, c), weight, groups = plan
        cg, k = c // groups, weight.shape[3]
        kg = k // groups
        w3 = relax.const(np.ascontiguousarray(weight.reshape(cg, groups, kg)))
        kernel = builder.add_func(grouped_conv_kernel(n, h, w, groups, cg, kg), "grouped_conv")
        return relax.call_tir(kernel, [call.args[0], w3], relax.TensorType((n, h, w, k), "float32"))

    return call_rewrite_pass("optc_grouped_conv", "relax.nn.conv2d", rewrite)


def eligible(call, lanes: int):
    """((n, h, w, c), HWIO weight [1, 1, c / groups, k], groups) of a relax conv2d that this pass computes, else
    None: NHWC float32 data with static dims but the batch n (an int, or a symbolic dim: a TIR variable), a
    constant 1x1 HWIO float32 kernel, stride 1 (``nhwc_conv.static_float32_conv``), more than one group of at
    least two input channels each, no padding, and more output channels per group than the target's float32
    ``lanes`` but not a multiple of them (where they are, or fit one vector, TVM's kernel already runs in whole
    vectors: as fast, measured)."""
    from .nhwc_conv import static_float32_conv

    plan = static_float32_conv(call)
    groups = int(call.attrs.groups)
    if plan is None or groups < 2 or any(int(p) for p in call.attrs.padding):
        return None
    dims, weight = plan
    c, k = dims[3], weight.shape[3]
    if weight.shape[:2] != (1, 1) or c % groups or k % groups or c // groups < 2 or weight.shape[2] != c // groups:
        return None
    if k // groups <= lanes or k // groups % lanes == 0:
        return None
    return dims, weight, groups
