"""Errors a user can cause. The CLI prints their one-line message and exits with code 2."""

__all__ = ["OptcError", "UnsupportedError", "first_line"]


#: a first line ending so announces what the next line says: the two are joined (onnxruntime's "Got invalid
#: dimensions for input: x for the following indices" / " index: 0 Got: 3 Expected: 4")
LEAD_INS = (":", "the following indices")


def first_line(exc: BaseException, last: bool = False) -> str:
    """The first (or, with `last`, the last) non-empty line of an exception's message, stripped (a first line
    that ends in one of `LEAD_INS` joined with the line after it); its type name when the message is empty. The
    one way optc shortens a library's multi-line error to a one-line message."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    if last:
        return lines[-1]
    return f"{lines[0]} {lines[1]}" if len(lines) > 1 and lines[0].endswith(LEAD_INS) else lines[0]


class OptcError(Exception):
    """A user-facing error with a one-line message (bad path, invalid model, unsupported op or target)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class UnsupportedError(OptcError):
    """optc deliberately refuses to lower something (an op, an attribute value, a run-time input it cannot
    handle). The message names the op and the reason; the conformance sweep counts these as refusals, any
    other error as a failure of the back end."""


def did_you_mean(name: str, known) -> str:
    """` (did you mean 'X'?)` for the known name closest to `name` (a case-insensitive prefix match first, then
    an abbreviation: `name`'s letters in order, `FuseConvBN` for `FuseConvBatchNorm`, then difflib's closest),
    or "" when nothing is close."""
    import difflib

    known = sorted(set(known))
    low = name.lower()
    prefixed = [k for k in known if k.lower().startswith(low)]
    lowered = {k.lower(): k for k in known}

    def abbreviates(k: str) -> bool:
        rest = iter(k.lower())
        return all(c in rest for c in low)

    abbrev = [k for k in known if abbreviates(k)]
    close = prefixed[:1] or abbrev[:1] or difflib.get_close_matches(name, known, n=1) or \
        [lowered[k] for k in difflib.get_close_matches(low, list(lowered), n=1)]
    return f" (did you mean '{close[0]}'?)" if close else ""
