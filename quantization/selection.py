"""Which nodes a user means: labels for reports and the one matcher of `--exclude` names, shared by every
quantization mode."""

from __future__ import annotations

from collections.abc import Collection

from ..errors import OptcError
from ..ir.core import Model, Node

__all__ = ["check_names", "matches", "node_label"]


def node_label(node: Node) -> str:
    """The node's name, or for an unnamed node its op type and first output ("Conv -> y")."""
    if node.name:
        return node.name
    out = next((o.name for o in node.outputs if o is not None), "")
    return f"{node.op_type} -> {out}"


def matches(node: Node, names: Collection[str]) -> bool:
    """True when `names` names this node: its name or label, its op type, one of its outputs, or one of the user's
    nodes it was made from by a rewrite (`node.meta["from"]`: a Gemm fused from MatMul 'fc2' + Add matches
    'fc2')."""
    if not names:
        return False
    if node.name in names or node.op_type in names or node_label(node) in names:
        return True
    if any(o is not None and o.name in names for o in node.outputs):
        return True
    return any(n in names for n in (node.meta or {}).get("from", ()))


def check_names(models: Collection[Model], names: Collection[str]) -> None:
    """OptcError naming the first of `names` that matches no node name, op type or value of any of `models` (the
    model as given and as optimized: a typo in --exclude would otherwise quantize what the user meant to keep)."""
    known: set[str] = set()
    for model in models:
        for g in model.graphs():
            for n in g:
                known.update((n.name, n.op_type, node_label(n)))
                known.update(o.name for o in n.outputs if o is not None)
    for name in names:
        if name not in known:
            raise OptcError(f"--exclude '{name}' names no node, op type or output of the model")
