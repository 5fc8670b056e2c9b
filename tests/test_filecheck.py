"""FileCheck-style rule tests: every `tests/filecheck/**/*.ir` file runs through `optc.rewrites.filecheck`,
plus tests of the harness itself (a check that must fail does fail, with a message that points at it)."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import pytest
from optc.ir.rewriter import Rewriter
from optc.rewrites.context import PassContext, PassResult
from optc.rewrites.filecheck import Check, CheckFailure, match_checks, parse_test, run_file, run_test
from optc.rewrites.pass_manager import Pass

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = sorted(glob.glob(os.path.join(HERE, "filecheck", "**", "*.ir"), recursive=True))


@pytest.mark.parametrize("path", FILES, ids=lambda p: os.path.relpath(p, os.path.join(HERE, "filecheck")))
def test_file(path):
    run_file(path)


def test_there_are_files():
    assert len(FILES) >= 20
