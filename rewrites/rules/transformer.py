"""Transformer fusions for ONNX out, in two output forms (`optc optimize --for standard|onnxruntime`).

Rule sets (see transformer_norm.py, transformer_gelu.py, transformer_attention.py for the patterns and checks):

* `transformer-standard`: standard ONNX ops only: Attention (opset 23+; grouped-query where the graph repeats the
  K/V heads, transformer_gqa.py), RotaryEmbedding (23+), RMSNormalization (23+),
  LayerNormalization (17+), Gelu (20+). The model's opset is raised to what the fused ops need, and only when
  a rule made one of them and every op of the model means the same at the new opset (transformer_opset.py);
  otherwise a fusion whose op the model's opset lacks is not made.
* `transformer-onnxruntime`: onnxruntime's com.microsoft contrib ops MultiHeadAttention (and Attention, its
  input projections packed in, where they are linear projections of one input: transformer_packed.py), Gelu,
  FastGelu, BiasGelu (any opset), SkipLayerNormalization (below opset 17 only: from 17 a residual block is Sum +
  LayerNormalization, which onnxruntime's CPU kernels run faster), and the standard LayerNormalization (17+) /
  RMSNormalization (23+), 3-D Attention (23+, one K/V head: multi-query attention) and
  4-D Attention (23+, for rotary-embedded or repeated-K/V heads, which MultiHeadAttention does not take) and
  RotaryEmbedding (23+; below, com.microsoft RotaryEmbedding), the opset raised as for the standard form.

* `transformer-optc`: the standard set for optc's own lowering (`optc compile`), which computes a fully
  masked attention row as the spec does: attention is fused whatever rows its mask can mask.

The pass `fuse-transformer{runtime=standard|onnxruntime|optc}` runs one of them (with constant folding in the loop),
adding the com.microsoft opset import while it runs and keeping it only if a contrib op was made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...errors import OptcError
from ...ir.core import Model
from ..context import PassContext, PassResult
from ..driver import apply_rules
from ..pass_manager import Pass, register_pass
from .fusion import GemmOfPermutedRows
from .transformer_attention import (
    FuseAttention,
    FuseAttention4D,
    FuseAttention4DAnyMask,
    FuseAttentionAnyMask,
    FuseMultiHeadAttention,
    FuseMultiQueryAttention,
)
from .transformer_bmm import LiftBatchedHeads
from .transformer_gelu import (
    FuseBiasGelu,
    FuseFastGelu,
    FuseFastGeluBias,
    FuseGeluErf,
    FuseGeluErfContrib,
    FuseGeluTanh,
)
from .transformer_gqa import FuseGroupedQueryAttention, ShapeOfRepeatedHeads
from .transformer_norm import MS, FuseLayerNorm, FuseResidualLayerNorm, FuseRMSNorm, FuseSkipLayerNorm
from .transformer_opset import NEEDS, TARGET, ReduceAxesToInput, opset_key, settle_opset, upgrade_problem
from .transformer_packed import FusePackedAttention, ShapeOfProjection, ShapeOfSplit
from .transformer_rotary import FuseRotaryEmbedding, FuseRotaryEmbeddingContrib

#: in each: LiftBatchedHeads (transformer_bmm.py) first, 3-D `bmm` heads as the 4-D ones the attention rules take;
#: GemmOfPermutedRows (fusion.py), the out-projection of a sequence-first attention's output, the Transposes around
#: it gone
STANDARD = [LiftBatchedHeads, FuseAttention, GemmOfPermutedRows, FuseAttention4D, FuseGroupedQueryAttention,
            ShapeOfRepeatedHeads, FuseRotaryEmbedding, FuseLayerNorm, FuseRMSNorm, FuseGeluErf, FuseGeluTanh]
ONNXRUNTIME = [LiftBatchedHeads, FuseMultiHeadAttention, FuseMultiQueryAttention, ShapeOfSplit, ShapeOfProjection,
               FusePackedAttention,
               GemmOfPermutedRows, FuseAttention4D, FuseGroupedQueryAttention, ShapeOfRepeatedHeads, FuseRotaryEmbedding,
               FuseRotaryEmbeddingContrib, FuseResidualLayerNorm, FuseSkipLayerNorm, FuseLayerNorm, FuseRMSNorm,
               FuseGeluErfContrib, FuseFastGelu, FuseBiasGelu, FuseFastGeluBias]
#: for optc's own lowering (`optc compile`): the standard ops, with masks that can mask a whole row (it computes
#: such a row as the spec says, where onnxruntime's Attention writes zeros)
OPTC = [LiftBatchedHeads, FuseAttentionAnyMask, GemmOfPermutedRows, FuseAttention4DAnyMask, *STANDARD[4:]]
RUNTIMES = ("standard", "onnxruntime", "optc")


def check_runtime(runtime: str) -> str:
    """`runtime` if it is one of RUNTIMES; else OptcError (one line)."""
    if runtime not in RUNTIMES:
        raise OptcError(f"unknown runtime '{runtime}' for the transformer fusions (use standard, onnxruntime or optc)")
    return runtime


def _uses_domain(model: Model, domain: str) -> bool:
    return any(n.domain == domain for g in model.graphs() for n in g)


@register_pass
@dataclass
class FuseTransformer(Pass):
    """Transformer fusions (attention, layer norms, Gelu) into standard ONNX ops or onnxruntime's contrib ops."""

    name: ClassVar[str] = "fuse-transformer"
    description: ClassVar[str] = ("transformer fusions: attention, LayerNorm / SkipLayerNorm / RMSNorm, Gelu / "
                                  "FastGelu / BiasGelu, as standard ONNX ops or onnxruntime contrib ops")
    option_help: ClassVar[dict[str, str]] = {
        "runtime": "standard (ONNX ops; the opset raised, up to 23, only where a fusion needs it and it is safe), "
                   "onnxruntime (com.microsoft contrib ops) or optc (standard ops for optc's own lowering)",
    }
    runtime: str = "standard"

    def __post_init__(self):
        check_runtime(self.runtime)

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        from ..passes.rule_pass import _run_sets

        had = MS in model.opset_imports
        key = opset_key(model)
        old = model.opset_imports.get(key)
        raise_to = TARGET if old is not None and old < TARGET and self._worth_raising(model, old) else None
        convert = raise_to is not None and upgrade_problem(model) is not None  # Reduce ops with attribute axes
        if self.runtime == "onnxruntime" and not had:
            self._set(model, ctx, MS, 1)
        if raise_to is not None:  # fuse as if at opset 23; settle_opset keeps what the new ops need
            self._set(model, ctx, key, raise_to)
            if convert:
                apply_rules(model, [ReduceAxesToInput], ctx, self.name)
        try:
            return _run_sets(model, ctx, [f"transformer-{self.runtime}"], self.name, True)
        finally:
            if raise_to is not None:
                self._set(model, ctx, key, settle_opset(model, old))
            if not had and MS in model.opset_imports and not _uses_domain(model, MS):
                del model.opset_imports[MS]
                ctx.opsets.pop(MS, None)

    def _worth_raising(self, model: Model, old: int) -> bool:
        """Whether to fuse at the raised opset: safe to raise, and, when the Reduce ops must change form for it,
        only if a trial on a copy makes an op that needs more than `old` (else the opset stays as it is)."""
        if upgrade_problem(model) is None:
            return True
        if upgrade_problem(model, convert_reduce=True) is not None:
            return False
        from ..pipelines import copy_model

        trial = copy_model(model)
        trial.opset_imports[opset_key(trial)] = TARGET
        trial.opset_imports.setdefault(MS, 1)
        tctx = PassContext(opsets=dict(trial.opset_imports))
        apply_rules(trial, [ReduceAxesToInput], tctx, self.name)
        from ..passes.rule_pass import _run_sets

        _run_sets(trial, tctx, [f"transformer-{self.runtime}"], self.name, True)
        return max([0] + [NEEDS.get(n.op_type, 0) for g in trial.graphs() for n in g
                          if n.domain in ("", "ai.onnx")]) > old

    @staticmethod
    def _set(model: Model, ctx: PassContext, domain: str, version: int) -> None:
        model.opset_imports[domain] = version
        ctx.opsets[domain] = version
