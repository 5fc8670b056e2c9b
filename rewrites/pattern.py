"""The pattern language: patterns that read like ONNX, matched against optc's IR with backtracking.

A rule's `pattern(self, op, x, y, ...)` is called once with a `PatternBuilder` as `op` and one `Var` per extra
parameter; `op.Add(op.MatMul(a, b), c)` builds a tree (or DAG: reuse a pattern value and it must be the same
IR value) of value patterns:

    Var("x")                      any value, captured as `x` (the same name twice = the same value)
    op.Relu(p, ...)               the output of a node: op type, domain (`_domain=`), inputs, attributes
                                  (literal, predicate `lambda v: ...`, or a Var to capture the value),
                                  `_outputs=k` (exact output count; returns k output patterns),
                                  `_allow_other_inputs=True`, `_name="conv"` (capture the node)
    Const(value=1.0, pred=...)    a constant: an initializer (not overridable by a graph input) or a Constant
                                  node's output; `x.const(...)` is the same, captured as `x`; plain Python
                                  numbers in an op's inputs mean `Const(value=...)`; `op.Constant(...)` too
    Optional(p)                   an input that may be absent (a Var inside it is then bound to None)
    Or(p1, p2, ...)               alternatives, tried in order
    ANY (or `_`)                  any present value, not captured
    None                          the input must be absent

Binary ops marked COMMUTATIVE in ir/schema.py match both operand orders. Matching is a generator-based
backtracking search over a `MatchState`; it never mutates the IR.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..ir.constants import Constants
from ..ir.core import Graph, Node, Value
from ..ir.schema import Trait, attribute_default, get_schema, has_trait


class MatchFailed(Exception):
    """Raised by `require` (and by checks) with the reason a match was rejected."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def require(cond: Any, reason: str = "a check failed") -> bool:
    """Return True if `cond` holds, else reject the match with `reason` (usable in `check` and `rewrite`)."""
    if not cond:
        raise MatchFailed(reason)
    return True


class MatchState:
    """Bindings of one match attempt, plus trace bookkeeping."""

    __slots__ = ("graph", "bindings", "nodes", "node_list", "opsets", "trace", "best", "constants",
                 "fail_reason")

    def __init__(self, graph: Graph | None, opsets: dict[str, int], trace: bool = False,
                 constants: Constants | None = None):
        self.graph = graph
        self.bindings: dict[str, Any] = {}
        self.nodes: dict[NodePattern, Node] = {}
        self.node_list: list[Node] = []
        self.opsets = opsets
        self.trace = trace
        self.best: tuple[tuple[bool, int, int], str, list[Node], dict[str, Any]] | None = None
        # which values are constants (initializers that are also graph inputs are not); default: judged by the
        # inputs of the matched graph and the graphs around it
        self.constants = constants if constants is not None else Constants(_enclosing(graph))
        self.fail_reason = ""

    def fail(self, reason: str | Callable[[], str], *, complete: bool = False) -> None:
        """Note a failure; with tracing on, keep the deepest one (the best partial match). `complete`: the whole
        pattern matched and what failed came after (a value used outside the match, the rule's check): such a
        failure outranks any partial one, which an `Or` branch that matched more nodes and then failed could
        otherwise hide (a merge target's computed branch against the plain one that matched and failed the check)."""
        if self.trace:
            depth = (complete, len(self.node_list), len(self.bindings))
            if self.best is None or depth > self.best[0]:
                text = reason() if callable(reason) else reason
                self.best = (depth, text, list(self.node_list), dict(self.bindings))



# -- value patterns ---------------------------------------------------------------------------------------


class ValuePattern:
    """Base class: something that matches one IR value (or an absent input, for Optional)."""

    def match(self, v: Value | None, st: MatchState) -> Iterator[None]:
        raise NotImplementedError

    def var_names(self) -> list[str]:
        return []

    def describe(self) -> str:
        return type(self).__name__


