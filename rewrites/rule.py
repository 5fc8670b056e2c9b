"""Rules: pattern / check / rewrite, and the machinery that matches one rule at one node and applies it safely.

    class MatMulAddToGemm(Rule):
        def pattern(self, op, a, b, c):
            return op.Add(op.MatMul(a, b), c)
        def check(self, m, a, b, c):
            return require(a.rank == 2 and b.rank == 2, "Gemm needs rank-2 A and B")
        def rewrite(self, op, m, a, b, c):
            return op.Gemm(a, b, c)

`pattern` is traced once per rule instance (see rewrites/pattern.py). `check(m, *vars)` gets the bound IR values
(Value, None for an absent optional input, or a captured attribute value / node) and returns truthy, or None, to
accept; `require(cond, reason)` rejects with a reason. `rewrite(op, m, *vars)` builds real nodes with `op` and
returns the replacement value(s) for the pattern's output(s) (or None to give up).

Safety is automatic (`RuleApplier.apply`): the matched nodes' outputs other than the replaced ones may only be
used inside the match and may not be graph outputs; the replaced values keep their types (the new nodes' types
are inferred with ONNX's inference and compared; a mismatch rejects the rewrite); graph outputs keep their names
and types; new constants get fresh names (initializers in the main graph, Constant nodes inside function and
control-flow bodies).
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from ..ir.core import Graph, Model, Node, Value
from ..ir.infer import InferenceError, infer_node
from ..ir.rewriter import Rewriter
from ..ir.tensors import NumpyTensor, Tensor
from ..ir.types import DataType, TensorType
from .pattern import ABSENT, MatchFailed, MatchState, NodeOutput, Or, PatternBuilder, Var, const_array, require

__all__ = ["Match", "Rule", "RuleApplier", "RewriteBuilder", "explain", "require"]

log = logging.getLogger("optc.rewrites")


def _kebab(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", name).lower()


class Rule:
    """Base class of rewrite rules. Subclasses define `pattern`, optionally `check`, and `rewrite`.

    Class attributes: `name` (default: the class name), `domain` / `min_opset` / `max_opset` (the rule applies
    only where the model imports `domain` at a version in that range), `benefit` (higher is tried first among
    rules with the same root op).

    IEEE semantics: a rule must not change what the model computes, bit for bit, NaN, infinities and signed
    zeros included (NaNs count as equal whatever their payload). Its docstring says why it is exact. A rule
    with cases that are exact only in real arithmetic (`x + 0 -> x` is wrong for x = -0.0) applies them only
    when `m.fast_math` is set (`optimize(..., fast_math=True)`, `optc optimize --fast-math`) and names them in
    `fast_math` (shown by `optc passes`). A rule that keeps the operations but changes their rounding (a fusion
    that rescales weights) says how in `rounding` (also shown by `optc passes`).
    """

    name: ClassVar[str] = ""
    domain: ClassVar[str] = ""
    min_opset: ClassVar[int | None] = None
    max_opset: ClassVar[int | None] = None
    benefit: ClassVar[int] = 1
    #: replace every output of the root node (for roots of variable arity, e.g. If): `rewrite` returns one value
    #: per output of the matched root node instead of one per pattern output
    replace_all_outputs: ClassVar[bool] = False
    #: the cases that apply only under fast-math (not exact under IEEE 754); empty when there are none
    fast_math: ClassVar[str] = ""
    #: how the rewrite changes rounding at default settings (a documented, accepted reassociation); empty when
    #: the rewrite is bit-exact
    rounding: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__

    # -- to override ------------------------------------------------------------------------------
    def pattern(self, op, *vars):  # noqa: A002
        raise NotImplementedError

    def check(self, m: Match, *vars) -> Any:  # noqa: A002
        return True

    def rewrite(self, op, m: Match, *vars):  # noqa: A002
        raise NotImplementedError

    # -- compiled pattern -------------------------------------------------------------------------
    @classmethod
    def description(cls) -> str:
        doc = inspect.getdoc(cls) or ""
        return doc.strip().splitlines()[0] if doc.strip() else cls.name

    def compiled(self) -> CompiledPattern:
        cp = self.__dict__.get("_compiled")
        if cp is None:
            cp = CompiledPattern(self)
            self.__dict__["_compiled"] = cp
        return cp

    def applies_to(self, opsets: dict[str, int]) -> bool:
        """Domain and opset gating against a model's (or function's) opset imports."""
        version = opsets.get(self.domain)
        if version is None:
            if self.domain in ("", "ai.onnx"):
                version = opsets.get("ai.onnx" if self.domain == "" else "")
            if version is None:
                return self.min_opset is None and self.max_opset is None and self.domain in ("", "ai.onnx")
        if self.min_opset is not None and version < self.min_opset:
            return False
        return not (self.max_opset is not None and version > self.max_opset)

    def __repr__(self) -> str:
        return f"<rule {self.name}>"


class CompiledPattern:
    """A rule's traced pattern: var names, root patterns (one per alternative) and root op keys."""

    def __init__(self, rule: Rule):
        sig = inspect.signature(rule.pattern)
        params = list(sig.parameters)
        if not params:
            raise TypeError(f"{type(rule).__name__}.pattern must take `op` first")
        self.var_names = params[1:]
        out = rule.pattern(PatternBuilder(), *[Var(n) for n in self.var_names])
        self.multi = isinstance(out, tuple)
        outs = list(out) if self.multi else [out]
        if not outs:
            raise TypeError(f"{type(rule).__name__}.pattern returned nothing")
        # alternatives at the root: Or(...) of single outputs
        if not self.multi and isinstance(outs[0], Or):
            self.roots = [[a] for a in outs[0].alternatives]
        else:
            self.roots = [outs]
        keys: list[tuple[str, str]] = []
        for root in self.roots:
            for o in root:
                if not isinstance(o, NodeOutput):
                    raise TypeError(f"{type(rule).__name__}.pattern must return node outputs (got {o.describe()})")
                if o.node is not root[0].node:
                    raise TypeError(f"{type(rule).__name__}: the outputs of a multi-output pattern must all come "
                                    f"from one node")
            if root[0].node.key not in keys:
                keys.append(root[0].node.key)
        self.root_keys = keys

    def describe(self) -> str:
        return " | ".join(", ".join(o.describe() for o in root) for root in self.roots)


