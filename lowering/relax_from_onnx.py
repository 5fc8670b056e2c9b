"""Temporary lowering: ONNX ModelProto -> (Relax IRModule, params) through TVM's own ONNX frontend.

This will be replaced by a lowering from optc's IR (one op table keyed by ``(domain, op_type)``,
see ``op_table.py``); its contract stays: the IRModule's ``main`` takes the graph inputs first and
then one parameter per weight, and ``params`` maps those weight parameter names to numpy arrays.
"""

from __future__ import annotations

import numpy as np

from ..errors import OptcError


def lower_onnx(model_proto, *, opset: int | None = None, shape_dict: dict | None = None):
    """Lower an ONNX model to ``(tvm.IRModule, {param_name: np.ndarray})``.

    Weights become trailing parameters of ``main`` (not constants), so the build can bind them
    (``codegen.build``) or keep them as runtime inputs.
    """
    import onnx  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415
    from tvm.relax.frontend import detach_params  # noqa: PLC0415
    from tvm.relax.frontend.onnx import from_onnx  # noqa: PLC0415

    if isinstance(model_proto, (str, bytes)) and not isinstance(model_proto, bytes):
        model_proto = onnx.load(model_proto)
    try:
        mod = from_onnx(model_proto, shape_dict=shape_dict, opset=opset, keep_params_in_input=True)
    except Exception as exc:  # the frontend raises bare ValueError/TVMError/KeyError
        msg = str(exc).strip().splitlines()
        raise OptcError(f"cannot lower ONNX model to Relax: {type(exc).__name__}: {msg[0] if msg else ''}") from exc
    mod, detached = detach_params(mod)
    weights = detached.get("main", [])
    func = mod["main"]
    n_weights = len(weights)
    names = [_var_name(p) for p in func.params[len(func.params) - n_weights :]] if n_weights else []
    params = {name: w.numpy() for name, w in zip(names, weights)}
    for name, value in params.items():
        if not isinstance(value, np.ndarray):  # pragma: no cover
            params[name] = np.asarray(value)
    _ = relax  # imported for side effects (registers ops)
    return mod, params


def graph_io(model_proto):
    """Input/output signatures of an ONNX graph: ``(inputs, outputs)``, each a list of
    ``{"name", "shape", "dtype"}`` with symbolic dims as strings (``None`` for unknown)."""
    import onnx  # noqa: PLC0415
    from onnx import helper  # noqa: PLC0415

    init_names = {t.name for t in model_proto.graph.initializer}

    def sig(vi):
        tt = vi.type.tensor_type
        dims = []
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(str(d.dim_param))
            else:
                dims.append(f"{vi.name}_dim{i}")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        return {"name": vi.name, "shape": dims, "dtype": dtype}

    _ = onnx
    inputs = [sig(v) for v in model_proto.graph.input if v.name not in init_names]
    outputs = [sig(v) for v in model_proto.graph.output]
    return inputs, outputs


def _var_name(var) -> str:
    """Name of a relax.Var (``name_hint`` in older TVM, ``name`` in 0.27)."""
    for attr in ("name_hint", "name"):
        value = getattr(var, attr, None)
        if isinstance(value, str):
            return value
    return str(var.vid.name_hint)  # pragma: no cover
