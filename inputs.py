"""A model's inputs: what each one takes (`InputSpec`), the one check of a feed's names against them, and the one
random-inputs generator (used by `optc verify`, `optc bench`, `optc run`, the Python API and the tests).

Reading feeds from an `.npz` file is `optc.quantization.data.read_npz` (the one `.npz` reader).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import OptcError

__all__ = ["InputSpec", "check_input_names", "random_inputs", "session_input_specs"]

# onnxruntime's type strings for the element types numpy holds
_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint64)": np.uint64, "tensor(uint32)": np.uint32, "tensor(uint16)": np.uint16,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def _fmt_dims(shape: Sequence[int | str | None]) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


@dataclass(frozen=True)
class InputSpec:
    """What a model expects of one graph input: its numpy dtype (None when numpy has none, e.g. a sequence or a
    string tensor; `type_text` then says what the model calls the type) and its shape (an int dim is fixed, a str
    is a symbolic dim, None an unknown one)."""

    name: str
    dtype: np.dtype | None
    shape: tuple[int | str | None, ...]
    type_text: str = ""

    def describe(self) -> str:
        """E.g. `float32 [N,64]`."""
        return f"{self.dtype if self.dtype is not None else self.type_text} {_fmt_dims(self.shape)}"


def session_input_specs(session) -> list[InputSpec]:
    """The inputs of an onnxruntime `InferenceSession`, in order (negative or missing dims are unknown)."""
    specs = []
    for inp in session.get_inputs():
        dtype = _ORT_TYPES.get(inp.type)
        shape = tuple(d if isinstance(d, (int, str)) and not (isinstance(d, int) and d < 0) else None
                      for d in (inp.shape or []))
        specs.append(InputSpec(inp.name, np.dtype(dtype) if dtype is not None else None, shape, inp.type))
    return specs


def check_input_names(given: Iterable[str], expected: Sequence[str], where: str | None = None) -> None:
    """Every name in `given` must be one of `expected` and every expected name must be given.

    The one check of a feed's keys, so every command rejects a stray or missing input alike. Raises OptcError:
    "unknown input 'k' (expected inputs: a, b)" or "missing input 'a' (...)", prefixed by "`where`: " if given.
    """
    given = list(given)
    names = ", ".join(expected) or "none"
    prefix = f"{where}: " if where else ""
    unknown = [k for k in given if k not in expected]
    if unknown:
        raise OptcError(f"{prefix}unknown input '{unknown[0]}' (expected inputs: {names})")
    missing = [k for k in expected if k not in given]
    if missing:
        raise OptcError(f"{prefix}missing input '{missing[0]}' (expected inputs: {names})")


def random_inputs(specs: Sequence[InputSpec], *, dims: Mapping[str, int] | None = None, seed: int = 0,
                  default_dim: int = 1, float_range: tuple[float, float] | None = (-1.0, 1.0),
                  int_range: tuple[int, int] | None = (0, 2)) -> dict[str, np.ndarray]:
    """Random arrays for `specs`, by name, in order, from `numpy.random.default_rng(seed)`.

    Shapes: a fixed dim as given; a symbolic dim from `dims` (`default_dim` when not there); an unknown dim
    `default_dim`. Floats: uniform in `float_range` (default [-1, 1)), standard normal when it is None.
    Integers: uniform in [low, high) of `int_range`; the default {0, 1} is valid as attention masks, token ids and
    indices (a dynamo-exported BERT gathers at `mask.sum(-1) - 1`, which larger values push out of range); None
    gives [-5, 6) for signed and [0, 10) for unsigned types. Booleans: fair coin flips.
    Raises OptcError when an input's type is not a numeric or boolean tensor (its values must then be given), and
    when the arrays would not fit in the memory available now (a `--dim` typo such as N=99999999999).
    """
    import psutil

    rng = np.random.default_rng(seed)
    dims = dims or {}
    feeds: dict[str, np.ndarray] = {}
    shapes = {}
    for spec in specs:
        dtype = spec.dtype
        if dtype is None or dtype.kind not in "biuf":
            raise OptcError(f"input '{spec.name}' has type {spec.type_text or dtype}; random values cannot be "
                            "made for it, give its values (--inputs)")
        shapes[spec.name] = [d if isinstance(d, int) else dims.get(d, default_dim) if isinstance(d, str)
                             else default_dim for d in spec.shape]
    # generated in float64/int64, then cast: 8 bytes an element at the peak
    need = sum(8 * int(np.prod(s, dtype=np.float64)) for s in shapes.values())
    if need > psutil.virtual_memory().available:
        raise OptcError(f"random inputs of {need / 2**30:.1f} GiB do not fit in the memory available "
                        f"({psutil.virtual_memory().available / 2**30:.1f} GiB); check the sizes given to the dims "
                        "(--dim, --input-shape)")
    for spec in specs:
        dtype = spec.dtype
        shape = shapes[spec.name]
        if dtype.kind == "f":
            arr = (rng.standard_normal(shape) if float_range is None else rng.uniform(*float_range, size=shape))
        elif dtype.kind == "b":
            arr = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            low, high = int_range or ((-5, 6) if dtype.kind == "i" else (0, 10))
            arr = rng.integers(low, high, size=shape)
        feeds[spec.name] = np.asarray(arr).astype(dtype)
    return feeds
