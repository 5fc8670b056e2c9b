"""The public API documents itself: every function optc exports has a docstring that says what it returns and
which errors it raises (the standard for public docstrings)."""

from __future__ import annotations

import inspect

import optc
import pytest
from optc import runtime

PUBLIC = [(n, getattr(optc, n)) for n in optc.__all__ if callable(getattr(optc, n))
          and not isinstance(getattr(optc, n), type)] + [("runtime.load", runtime.load), ("runtime.Module", runtime.Module)]


@pytest.mark.parametrize("name, obj", PUBLIC, ids=[n for n, _ in PUBLIC])
def test_public_docstring_names_the_errors_it_raises(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert len(doc) > 80, f"optc.{name} has no real docstring"
    assert "OptcError" in doc or "raise" in doc.lower(), f"optc.{name}'s docstring does not say what it raises"
