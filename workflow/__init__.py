"""The workflow: evaluate (metrics, per-class accuracy against a baseline), and what composes passes with it."""

from .evaluate import evaluate

__all__ = ["evaluate"]
