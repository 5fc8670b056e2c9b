"""Byte sizes as people write them: `parse_bytes("1.5MB")` and `format_bytes(1572864)`.

Units are binary (KB = KiB = 1024 bytes, MB = 1024**2, GB = 1024**3), as onnxsim's `--tensor-size-threshold`
and most tools that talk about tensor sizes use them.
"""

from __future__ import annotations

import re

from .errors import OptcError

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | int, *, what: str = "size") -> int | None:
    """Bytes from `"1000"`, `"64KB"`, `"1.5 MiB"`, `"2G"`; `"none"`/`"unlimited"` give None (no limit).

    Raises OptcError (one line, naming `what`) for anything else, including negative sizes."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise OptcError(f"{what} must be 0 or more bytes, not {text}")
        return text
    if not isinstance(text, str):
        raise OptcError(f"{what} must be a size such as 1MB, not {text!r}")
    if text.strip().lower() in ("none", "unlimited"):
        return None
    m = _SIZE.match(text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise OptcError(f"{what} must be a size such as 1000, 64KB, 1.5MB, 2GB or 'none', not '{text}'")
    return int(float(m.group(1)) * _UNITS[unit])


def format_bytes(n: int | float) -> str:
    """`512 B`, `9.1 KB`, `489.5 MB`, `2.0 GB` (binary units)."""
    for unit in ("B", "KB", "MB"):
        if abs(n) < 1024:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
