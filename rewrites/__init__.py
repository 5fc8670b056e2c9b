"""Rewrites: the pass infrastructure, the built-in passes and the -O0..-O3 pipelines (re-exports)."""

from .context import PassContext, PassResult, RewriteBudget, RewriteRecord
from .pass_manager import (
    FixedPoint,
    Instrument,
    Pass,
    PassManager,
    Pipeline,
    PipelineReport,
    PrintIRAfter,
    TimePasses,
    VerifyEach,
    create_pass,
    parse_pipeline,
    register_pass,
    registered_passes,
)
from .pipelines import build_pipeline, copy_model, level_pipeline, level_spec, optimize, run_pipeline

__all__ = [
    "FixedPoint", "Instrument", "build_pipeline", "copy_model", "Pass", "PassContext", "PassManager", "PassResult", "Pipeline", "PipelineReport",
    "PrintIRAfter", "RewriteBudget", "RewriteRecord", "TimePasses", "VerifyEach", "create_pass", "level_pipeline",
    "level_spec", "optimize", "parse_pipeline", "register_pass", "registered_passes", "run_pipeline",
]