class Var(ValuePattern):
    """Any value, captured under `name`; the same name seen twice must be the same value."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def match(self, v, st):
        if v is None:
            st.fail(f"{self.name}: the input is absent")
            return
        bound = st.bindings.get(self.name, _UNBOUND)
        if bound is not _UNBOUND:
            if bound is v:
                yield
            else:
                st.fail(lambda: f"{self.name}: bound to '{_vname(bound)}', but this is '{_vname(v)}'")
            return
        st.bindings[self.name] = v
        yield
        del st.bindings[self.name]

    def const(self, value: Any = None, pred: Callable[[np.ndarray], bool] | None = None, *,
              scalar: bool = False) -> Const:
        """This variable, constrained to a constant (see `Const`)."""
        return Const(value, pred, name=self.name, scalar=scalar)

    def var_names(self):
        return [self.name]

    def describe(self):
        return self.name

    def __repr__(self):
        return f"Var({self.name})"


_UNBOUND = object()


class _Any(ValuePattern):
    def match(self, v, st):
        if v is None:
            st.fail("an input is absent")
            return
        yield

    def describe(self):
        return "_"


ANY = _Any()
_ = ANY


class _Absent(ValuePattern):
    def match(self, v, st):
        if v is None:
            yield
        else:
            st.fail(lambda: f"expected an absent input, found '{_vname(v)}'")

    def describe(self):
        return "None"


ABSENT = _Absent()


class Const(ValuePattern):
    """A constant value: an initializer (that is not also a graph input) or the output of a Constant node.

    `value`: every element must equal it (a scalar compares against all elements; an array must also have the
    same shape); `pred(array) -> bool`: a further predicate; `scalar=True`: exactly one element.
    `name` captures the Value; `m.const(name)` gives the array.
    """

    __slots__ = ("value", "pred", "name", "scalar")

    def __init__(self, value: Any = None, pred: Callable[[np.ndarray], bool] | None = None, *, name: str | None = None,
                 scalar: bool = False):
        self.value = value
        self.pred = pred
        self.name = name
        self.scalar = scalar

    def match(self, v, st):
        if v is None:
            st.fail("expected a constant, the input is absent")
            return
        arr = const_array(v, st)
        if arr is None:
            st.fail(lambda: f"'{_vname(v)}' is not a constant")
            return
        if self.scalar and arr.size != 1:
            st.fail(lambda: f"'{_vname(v)}' is not a scalar (shape {list(arr.shape)})")
            return
        if self.value is not None and not _const_equals(arr, self.value):
            st.fail(lambda: f"constant '{_vname(v)}' is not {self.value!r}")
            return
        if self.pred is not None:
            try:
                ok = self.pred(arr)
            except Exception as exc:  # noqa: BLE001 - a predicate crashing means "no match"
                ok = False
                st.fail(f"predicate on '{_vname(v)}' raised {exc!r}")
            if not ok:
                st.fail(lambda: f"constant '{_vname(v)}' does not satisfy the predicate")
                return
        if self.name is None:
            yield
            return
        bound = st.bindings.get(self.name, _UNBOUND)
        if bound is not _UNBOUND:
            if bound is v:
                yield
            else:
                st.fail(f"{self.name}: bound to another value")
            return
        st.bindings[self.name] = v
        yield
        del st.bindings[self.name]

    def var_names(self):
        return [self.name] if self.name else []

    def describe(self):
        inner = [] if self.value is None else [repr(self.value)]
        if self.pred is not None:
            inner.append("pred")
        return f"{self.name or ''}Const({', '.join(inner)})"


def const_array(v: Value, st: MatchState) -> np.ndarray | None:
    """The constant data of `v` (an initializer that no graph input overrides, or a Constant node) or None."""
    return st.constants.data(v)


def _enclosing(graph: Graph | None) -> list[Graph]:
    graphs = []
    while graph is not None:
        graphs.append(graph)
        graph = graph.parent.graph if graph.parent is not None else None
    return graphs


def _const_equals(arr: np.ndarray, value: Any) -> bool:
    try:
        if isinstance(value, np.ndarray | list | tuple):
            want = np.asarray(value)
            return arr.shape == want.shape and bool(np.all(arr == want))
        if arr.dtype == object or arr.size == 0:
            return False
        return bool(np.all(arr == value))
    except (TypeError, ValueError):
        return False


class Optional(ValuePattern):
    """An input that may be absent; when absent, the Vars inside are bound to None."""

    __slots__ = ("inner",)

    def __init__(self, inner: Any):
        self.inner = as_pattern(inner)

    def match(self, v, st):
        if v is not None:
            yield from self.inner.match(v, st)
            return
        names = [n for n in self.inner.var_names() if n not in st.bindings]
        for n in names:
            st.bindings[n] = None
        yield
        for n in names:
            del st.bindings[n]

    def var_names(self):
        return self.inner.var_names()

    def describe(self):
        return f"Optional({self.inner.describe()})"


class Or(ValuePattern):
    """Alternatives, tried in order (each with its own backtracking)."""

    __slots__ = ("alternatives",)

    def __init__(self, *alternatives: Any):
        if not alternatives:
            raise ValueError("Or needs at least one alternative")
        self.alternatives = [as_pattern(a) for a in alternatives]

    def match(self, v, st):
        for alt in self.alternatives:
            yield from alt.match(v, st)

    def var_names(self):
        names: list[str] = []
        for a in self.alternatives:
            names += [n for n in a.var_names() if n not in names]
        return names

    def describe(self):
        return "Or(" + ", ".join(a.describe() for a in self.alternatives) + ")"


class AttrVar:
    """Captures an attribute's value under `name` (`op.Transpose(x, perm=AttrVar("perm"))`)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class NodePattern:
    """A node: op key, input patterns, attribute constraints, output count."""

    __slots__ = ("op_type", "domain", "inputs", "attrs", "num_outputs", "allow_other_inputs", "capture",
                 "commutative", "outputs")

    def __init__(self, op_type: str, domain: str, inputs: list[ValuePattern], attrs: dict[str, Any],
                 num_outputs: int | None, allow_other_inputs: bool, capture: str | None):
        self.op_type = op_type
        self.domain = domain
        self.inputs = inputs
        self.attrs = attrs
        self.num_outputs = num_outputs
        self.allow_other_inputs = allow_other_inputs
        self.capture = capture
        self.commutative = len(inputs) == 2 and has_trait(domain, op_type, Trait.COMMUTATIVE)
        self.outputs: list[NodeOutput] = []

    @property
    def key(self) -> tuple[str, str]:
        return (self.domain, self.op_type)

    def output(self, index: int) -> NodeOutput:
        while len(self.outputs) <= index:
            self.outputs.append(NodeOutput(self, len(self.outputs)))
        return self.outputs[index]

    def match_node(self, node: Node, st: MatchState) -> Iterator[None]:
        if node.op_type != self.op_type or node.domain != self.domain:
            st.fail(lambda: f"expected {self.op_type}, found {node.op_type} '{node.name}'")
            return
        bound = st.nodes.get(self)
        if bound is not None:
            if bound is node:
                yield
            else:
                st.fail(lambda: f"{self.op_type}: the pattern's node is already bound to another node")
            return
        if node in st.node_list:
            st.fail(lambda: f"{node.op_type} '{node.name}' is already matched by another part of the pattern")
            return
        if self.num_outputs is not None and len(node.outputs) != self.num_outputs:
            st.fail(lambda: f"{node.op_type} '{node.name}' has {len(node.outputs)} outputs, the pattern wants "
                            f"{self.num_outputs}")
            return
        captured: list[str] = []
        if self.attrs:
            for name, want in self.attrs.items():
                have = node_attr(node, name, st.opsets)
                if isinstance(want, Var | AttrVar):
                    prev = st.bindings.get(want.name, _UNBOUND)
                    if prev is not _UNBOUND:
                        if not _attr_equal(prev, have):
                            st.fail(f"attribute {name} differs from the captured {want.name}")
                            _unbind(st, captured)
                            return
                    else:
                        st.bindings[want.name] = have
                        captured.append(want.name)
                elif callable(want):
                    try:
                        ok = want(have)
                    except Exception:  # noqa: BLE001
                        ok = False
                    if not ok:
                        st.fail(lambda name=name, have=have: f"{node.op_type} '{node.name}': attribute {name}="
                                                              f"{have!r} does not satisfy the constraint")
                        _unbind(st, captured)
                        return
                elif not _attr_equal(have, want):
                    st.fail(lambda name=name, have=have, want=want: f"{node.op_type} '{node.name}': attribute "
                                                                    f"{name}={have!r}, the pattern wants {want!r}")
                    _unbind(st, captured)
                    return
        if self.capture:
            st.bindings[self.capture] = node
            captured.append(self.capture)
        inputs = node.inputs
        pats = self.inputs
        if len(inputs) > len(pats) and not self.allow_other_inputs:
            if any(v is not None for v in inputs[len(pats):]):
                st.fail(lambda: f"{node.op_type} '{node.name}' has {len(inputs)} inputs, the pattern wants "
                                f"{len(pats)}")
                _unbind(st, captured)
                return
        st.nodes[self] = node
        st.node_list.append(node)
        values = [inputs[i] if i < len(inputs) else None for i in range(len(pats))]
        yield from _match_inputs(pats, values, 0, st)
        if self.commutative and values[0] is not values[1]:
            yield from _match_inputs(pats, [values[1], values[0]], 0, st)
        st.node_list.pop()
        del st.nodes[self]
        _unbind(st, captured)

    def var_names(self) -> list[str]:
        names: list[str] = []
        for w in self.attrs.values():
            if isinstance(w, Var | AttrVar) and w.name not in names:
                names.append(w.name)
        if self.capture:
            names.append(self.capture)
        for p in self.inputs:
            names += [n for n in p.var_names() if n not in names]
        return names

    def describe(self) -> str:
        op = f"{self.domain}::{self.op_type}" if self.domain else self.op_type
        return f"{op}(" + ", ".join(p.describe() for p in self.inputs) + ")"


