"""optc's own converters, one module per op family; `converters._register_builtin` imports them all."""
