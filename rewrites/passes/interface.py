"""`remove-initializer-inputs`: turn initializers that are also listed as graph inputs into plain constants.

IR versions before 4 required every initializer to be listed among the graph inputs, which also makes it a
run-time-overridable default; no constant folding or fusion may touch such a weight. For those models the
listing says nothing about intent, so (by default) this pass drops those inputs and raises the IR version to 4.
With `all=true` it does the same for models of any IR version (their interface then loses those inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...ir.core import Model
from ...ir.rewriter import Rewriter
from ..context import PassContext, PassResult
from ..pass_manager import Pass, register_pass


@register_pass
@dataclass
class RemoveInitializerInputs(Pass):
    """Initializers listed as graph inputs become constants (IR < 4 models, or all with all=true)."""

    name: ClassVar[str] = "remove-initializer-inputs"
    description: ClassVar[str] = ("initializers that are also graph inputs become constants (models of IR "
                                  "version < 4, where every weight had to be an input; all=true: any model)")
    option_help: ClassVar[dict[str, str]] = {
        "all": "also in models of IR version 4 and later (where an initializer listed as an input is an overridable default)",
    }
    all: bool = False

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        if model.ir_version >= 4 and not self.all:
            return PassResult(False)
        g = model.graph
        keep = []
        removed = 0
        for v in g.inputs:
            if v.const is not None and g.initializers.get(v.name) is v:
                if not ctx.budget.take():
                    keep.append(v)
                    continue
                removed += 1
                ctx.record(self.name, "input-to-constant", f"input '{v.name}'")
            else:
                keep.append(v)
        if not removed:
            return PassResult(False)
        Rewriter(model).set_graph_inputs(g, keep)
        if model.ir_version < 4:
            model.ir_version = 4
        return PassResult(True, converged=not ctx.budget.exhausted, counts={"input-to-constant": removed})
