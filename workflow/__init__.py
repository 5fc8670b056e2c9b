"""The workflow: evaluate (metrics, per-class accuracy against a baseline), and what composes passes with it."""

from .auto import AutoResult, auto
from .evaluate import evaluate
from .profile import Profile, ProfileEntry, profile
from .prune import PruneReport, prune

__all__ = ["AutoResult", "Profile", "ProfileEntry", "PruneReport", "auto", "evaluate", "profile", "prune"]
