"""Run two models on the same inputs and compare their outputs: `optc.verify` and the pieces `optc verify`,
`optc compare`, `optc run` and the bisection share (the two sides, their input signature, the inputs' checks).

A side is an ONNX file run on onnxruntime (graph optimizations off: the model as written) or an artifact of
`optc compile` run with `optc.runtime`. Inputs come from an .npz file or a mapping, checked against the
signature both sides accept, or are random with the right shapes and dtypes (symbolic dims 1 unless `dims`
says otherwise). The element-wise rules live in `optc.tools.compare` (`compare`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import OptcError, first_line
from ..inputs import InputSpec, check_input_names, random_inputs, session_input_specs
from ..ortsession import session
from ..tools.compare import Comparison, compare_outputs

ARTIFACT_SUFFIXES = (".so", ".dylib", ".dll")


def _session(path: str):
    from ..ir import load

    load(path)  # the same one-line errors as every other subcommand for a bad file, before onnxruntime sees it
    # Compare the models as written: onnxruntime's own graph optimizations would blur the comparison.
    return session(path, optimize=False)


# -- the two sides ---------------------------------------------------------------------------------------------


@dataclass
class Side:
    """A model to run: an ONNX file on onnxruntime or an optc artifact (loaded on the first run, so that input
    checks read only its metadata and fail fast)."""

    path: str
    kind: str  # "onnx" | "artifact"
    inputs: list[InputSpec]
    outputs: list[str]
    runner: object = field(repr=False, default=None)
    target: str | None = None

    @property
    def description(self) -> str:
        if self.kind == "artifact":
            return f"{self.path} (optc artifact, {self.target or 'cpu'})"
        return f"{self.path} (onnxruntime)"

    def _module(self):
        if self.runner is None:
            from .. import runtime

            try:
                self.runner = runtime.load(self.path)
            except OptcError:
                raise
            except Exception as exc:
                raise OptcError(f"cannot load artifact '{self.path}': {first_line(exc, last=True)}") from None
        return self.runner

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {s.name: feeds[s.name] for s in self.inputs}
        if self.kind == "onnx":
            try:
                values = self.runner.run(None, feeds)
            except Exception as exc:
                raise OptcError(f"onnxruntime failed to run '{self.path}': {first_line(exc)}") from None
            return dict(zip(self.outputs, values, strict=False))
        module = self._module()
        try:
            return module.run(feeds)
        except OptcError as exc:
            raise OptcError(f"'{self.path}': {exc}") from None
        except Exception as exc:
            raise OptcError(f"the artifact '{self.path}' failed to run: {first_line(exc, last=True)}") from None


def is_artifact(path: str) -> bool:
    """An optc artifact: a library suffix (.so, .dylib, .dll) or a metadata file `PATH.json` beside it."""
    from ..codegen.artifact import metadata_path

    return Path(path).suffix.lower() in ARTIFACT_SUFFIXES or metadata_path(path).is_file()


def is_artifact_path(path: str) -> bool:
    """Whether `path` names an artifact (see `is_artifact`); OptcError when it names an artifact's metadata
    file (`lib.so.json`) instead of its library."""
    lib = path[: -len(".json")] if path.endswith(".json") else None
    if lib and os.path.isfile(lib) and is_artifact(lib):
        raise OptcError(f"'{path}' is the metadata of an artifact; give the library '{lib}'")
    return is_artifact(path)


def open_side(path: str) -> Side:
    """`path` as an artifact (see `is_artifact_path`; its metadata is read now, the library on the first run) or
    else as an ONNX model on onnxruntime; OptcError when it is neither."""
    if is_artifact_path(path):
        from ..codegen.artifact import read_metadata

        meta = read_metadata(path)
        specs = []
        try:
            for spec in meta["inputs"]:
                try:
                    dtype = np.dtype(spec["dtype"])
                except TypeError:
                    dtype = None
                shape = tuple(d if isinstance(d, (int, str)) else None for d in spec["shape"])
                specs.append(InputSpec(str(spec["name"]), dtype, shape, str(spec["dtype"])))
            outputs = [str(o["name"]) for o in meta["outputs"]]
        except (KeyError, TypeError) as exc:
            raise OptcError(f"artifact metadata of '{path}' is incomplete: {exc!r}") from None
        return Side(path, "artifact", specs, outputs, None, str(meta.get("target", "cpu")))
    session = _session(path)
    return Side(path, "onnx", session_input_specs(session), [o.name for o in session.get_outputs()], session)


def merge_specs(a: Side, b: Side, dims: dict[str, int] | None = None) -> list[InputSpec]:
    """One signature both sides accept: names must agree, known dtypes must agree, ranks and fixed dims must
    agree; a dim fixed on one side and symbolic on the other takes the fixed value; a dim with two symbolic
    names takes the one `dims` gives a value."""
    dims = dims or {}
    names_a = [s.name for s in a.inputs]
    names_b = [s.name for s in b.inputs]
    if sorted(names_a) != sorted(names_b):
        raise OptcError(f"the models have different inputs: {names_a} vs {names_b}")
    by_b = {s.name: s for s in b.inputs}
    merged = []
    for sa in a.inputs:
        sb = by_b[sa.name]
        if sa.dtype is not None and sb.dtype is not None and sa.dtype != sb.dtype:
            raise OptcError(f"input '{sa.name}' is {sa.dtype} in '{a.path}' but {sb.dtype} in '{b.path}'")
        dtype = sa.dtype if sa.dtype is not None else sb.dtype
        if len(sa.shape) != len(sb.shape):
            raise OptcError(f"input '{sa.name}' is {sa.describe()} in '{a.path}' but {sb.describe()} in '{b.path}'")
        shape: list[int | str | None] = []
        for da, db in zip(sa.shape, sb.shape, strict=True):
            if isinstance(da, int) and isinstance(db, int) and da != db:
                raise OptcError(f"input '{sa.name}' is {sa.describe()} in '{a.path}' but {sb.describe()} "
                                f"in '{b.path}'")
            if isinstance(db, int) or da is None or (
                    isinstance(da, str) and isinstance(db, str) and db in dims and da not in dims):
                da = db
            shape.append(da)
        merged.append(InputSpec(sa.name, dtype, tuple(shape), sa.type_text or sb.type_text))
    return merged


def check_inputs(path: str, arrays: dict[str, np.ndarray], specs: list[InputSpec],
                  takes: str = "the models take") -> dict[str, np.ndarray]:
    """`arrays` (read from `path`) checked against `specs`: the same names (`check_input_names`), dtypes, ranks
    and fixed dims; OptcError "'path': input 'x' is float64 [1,3]; <takes> float32 [N,3]" otherwise."""
    check_input_names(arrays, [s.name for s in specs], f"'{path}'")
    feeds = {}
    for spec in specs:
        arr = arrays[spec.name]
        ok = (spec.dtype is None or arr.dtype == spec.dtype) and arr.ndim == len(spec.shape) and all(
            not isinstance(d, int) or d == n for d, n in zip(spec.shape, arr.shape, strict=True))
        if not ok:
            have = f"{arr.dtype} [{','.join(map(str, arr.shape))}]"
            raise OptcError(f"'{path}': input '{spec.name}' is {have}; {takes} {spec.describe()}")
        feeds[spec.name] = arr
    return feeds


def check_dims(dims: dict[str, int], specs: list[InputSpec], a: Side, b: Side) -> None:
    known = {d for side in (a, b) for s in side.inputs for d in s.shape if isinstance(d, str)}
    for name in dims:
        if name not in known:
            have = ", ".join(sorted(known)) or "none"
            raise OptcError(f"--dim {name}: no input has a dimension named '{name}' (symbolic dims: {have})")


# -- comparing ---------------------------------------------------------------------------------------------------


def check_tolerances(rtol: float, atol: float) -> None:
    """OptcError unless both tolerances are finite and not negative."""
    if rtol < 0 or atol < 0 or not np.isfinite(rtol) or not np.isfinite(atol):
        raise OptcError(f"tolerances (rtol, atol) must be finite and not negative, got rtol={rtol:g}, atol={atol:g}")


def read_inputs(inputs: str | os.PathLike | Mapping[str, np.ndarray] | None
                ) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """(arrays, where they came from) of an .npz path or a mapping {name: array}; (None, None) for None.
    OptcError for an unreadable file or anything else."""
    if inputs is None:
        return None, None
    if isinstance(inputs, str | os.PathLike):
        from ..quantization.data import read_npz

        return read_npz(os.fspath(inputs)), os.fspath(inputs)
    if not isinstance(inputs, Mapping):
        raise OptcError(f"inputs must be a path to an .npz file or a mapping {{name: array}}, not "
                        f"{type(inputs).__name__}")
    return {k: np.asarray(v) for k, v in inputs.items()}, "given arrays"


def prepare_feeds(a, b, arrays: Mapping[str, np.ndarray] | None, source: str | None,
                  dims: Mapping[str, int] | None = None, seed: int = 0) -> tuple[dict[str, np.ndarray], dict]:
    """The inputs both sides get (`a`, `b`: anything with `path` and `inputs`, as `Side` and `optc compare`'s
    endpoints): `arrays` (from `source`) checked against the signature both accept, or random ones (`seed`;
    symbolic dims from `dims`, else 1); and `info`: `source` (the path, "given arrays" or "random"), `seed`,
    and per input its dtype and shape (`arrays`). OptcError when the models' inputs disagree or the arrays do
    not fit them."""
    specs = merge_specs(a, b, dims)
    if arrays is not None:
        feeds = check_inputs(source or "inputs", dict(arrays), specs)
        info: dict = {"source": source}
    else:
        check_dims(dims or {}, specs, a, b)
        feeds = random_inputs(specs, dims=dims, seed=seed)
        info = {"source": "random", "seed": seed}
    info["arrays"] = {n: {"dtype": str(v.dtype), "shape": list(v.shape)} for n, v in feeds.items()}
    return feeds, info


def verify_sides(path_a: str | os.PathLike, path_b: str | os.PathLike, *,
                 inputs: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
                 dims: Mapping[str, int] | None = None, seed: int = 0, rtol: float = 1e-4, atol: float = 1e-5,
                 strict_zeros: bool = False) -> tuple[Comparison, Side, Side, dict]:
    """`verify`, also returning the two sides and where the inputs came from: `(Comparison, side a, side b,
    info)`; `info` holds `source` (the .npz path, "given arrays" or "random"), `seed` and per input its dtype and
    shape (`arrays`)."""
    check_tolerances(rtol, atol)
    arrays, source = read_inputs(inputs)
    a = open_side(os.fspath(path_a))
    b = open_side(os.fspath(path_b))
    feeds, info = prepare_feeds(a, b, arrays, source, dims, seed)
    outs_a = a.run(feeds)
    outs_b = b.run(feeds)
    comp = compare_outputs(outs_a, outs_b, rtol, atol, strict_zeros=strict_zeros)
    return comp, a, b, info


def verify(a: str | os.PathLike, b: str | os.PathLike, inputs: str | os.PathLike | Mapping[str, np.ndarray] | None
           = None, *, dims: Mapping[str, int] | None = None, seed: int = 0, rtol: float = 1e-4, atol: float = 1e-5,
           strict_zeros: bool = False) -> Comparison:
    """`optc.verify`: run `a` and `b` (each an ONNX file, run on onnxruntime with its graph optimizations off, or
    an artifact of `optc compile`) on the same inputs and compare every output, as `optc verify` does.

    `inputs`: an .npz path or `{name: array}` (exactly the models' input names; dtypes and fixed dims checked),
    or None for random inputs (`optc.inputs.random_inputs`, `seed`; symbolic dims from `dims`, else 1).
    Element rule: |a - b| <= atol + rtol * max(|a|, |b|) for floats (NaN equals only NaN, an infinity only the
    same infinity), exact for integers and booleans. Returns the `Comparison` (`.equal`, per output `.outputs`,
    `.to_json()`). Raises OptcError (one line) for a bad file, models with different inputs, inputs that do not
    fit them, or a model that fails to run.
    """
    return verify_sides(a, b, inputs=inputs, dims=dims, seed=seed, rtol=rtol, atol=atol,
                        strict_zeros=strict_zeros)[0]
