"""Built-in passes. Importing this package registers them with the pass registry."""

from . import cse, dce, fold_constants, infer_shapes, interface, prune, rule_pass  # noqa: F401
from .cse import CommonSubexpressionElimination
from .dce import DeadCodeElimination
from .fold_constants import FoldConstants, make_folder
from .infer_shapes import InferShapes
from .rule_pass import RewritePass, available_rule_sets

__all__ = [
    "CommonSubexpressionElimination", "DeadCodeElimination", "FoldConstants", "InferShapes", "RewritePass",
    "available_rule_sets", "make_folder",
]
from ...quantization import float_precision, passes  # noqa: F401,E402  (register convert-float, insert-qdq, quantize-dynamic)