class Match:
    """A successful match: root node, matched nodes (root first), bindings, and the values to be replaced."""

    def __init__(self, rule: Rule, root: Node, nodes: list[Node], bindings: dict[str, Any], outputs: list[Value],
                 graph: Graph, opsets: dict[str, int], st: MatchState, fast_math: bool = False):
        self.rule = rule
        #: whether rewrites that are exact only in real arithmetic are allowed (`PassContext.fast_math`)
        self.fast_math = fast_math
        self.root = root
        self.nodes = nodes
        self.bindings = bindings
        self.outputs = outputs
        self.graph = graph
        self.opsets = opsets
        self._st = st

    def __getitem__(self, name: str) -> Any:
        return self.bindings[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.bindings.get(name, default)

    def opset(self, domain: str = "") -> int | None:
        return self.opsets.get(domain)

    def const(self, v: str | Value | None) -> np.ndarray | None:
        """The constant array of a bound name or value (None if not a constant)."""
        if isinstance(v, str):
            v = self.bindings.get(v)
        if not isinstance(v, Value):
            return None
        return const_array(v, self._st)

    def is_initializer(self, v: Value | None) -> bool:
        """Is `v` an initializer that no graph input can override (a weight the rewrite may read and bake)?"""
        return v is not None and v.const is not None and self._st.constants.is_constant(v)

    def node(self, op_type: str) -> Node:
        """The first matched node with this op type."""
        for n in self.nodes:
            if n.op_type == op_type:
                return n
        raise KeyError(op_type)


class RewriteBuilder:
    """`op` inside `rewrite()`: `op.Gemm(a, b, c, alpha=1.0)` creates a (pending) node and returns its output(s).

    Python numbers and numpy arrays given as inputs become constants; `op.const(array, hint)` makes one
    explicitly; `op.inline(graph)` moves a body's nodes in (If with a constant condition) and returns its outputs.
    Nothing touches the graph until the rewrite is accepted.
    """

    def __init__(self, rewriter: Rewriter, graph: Graph, root: Node, rule_name: str, use_initializers: bool):
        self._rw = rewriter
        self.graph = graph
        self.root = root
        self._rule_name = rule_name
        self._use_inits = use_initializers
        self.nodes: list[Node] = []
        self.inits: list[Value] = []
        self.inlined: list[Graph] = []
        self._hint = next((o.name for o in root.outputs if o is not None and o.name), root.op_type.lower())

    def const(self, array: Any, hint: str = "const", dtype: Any = None) -> Value:
        """A new constant (a fresh-named initializer, or a Constant node inside bodies)."""
        if isinstance(array, Tensor):
            arr = array.numpy()
        else:
            arr = np.asarray(array, dtype=dtype)
            if dtype is None and arr.dtype == np.float64 and not isinstance(array, np.ndarray | np.generic):
                arr = arr.astype(np.float32)
        if self._use_inits:
            tensor = NumpyTensor(arr)
            v = Value("", TensorType(tensor.dtype, tuple(tensor.shape)), const=tensor)
            v.meta = {"hint": hint}
            self.inits.append(v)
            return v
        return self.Constant(value=NumpyTensor(arr), _hint=hint)

    def inline(self, body: Graph) -> tuple[Value, ...]:
        """Use a body graph (no inputs) in place: its nodes move before the root when the rewrite is applied."""
        if body.inputs:
            raise MatchFailed("cannot inline a body that has inputs")
        self.inlined.append(body)
        return tuple(body.outputs)

    def __getattr__(self, op_type: str):
        if op_type.startswith("_"):
            raise AttributeError(op_type)

        def build(*inputs: Any, _domain: str = "", _outputs: int = 1, _version: int | None = None,
                  _hint: str | None = None, **attrs: Any):
            ins: list[Value | None] = []
            for x in inputs:
                if x is None or isinstance(x, Value):
                    ins.append(x)
                else:
                    ins.append(self.const(x))
            while ins and ins[-1] is None:
                ins.pop()
            attributes = {k: v for k, v in attrs.items() if v is not None}
            outs = [Value(self._rw.fresh_name(_hint or self._hint)) for _ in range(_outputs)]
            node = Node(op_type, ins, attributes, domain=_domain, outputs=outs, version=_version,
                        name=self._rw.fresh_node_name(f"{self._rule_name}"))
            node.meta = {"rule": self._rule_name}
            self.nodes.append(node)
            return outs[0] if _outputs == 1 else tuple(outs)

        return build


def _origin(nodes: list[Node]) -> list[str]:
    """The names of the user's nodes that `nodes` (a match) stand for: their names, or the names they carry in
    `meta["from"]` when a rule made them; a rewrite's new nodes keep this list (`node.meta["from"]`), so a fused
    node can still be found by the names of the nodes it replaced (`optc quantize --exclude`)."""
    names: list[str] = []
    for n in nodes:
        for name in (n.meta or {}).get("from") or ([n.name] if n.name else []):
            if name not in names:
                names.append(name)
    return names


def _types_compatible(old, new) -> str | None:
    """Why `new` cannot stand for `old` (None when compatible; unknown parts are compatible)."""
    if old is None or new is None:
        return None
    if type(old) is not type(new):
        return f"{old} vs {new}"
    if isinstance(old, TensorType):
        if DataType(old.dtype) != DataType(new.dtype):
            return f"element type {old} vs {new}"
        if old.shape is None or new.shape is None:
            return None
        if len(old.shape) != len(new.shape):
            return f"rank {old} vs {new}"
        for a, b in zip(old.shape, new.shape, strict=False):
            if isinstance(a, int) and isinstance(b, int) and a != b:
                return f"shape {old} vs {new}"
        return None
    return None if old == new else f"{old} vs {new}"


class RuleApplier:
    """Matches rules at nodes and applies them safely through a Rewriter (used by the driver and `explain`)."""

    def __init__(self, rewriter: Rewriter, opsets: dict[str, int], trace: bool = False, fast_math: bool = False,
                 trace_rules: set[str] | frozenset[str] = frozenset()):
        self.rw = rewriter
        self.opsets = opsets
        self.trace = trace  # keep the best partial match of every failed match (for explanations)
        self.trace_rules = trace_rules  # ... of these rules only
        self.fast_math = fast_math
        self.attempts = 0
        self._function_graphs: set[Graph] | None = None
        self.last_failure: str = ""  # with tracing: the explanation of the last failed match (multi-line)
        self.last_reason: str = ""  # ... its reason and best partial match on one line

    def _is_main_graph(self, g: Graph) -> bool:
        return g is self.rw.graph and g.parent is None and (
            self.rw.model is None or all(f.graph is not g for f in self.rw.model.functions.values()))

    # -- matching ---------------------------------------------------------------------------------
    def match(self, rule: Rule, node: Node, opsets: dict[str, int] | None = None) -> Match | None:
        """The first match of `rule` rooted at `node` that passes the automatic safety checks and `check`."""
        self.attempts += 1
        cp = rule.compiled()
        g = node.graph
        opsets = opsets or self.opsets
        st = MatchState(g, opsets, self.trace or rule.name in self.trace_rules, self.rw.constants())
        self.last_failure = ""
        self.last_reason = "the pattern does not match"
        for root in cp.roots:
            np_ = root[0].node
            if np_.key != node.key:
                st.fail(f"expected {np_.op_type}, found {node.op_type}")
                continue
            for _ in np_.match_node(node, st):
                if rule.replace_all_outputs:
                    outputs = list(node.outputs)
                else:
                    outputs = [node.outputs[o.index] if o.index < len(node.outputs) else None for o in root]
                if any(o is None for o in outputs):
                    st.fail("the root node lacks an output the pattern returns", complete=True)
                    continue
                nodes = list(st.node_list)
                why = self._escapes(nodes, outputs)
                if why:
                    st.fail(why, complete=True)
                    continue
                m = Match(rule, node, nodes, dict(st.bindings), outputs, g, opsets, st, self.fast_math)
                args = [m.bindings.get(n) for n in cp.var_names]
                try:
                    ok = rule.check(m, *args)
                except MatchFailed as exc:
                    st.fail(f"check: {exc.reason}", complete=True)
                    continue
                if ok is not None and not ok:
                    st.fail("check returned False", complete=True)
                    continue
                return m
        if st.best is not None:
            _, reason, nodes, bindings = st.best
            self.last_failure = _format_failure(rule, node, reason, nodes, bindings)
            matched = ", ".join(f"{n.op_type} '{_label(n)}'" for n in nodes)
            self.last_reason = reason + (f" (best partial match: [{matched}])" if matched else "")
        return None

    def _escapes(self, nodes: list[Node], outputs: list[Value]) -> str | None:
        inside = set(nodes)
        replaced = set(outputs)
        for n in nodes:
            for o in n.outputs:
                if o is None or o in replaced:
                    continue
                for use in o._uses:
                    if use.node not in inside:
                        return f"'{o.name}' (of {n.op_type} '{_label(n)}') is also used outside the match"
                if self.rw.is_graph_output(o):
                    return f"'{o.name}' (of {n.op_type} '{_label(n)}') is a graph output"
        return None

    # -- applying ---------------------------------------------------------------------------------
    def build(self, m: Match) -> tuple[RewriteBuilder, list[Value]] | str:
        """Run the rule's rewrite; return the builder and the replacement values, or why it was rejected.

        A rejected rewrite leaves no trace: its never-inserted nodes give up their uses of existing values.
        """
        builder = RewriteBuilder(self.rw, m.graph, m.root, m.rule.name, self._is_main_graph(m.graph))
        try:
            out = self._build(m, builder)
        except BaseException:
            discard(builder)
            raise
        if isinstance(out, str):
            discard(builder)
            return out
        return builder, out

    def _build(self, m: Match, builder: RewriteBuilder) -> list[Value] | str:
        rule = m.rule
        args = [m.bindings.get(n) for n in rule.compiled().var_names]
        try:
            result = rule.rewrite(builder, m, *args)
        except MatchFailed as exc:
            return f"rewrite: {exc.reason}"
        if result is None:
            return "rewrite returned None"
        results = list(result) if isinstance(result, tuple | list) else [result]
        if len(results) != len(m.outputs):
            raise TypeError(f"{rule.name}.rewrite returned {len(results)} values for {len(m.outputs)} pattern outputs")
        for old, new in zip(m.outputs, results, strict=False):
            if not isinstance(new, Value):
                raise TypeError(f"{rule.name}.rewrite must return Values, got {new!r}")
            if new is old:
                return "rewrite returned the matched value itself"
        why = self._infer(builder, m.opsets)
        if why:
            return why
        origin = _origin(m.nodes)
        for n in builder.nodes:
            n.meta["from"] = origin
        for old, new in zip(m.outputs, results, strict=False):
            why = _types_compatible(old.type, new.type)
            if why:
                return f"the replacement of '{old.name}' changes its type: {why}"
        seen: set[Value] = set()
        fresh = builder_outputs(builder)
        for old, new in zip(m.outputs, results, strict=False):
            if self.rw.is_graph_output(old):
                why = self.rw.why_not_replace_output(old, new) if new not in fresh else None
                if why is None and new in seen:
                    why = f"graph output '{old.name}': one value would stand for two graph outputs"
                if why:
                    return why
                seen.add(new)
        return results

    def _infer(self, builder: RewriteBuilder, opsets: dict[str, int]) -> str | None:
        for n in builder.nodes:
            try:
                types = infer_node(n, opsets)
            except InferenceError as exc:
                return f"the new {n.op_type} node is invalid: {exc}"
            except Exception as exc:  # noqa: BLE001 - onnx raises assorted errors for odd nodes
                return f"inference failed on the new {n.op_type} node: {exc}"
            for o, t in zip(n.outputs, types, strict=False):
                if o is not None and o.type is None:
                    o.type = t
        return None

    def commit(self, m: Match, builder: RewriteBuilder, results: list[Value]) -> None:
        """Apply an accepted rewrite: add constants, insert nodes before the root, replace, erase the match."""
        rw = self.rw
        g = m.graph
        root = m.root
        for v in builder.inits:
            hint = (v.meta or {}).pop("hint", "const")
            v.meta = None
            rw.adopt_initializer(v, g, hint)
        moved: dict[Value, Value] = {}
        for body in builder.inlined:
            moved.update(self._inline(body, root))
        results = [moved.get(r, r) for r in results]
        if builder.nodes:
            rw.insert_before(root, *builder.nodes)
        for old, new in zip(m.outputs, results, strict=False):
            if new.type is None and old.type is not None:
                new.type = old.type
            rw.replace_all_uses_with(old, new, replace_graph_outputs=True)
        self.erase_unused(m.nodes)
        self._keep_names(m, builder, results)

    def _keep_names(self, m: Match, builder: RewriteBuilder, results: list[Value]) -> None:
        """The user's names survive a fusion: a new value that replaces an erased one takes its name, and the
        node that makes the (first) result takes the name of an erased matched node of its op type (Conv + BN
        -> Conv keeps the Conv's name, as onnxruntime's fusion does), else the erased root's name."""
        fresh = builder_outputs(builder)
        for old, new in zip(m.outputs, results, strict=False):
            erased = old.producer is None or old.producer.graph is None
            if new in fresh and erased and old.name and new.name != old.name and not self.rw.is_graph_output(new):
                self.rw.take_name(new, old)
        first = results[0] if results else None
        if first not in fresh or first.producer is None or first.producer not in builder.nodes:
            return
        made = first.producer
        erased = [n for n in m.nodes if n.graph is None and n.name]
        same = [n for n in erased if n.key == made.key]
        donor = same[0] if same else (m.root if m.root in erased else None)
        if donor is not None and all(n.name != donor.name for n in builder.nodes):  # the rule named one itself
            made.name = donor.name

    def _inline(self, body: Graph, root: Node) -> dict[Value, Value]:
        """Move `body`'s nodes before `root`; its initializers become initializers of the main graph, or, in a
        nested graph (which cannot hold them), Constant nodes. Returns {body initializer: the value that now
        stands for it} for the latter, so the rewrite's results that named them are redirected."""
        rw = self.rw
        g = root.graph
        moved: dict[Value, Value] = {}
        for name, v in list(body.initializers.items()):
            rw.detach_initializer(v, body)
            if self._is_main_graph(g):
                rw.adopt_initializer(v, g, name)
            else:
                node = Node("Constant", (), {"value": v.const}, name=rw.fresh_node_name("inlined"))
                out = node.outputs[0]
                out.name = rw.fresh_name(name)
                out.type = v.type or TensorType(v.const.dtype, tuple(v.const.shape))
                rw.insert_before(root, node)
                for i, o in enumerate(body.outputs):
                    if o is v:
                        rw.set_graph_output(body, i, out)
                rw.replace_all_uses_with(v, out)
                moved[v] = out
        for n in list(body):
            for o in n.outputs:
                if o is not None:
                    o.name = rw.fresh_name(o.name or "v")
            rw.move_before(root, n)
        rw.clear_graph_outputs(body)
        return moved

    def erase_unused(self, nodes: Sequence[Node]) -> None:
        pending = [n for n in nodes if n.graph is not None]
        progress = True
        while pending and progress:
            progress = False
            rest = []
            for n in pending:
                if all(o is None or (not o._uses and not self.rw.is_graph_output(o)) for o in n.outputs):
                    self.rw.erase(n, safe=False)
                    progress = True
                else:
                    rest.append(n)
            pending = rest


def discard(builder: RewriteBuilder) -> None:
    """Drop the uses that a rejected rewrite's never-inserted nodes hold on existing values."""
    for node in builder.nodes:
        node._detach_inputs()


def builder_outputs(builder: RewriteBuilder) -> set[Value]:
    """Values the rewrite creates (new nodes' outputs and the outputs of inlined bodies' nodes)."""
    fresh = {o for n in builder.nodes for o in n.outputs if o is not None}
    for body in builder.inlined:
        fresh.update(o for n in body for o in n.outputs if o is not None)
    return fresh


def _label(n: Node) -> str:
    """How messages name a node, as the driver does: its name, else its first output's name."""
    return n.name or next((o.name for o in n.outputs if o is not None and o.name), "")


def _format_failure(rule: Rule, node: Node, reason: str, nodes: list[Node], bindings: dict[str, Any]) -> str:
    matched = ", ".join(f"{n.op_type} '{_label(n)}'" for n in nodes) or "nothing"
    binds = ", ".join(f"{k}={_show(v)}" for k, v in bindings.items()) or "none"
    return (f"{rule.name} did not match at {node.op_type} '{_label(node)}': {reason}\n"
            f"  pattern: {rule.compiled().describe()}\n"
            f"  best partial match: nodes [{matched}], bindings [{binds}]")


def _show(v: Any) -> str:
    if isinstance(v, Value):
        return f"%{v.name or '?'}"
    if isinstance(v, Node):
        return f"{v.op_type} '{_label(v)}'"
    return repr(v)


def explain(rule: Rule | type[Rule], node: Node, model: Model | None = None, *, fast_math: bool = False) -> str:
    """Why `rule` does (not) match at `node`: the best partial match and the failing reason (`fast_math`: as
    under `optimize(..., fast_math=True)`).

    Reports the automatic safety checks and the rewrite's own rejections (type changes, graph outputs) too.
    """
    if isinstance(rule, type):
        rule = rule()
    target = model if model is not None else _root_graph(node)
    opsets = dict(model.opset_imports) if model is not None else {"": 21}
    if model is not None and not rule.applies_to(opsets):
        return f"{rule.name} does not apply to this model's opsets ({opsets}); it needs {rule.domain or 'ai.onnx'} " \
               f"in [{rule.min_opset}, {rule.max_opset}]"
    applier = RuleApplier(Rewriter(target), opsets, trace=True, fast_math=fast_math)
    if node.key not in rule.compiled().root_keys:
        return f"{rule.name} did not match at {node.op_type} '{_label(node)}': the pattern's root is " \
               f"{' or '.join(k[1] for k in rule.compiled().root_keys)}"
    m = applier.match(rule, node)
    if m is None:
        return applier.last_failure or f"{rule.name} did not match at {node.op_type} '{_label(node)}'"
    built = applier.build(m)
    if isinstance(built, str):
        return f"{rule.name} matched at {node.op_type} '{_label(node)}' but the rewrite was rejected: {built}"
    discard(built[0])
    return f"{rule.name} matches at {node.op_type} '{_label(node)}' (nodes: {', '.join(n.op_type for n in m.nodes)})"


def _root_graph(node: Node) -> Graph:
    g = node.graph
    while g is not None and g.parent is not None and g.parent.graph is not None:
        g = g.parent.graph
    return g


__all__ += ["ABSENT", "MatchFailed"]
