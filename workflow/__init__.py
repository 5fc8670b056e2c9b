"""The workflow: evaluate (metrics, per-class accuracy against a baseline), and what composes passes with it."""

from .evaluate import evaluate
from .profile import Profile, ProfileEntry, profile

__all__ = ["Profile", "ProfileEntry", "evaluate", "profile"]
