"""The op table: schemas from `onnx.defs`, plus the traits ONNX does not state.

Every pass reads traits from here (commutative, elementwise, non-deterministic, side effects), so no op list
is hard-coded inside a pass.
"""

from __future__ import annotations

import enum
from functools import lru_cache

import onnx
from onnx import defs

#: the domain of optc's own ops (integer kernels, lookup tables, 4-bit matmuls: `rewrites/rules/qinteger.py`,
#: `qlookup.py`, `weight_int4.py`), made on the TVM compile path only; they have no ONNX schema and are pure
OPTC_DOMAIN = "optc"


class Trait(enum.Flag):
    """Properties of an op that matchers, DCE and the constant folder rely on."""

    NONE = 0
    COMMUTATIVE = enum.auto()  # binary op whose two inputs may be swapped
    ELEMENTWISE = enum.auto()  # output[i] depends on input[i] only (with broadcasting)
    NONDETERMINISTIC = enum.auto()  # random: never folded, never deduplicated
    SIDE_EFFECTS = enum.auto()  # must not be removed even when its outputs are unused (see register_traits)
    SHAPE_OP = enum.auto()  # only moves or reinterprets data (Reshape, Transpose, ...)


_C, _E, _N, _S = Trait.COMMUTATIVE, Trait.ELEMENTWISE, Trait.NONDETERMINISTIC, Trait.SHAPE_OP

_TRAITS: dict[tuple[str, str], Trait] = {}


def _set(names: str, trait: Trait, domain: str = "") -> None:
    for name in names.split():
        _TRAITS[(domain, name)] = _TRAITS.get((domain, name), Trait.NONE) | trait


_set("Add Mul Max Min Sum Mean And Or Xor Equal BitwiseAnd BitwiseOr BitwiseXor", _C)
_set(
    "Add Sub Mul Div Pow Max Min Sum Mean Mod And Or Xor Not Equal Less LessOrEqual Greater GreaterOrEqual "
    "Abs Neg Reciprocal Sqrt Exp Log Relu LeakyRelu PRelu Elu Selu Celu Gelu Sigmoid HardSigmoid HardSwish "
    "Tanh Softplus Softsign Mish Erf Sin Cos Tan Asin Acos Atan Sinh Cosh Asinh Acosh Atanh Floor Ceil Round "
    "Sign IsNaN IsInf Clip Where Cast CastLike Identity ThresholdedRelu Shrink BitShift BitwiseAnd BitwiseOr "
    "BitwiseXor BitwiseNot Swish",
    _E,
)
# Dropout is random in training mode (a training_mode input from opset 12, is_test=0 before opset 7), which
# can be a runtime value: treated as random always (at inference, eliminate-noops removes it anyway).
_set("RandomNormal RandomUniform RandomNormalLike RandomUniformLike Multinomial Bernoulli Dropout", _N)
_set("Reshape Transpose Squeeze Unsqueeze Flatten Identity Expand Slice Concat Split Gather", _S)


# Side effects: every standard ONNX op is a function of its inputs (ONNX IR spec: a graph is a dataflow graph of
# side-effect-free nodes; random ops are NONDETERMINISTIC, which lets DCE drop them when dead, as nothing observes
# them). No standard op is declared SIDE_EFFECTS; ops of a domain optc does not know (no schema) are treated as
# having them unless `dce{keep-unknown=false}`; a custom domain declares its own with `register_traits`.


def register_traits(domain: str, op_types: str | list[str], trait: Trait) -> None:
    """Declare traits of ops (added to what is declared already), e.g. `register_traits("my.domain", "Print
    Flush", Trait.SIDE_EFFECTS)` so DCE never drops them, or COMMUTATIVE so patterns match both operand orders.
    Read by the pattern matcher (COMMUTATIVE), DCE and the rewrite driver (SIDE_EFFECTS), cse and the constant
    folder (NONDETERMINISTIC), float conversion (SHAPE_OP) and pruning (ELEMENTWISE)."""
    names = op_types.split() if isinstance(op_types, str) else list(op_types)
    _set(" ".join(names), trait, "" if domain == "ai.onnx" else domain)


def traits(domain: str, op_type: str) -> Trait:
    """The traits of an op (Trait.NONE when unknown)."""
    return _TRAITS.get((domain, op_type), Trait.NONE)


def has_trait(domain: str, op_type: str, trait: Trait) -> bool:
    return bool(traits(domain, op_type) & trait)


@lru_cache(maxsize=4096)
def get_schema(domain: str, op_type: str, opset: int | None = None) -> defs.OpSchema | None:
    """The ONNX schema in force at `opset` (the newest if None), or None for an unknown op."""
    domain = "" if domain == "ai.onnx" else domain
    try:
        if opset is None:
            return defs.get_schema(op_type, domain)
        return defs.get_schema(op_type, opset, domain)
    except defs.SchemaError:
        return None


def is_known(domain: str, op_type: str) -> bool:
    """True if onnx.defs knows the op."""
    return get_schema(domain, op_type) is not None


def input_arity(schema: defs.OpSchema) -> tuple[int, int | None]:
    """(min, max) number of inputs; max is None for variadic ops."""
    return schema.min_input, (None if schema.max_input >= 2**31 - 1 else schema.max_input)


def output_arity(schema: defs.OpSchema) -> tuple[int, int | None]:
    """(min, max) number of outputs; max is None for variadic ops."""
    return schema.min_output, (None if schema.max_output >= 2**31 - 1 else schema.max_output)


def attribute_default(schema: defs.OpSchema, name: str):
    """The schema's default value of an attribute (None if it has none)."""
    attr = schema.attributes.get(name)
    if attr is None or not attr.default_value.name:
        return None
    return onnx.helper.get_attribute_value(attr.default_value)


def is_deterministic(domain: str, op_type: str) -> bool:
    """False for random ops."""
    return not has_trait(domain, op_type, Trait.NONDETERMINISTIC)
