"""``optc compile --input-shape NAME:1x128``: fix a model's symbolic input dims before lowering.

Fixed shapes let MetaSchedule measure (and tune) every kernel, and let TVM specialize loops; a library compiled
with them accepts only those shapes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..errors import OptcError, did_you_mean
from ..ir import Model
from ..ir.types import TensorType

#: the most elements an input may have: TVM (and ONNX) index tensors with int64
MAX_ELEMENTS = 2**63 - 1


def parse_input_shape(spec: str) -> tuple[str, tuple[int, ...]]:
    """``"input_ids:1x128"`` -> ``("input_ids", (1, 128))``; ``"x:"`` is a scalar. The name is what precedes the last
    colon (names may hold colons); a dim of 0 gives an empty input. OptcError (one line) for a missing colon or name,
    a dim that is not a non-negative integer, or more than ``MAX_ELEMENTS`` elements in all."""
    name, colon, dims = spec.rpartition(":")
    if not colon or not name:
        raise OptcError(f"--input-shape expects NAME:DIMS such as input_ids:1x128, got '{spec}'")
    shape = []
    for d in dims.split("x") if dims else []:
        if not (d.isascii() and d.isdigit()):  # (int() also takes "1_0", " 2", "+2" and other scripts' digits)
            raise OptcError(f"--input-shape {name}: '{d}' is not a size, an integer >= 0 (dims are separated by x: "
                            "1x3x224x224)")
        shape.append(int(d))
    if math.prod(shape) > MAX_ELEMENTS:
        raise OptcError(f"--input-shape {name}: {'x'.join(map(str, shape))} has more than 2**63 - 1 elements")
    return name, tuple(shape)


def parse_input_shapes(specs: Sequence[str] | None) -> dict[str, tuple[int, ...]]:
    """Every ``--input-shape`` flag; OptcError when one input is given twice."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs or []:
        name, shape = parse_input_shape(spec)
        if name in shapes:
            raise OptcError(f"--input-shape {name} is given twice")
        shapes[name] = shape
    return shapes


def fix_input_shapes(model: Model, shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """Give the graph inputs named in ``shapes`` those shapes, in place, and every other value's use of the same
    symbolic dims their values (a dim name means one size throughout an ONNX graph). Returns the symbolic dims
    fixed, ``{name: size}``.

    OptcError (one line) for an unknown input (did-you-mean), a rank or fixed dim that differs from the model's,
    an input that is not a tensor, and one symbolic dim given two sizes.
    """
    graph = model.graph
    inputs = {v.name: v for v in graph.inputs if v.name not in graph.initializers}
    bound: dict[str, int] = {}
    bound_by: dict[str, str] = {}  # symbolic dim -> the input that gave it its size
    for name, shape in shapes.items():
        value = inputs.get(name)
        if value is None and name in graph.initializers and name in {v.name for v in graph.inputs}:
            raise OptcError(f"--input-shape {name}: this input has an initializer (a constant that fixes its shape); "
                            f"inputs without one: {', '.join(inputs) or 'none'}")
        if value is None:
            raise OptcError(f"--input-shape: the model has no input '{name}'{did_you_mean(name, inputs)} "
                            f"(inputs: {', '.join(inputs) or 'none'})")
        ty = value.type
        if not isinstance(ty, TensorType):
            raise OptcError(f"--input-shape {name}: the input is not a tensor ({ty})")
        shape = tuple(int(d) for d in shape)
        if ty.shape is not None and len(ty.shape) != len(shape):
            raise OptcError(f"--input-shape {name}: the model's input has rank {len(ty.shape)} {ty}, "
                            f"got {len(shape)} dims")
        for have, want in zip(ty.shape, shape, strict=True) if ty.shape is not None else ():  # (unknown rank: any)
            if isinstance(have, int) and have != want:
                raise OptcError(f"--input-shape {name}: the model fixes this input to {ty}, got "
                                f"{'x'.join(map(str, shape))}")
            if isinstance(have, str) and bound.setdefault(have, want) != want:
                where = "this input" if bound_by[have] == name else f"input '{bound_by[have]}'"
                raise OptcError(f"--input-shape {name}: dim '{have}' is {bound[have]} in {where}, got {want}")
            if isinstance(have, str):
                bound_by.setdefault(have, name)
        value.type = TensorType(ty.dtype, shape)

    def substituted(ty):
        if not isinstance(ty, TensorType) or ty.shape is None:
            return ty
        return TensorType(ty.dtype, tuple(bound.get(d, d) if isinstance(d, str) else d for d in ty.shape))

    for value in inputs.values():
        value.type = substituted(value.type)
    for node in graph:
        for out in node.outputs:
            if out is not None and out.type is not None:
                out.type = substituted(out.type)
    for value in graph.outputs:
        value.type = substituted(value.type)
    return bound
