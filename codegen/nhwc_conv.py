"""The relax conv2d calls that optc's own convolution kernels take (``winograd.py``, ``grouped_conv.py``)."""

from __future__ import annotations

import numpy as np


def static_float32_conv(call):
    """((n, h, w, c), HWIO weight) of a relax ``nn.conv2d`` in NHWC / HWIO (after ConvertLayout) with stride 1,
    float32 data whose dims are static but the batch n (an int >= 1, or a symbolic dim that is a plain TIR
    variable: kernels' buffers cannot define n from 2 n), a constant float32 4-d weight and a float32 result;
    else None. Groups, dilation, padding and the kernel's size are the caller's to check."""
    from tvm import tirx

    from ..lowering.converters import constant_value, dims_of

    attrs = call.attrs
    if (attrs.data_layout != "NHWC" or attrs.kernel_layout != "HWIO" or attrs.out_layout != "NHWC"
            or [int(s) for s in attrs.strides] != [1, 1]
            or (attrs.out_dtype is not None and str(attrs.out_dtype) not in ("", "float32"))):
        return None
    x, kernel = call.args
    dims = dims_of(x)
    weight = constant_value(kernel)
    if (dims is None or len(dims) != 4 or not all(isinstance(d, int) for d in dims[1:]) or min(dims[1:]) < 1
            or weight is None or str(getattr(x.ty, "dtype", "")) != "float32" or weight.dtype != np.float32
            or weight.ndim != 4):
        return None
    if not isinstance(dims[0], int | tirx.Var) or (isinstance(dims[0], int) and dims[0] < 1):
        return None
    return tuple(dims), weight
