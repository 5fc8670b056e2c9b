"""The nine `light_*.onnx` models shipped inside onnx (real CNN topologies whose weights are made by
ConstantOfShape) give BIT-IDENTICAL onnxruntime outputs before and after a file round trip through optc
(`optc.load` -> `optc.save`, and `optc convert` on the command line), and the files are equal at the proto level.

Inputs are those onnx's own backend runner feeds these models (`arange(n) / n`, whose expected outputs ship as
`light_*_output_0.pb` beside the models), plus one seeded random input.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import numpy as np
import onnx
import optc
import pytest

from .conftest import canonical_bytes, feed_names, mismatch, run_ort

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
LIGHT_MODELS = sorted(glob.glob(os.path.join(LIGHT_DIR, "light_*.onnx")))


def test_the_nine_models_are_there():
    assert len(LIGHT_MODELS) == 9, LIGHT_MODELS


def _inputs(model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    """The onnx backend runner's dummy input (arange / n) and a seeded random one, for every fed input."""
    by_name = {i.name: i for i in model.graph.input}
    dummy, rand = {}, {}
    rng = np.random.default_rng(0)
    for name in feed_names(model):
        tt = by_name[name].type.tensor_type
        assert tt.elem_type == onnx.TensorProto.FLOAT
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim)
        n = int(np.prod(shape))
        dummy[name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
        rand[name] = rng.standard_normal(shape, dtype=np.float32)
    return [dummy, rand]


def _assert_bit_identical(before: list, after: list, label: str) -> None:
    assert len(before) == len(after), label
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        assert b.dtype == a.dtype and b.shape == a.shape, f"{label}: output {i} is {a.dtype}{a.shape}"
        assert b.tobytes() == a.tobytes(), f"{label}: output {i} differs in {int(np.sum(b != a))} values"


@pytest.mark.parametrize("path", LIGHT_MODELS, ids=lambda p: os.path.basename(p)[6:-5])
def test_light_model_round_trip_is_bit_identical(path, tmp_path):
    original_bytes = open(path, "rb").read()
    original = onnx.load_from_string(original_bytes)
    feeds = _inputs(original)
    before = [run_ort(original_bytes, f) for f in feeds]

    # the expected output onnx ships for the dummy input (the runner's tolerances): the baseline is sane
    expected = onnx.numpy_helper.to_array(onnx.load_tensor(path[: -len(".onnx")] + "_output_0.pb"))
    assert mismatch(before[0][0], expected, rtol=1e-3, atol=1e-7) is None

    api_out = tmp_path / "api.onnx"
    optc.save(optc.load(path), api_out)
    ext_out = tmp_path / "ext.onnx"  # every initializer in ext.onnx.data, then inlined again by onnx.load
    optc.save(optc.load(path), ext_out, external_data=True, size_threshold=0)
    cli_out = tmp_path / "cli.onnx"
    proc = subprocess.run([sys.executable, "-m", "optc.tools.cli", "convert", path, "-o", str(cli_out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert sorted(os.listdir(tmp_path)) == ["api.onnx", "cli.onnx", "ext.onnx", "ext.onnx.data"]  # no temp files

    for label, out in (("optc.save", api_out), ("optc convert", cli_out), ("optc.save, external data", ext_out)):
        converted = onnx.load(str(out))
        if out == ext_out:
            assert all(t.data_location == onnx.TensorProto.DEFAULT for t in converted.graph.initializer)
            assert all(t.HasField("raw_data") for t in original.graph.initializer)  # so the bytes are the same
        assert canonical_bytes(converted) == canonical_bytes(original), f"{label}: the proto changed"
        # (the external-data copy runs inlined: ORT's shape inference cannot read ConstantOfShape's external shape)
        after = [run_ort(converted if out == ext_out else str(out), f) for f in feeds]
        for f, (b, a) in enumerate(zip(before, after, strict=True)):
            _assert_bit_identical(b, a, f"{label}, input set {f}")
    assert open(path, "rb").read() == original_bytes  # the input is never modified