def _unbind(st: MatchState, names: list[str]) -> None:
    for n in names:
        st.bindings.pop(n, None)


def _match_inputs(pats: list[ValuePattern], values: list[Value | None], i: int, st: MatchState) -> Iterator[None]:
    if i == len(pats):
        yield
        return
    for _ in pats[i].match(values[i], st):
        yield from _match_inputs(pats, values, i + 1, st)


class NodeOutput(ValuePattern):
    """Output `index` of a node pattern."""

    __slots__ = ("node", "index")

    def __init__(self, node: NodePattern, index: int):
        self.node = node
        self.index = index

    def match(self, v, st):
        if v is None:
            st.fail(lambda: f"expected the output of {self.node.op_type}, the input is absent")
            return
        p = v.producer
        if p is None:
            st.fail(lambda: f"expected the output of {self.node.op_type}, '{_vname(v)}' has no producer")
            return
        if p.graph is not st.graph:
            st.fail(lambda: f"'{_vname(v)}' is produced in another graph")
            return
        if v.index != self.index:
            st.fail(lambda: f"'{_vname(v)}' is output {v.index} of {p.op_type}, the pattern wants {self.index}")
            return
        yield from self.node.match_node(p, st)

    def var_names(self):
        return self.node.var_names()

    def describe(self):
        d = self.node.describe()
        return d if self.index == 0 else f"{d}[{self.index}]"


