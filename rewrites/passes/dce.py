"""`dce`: remove dead nodes (outputs unused and not graph outputs; never ops with side effects), unused
initializers, and model-local functions that nothing calls. Recurses into If/Loop/Scan bodies and functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...ir.core import Graph, Model, Node
from ...ir.rewriter import Rewriter
from ...ir.schema import Trait, get_schema, has_trait
from ..context import PassContext, PassResult
from ..pass_manager import Pass, register_pass
from ._util import describe


def _is_dead(node: Node, graph: Graph, outputs: set[int], keep_unknown: bool, local: set) -> bool:
    if has_trait(node.domain, node.op_type, Trait.SIDE_EFFECTS):
        return False
    if keep_unknown and (node.domain, node.op_type, node.overload) not in local and \
            get_schema(node.domain, node.op_type) is None:
        return False  # a custom op might act on the world: only ops we know are pure are dropped
    for o in node.outputs:
        if o is not None and (o._uses or id(o) in outputs):
            return False
    return True


@register_pass
@dataclass
class DeadCodeElimination(Pass):
    """Remove dead nodes, unused initializers and unused model-local functions."""

    name: ClassVar[str] = "dce"
    description: ClassVar[str] = ("remove nodes whose outputs nothing uses (not side-effecting ones, nor custom ops "
                                  "unless keep-unknown=false), unused initializers and unused model-local functions")
    option_help: ClassVar[dict[str, str]] = {
        "initializers": "also remove initializers nothing reads",
        "functions": "also remove model-local functions nothing calls",
        "keep-unknown": "keep dead nodes of ops without a known schema (custom ops may have side effects)",
    }
    initializers: bool = True
    functions: bool = True
    keep_unknown: bool = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        counts: dict[str, int] = {}

        def count(rule: str, label: str) -> None:
            counts[rule] = counts.get(rule, 0) + 1
            ctx.record(self.name, rule, label)

        rw = Rewriter(model)
        # Bodies before the graphs that hold them: a body's dead nodes release their outer-scope uses first.
        graphs = list(model.graphs())
        local = set(model.functions)
        for g in reversed(graphs):
            outputs = {id(v) for v in g.outputs}
            for node in reversed(g):
                if node.graph is g and _is_dead(node, g, outputs, self.keep_unknown, local):
                    if not ctx.budget.take():
                        break
                    label = describe(node)
                    rw.erase(node, safe=False)
                    count("erase-node", label)
        if self.initializers:
            for g in reversed(list(model.graphs())):
                inputs = {id(v) for v in g.inputs}
                for name, v in list(g.initializers.items()):
                    if v._uses or id(v) in inputs or rw.is_graph_output(v):
                        continue
                    if not ctx.budget.take():
                        break
                    rw.remove_initializer(v, g)
                    count("erase-initializer", f"initializer '{name}'")
        if self.functions and model.functions:
            for key in self._unused_functions(model):
                if not ctx.budget.take():
                    break
                rw.remove_function(key)
                count("erase-function", f"function '{key[0]}::{key[1]}'" if key[0] else f"function '{key[1]}'")
        changed = bool(counts)
        return PassResult(changed, converged=not ctx.budget.exhausted, counts=counts)

    @staticmethod
    def _unused_functions(model: Model) -> list[tuple[str, str, str]]:
        by_call = {(d, n, o): (d, n, o) for d, n, o in model.functions}
        reached: set[tuple[str, str, str]] = set()
        stack = [model.graph]
        while stack:
            g = stack.pop()
            for n in g.all_nodes():
                key = (n.domain, n.op_type, n.overload)
                if key in by_call and key not in reached:
                    reached.add(key)
                    stack.append(model.functions[key].graph)
        return [k for k in model.functions if k not in reached]
