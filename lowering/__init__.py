"""optc IR -> TVM Relax lowering: one op table keyed by (domain, op_type)."""

from .converters import converter, is_supported, lookup
from .relax_lowering import lower, signature, unsupported_ops

__all__ = ["converter", "is_supported", "lookup", "lower", "signature", "unsupported_ops"]
