"""TVM back end: target presets, build with default schedules, MetaSchedule tuning, artifacts."""

from .artifact import export, read_metadata, signature_from_relax
from .build import build
from .targets import PRESETS, resolve_target
from .tuning import tune

__all__ = ["PRESETS", "build", "export", "read_metadata", "resolve_target", "signature_from_relax", "tune"]
