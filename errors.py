"""Errors a user can cause. The CLI prints their one-line message and exits with code 2."""


class OptcError(Exception):
    """A user-facing error with a one-line message (bad path, invalid model, unsupported op or target)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
