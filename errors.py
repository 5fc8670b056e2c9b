"""Errors a user can cause. The CLI prints their one-line message and exits with code 2."""


class OptcError(Exception):
    """A user-facing error with a one-line message (bad path, invalid model, unsupported op or target)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class UnsupportedError(OptcError):
    """optc deliberately refuses to lower something (an op, an attribute value, a run-time input it cannot
    handle). The message names the op and the reason; the conformance sweep counts these as refusals, any
    other error as a failure of the back end."""