def as_pattern(x: Any) -> ValuePattern:
    """Turn a builder argument into a value pattern (numbers and arrays become constant patterns)."""
    if isinstance(x, ValuePattern):
        return x
    if x is None:
        return ABSENT
    if isinstance(x, bool | int | float | np.number | np.ndarray | list):
        return Const(value=x)
    raise TypeError(f"cannot use {x!r} in a pattern")


_ATTR_DEFAULTS: dict[tuple, Any] = {}


def node_attr(node: Node, name: str, opsets: dict[str, int]) -> Any:
    """An attribute's value, or the schema default in force for the node's opset (None if neither)."""
    a = node.attributes.get(name)
    if a is not None:
        return a.value
    version = node.version or opsets.get(node.domain)
    key = (node.domain, node.op_type, version, name)
    try:
        return _ATTR_DEFAULTS[key]
    except KeyError:
        schema = get_schema(node.domain, node.op_type, version)
        val = attribute_default(schema, name) if schema is not None else None
        if isinstance(val, bytes):
            val = val.decode("utf-8", "replace")
        _ATTR_DEFAULTS[key] = val
        return val


def _attr_equal(have: Any, want: Any) -> bool:
    if isinstance(want, list | tuple) or isinstance(have, list | tuple):
        if have is None or want is None:
            return False
        return list(have) == list(want)
    return have == want


def _vname(v: Any) -> str:
    return getattr(v, "name", None) or repr(v)


# -- the builder ----------------------------------------------------------------------------------------


class PatternBuilder:
    """`op` inside `pattern()`: `op.Relu(x)` builds a node pattern and returns its output pattern(s)."""

    def __getattr__(self, op_type: str) -> Callable[..., Any]:
        if op_type.startswith("__"):
            raise AttributeError(op_type)

        def build(*inputs: Any, _domain: str = "", _outputs: int | None = None, _allow_other_inputs: bool = False,
                  _name: str | None = None, **attrs: Any):
            if op_type == "Constant" and _domain == "" and not inputs:
                return Const(attrs.pop("value", None), attrs.pop("pred", None), name=attrs.pop("name", _name),
                             scalar=attrs.pop("scalar", False))
            node = NodePattern(op_type, "" if _domain == "ai.onnx" else _domain, [as_pattern(x) for x in inputs],
                               attrs, _outputs, _allow_other_inputs, _name)
            if _outputs is not None and _outputs != 1:
                return tuple(node.output(i) for i in range(_outputs))
            return node.output(0)

        return build
