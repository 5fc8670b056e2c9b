"""External data stays inside the model's directory, in bounds, and of its tensor's size.

Each bad model is refused by `optc.load` with a one-line `OptcError`, and by `optc convert` with exactly one
line on stderr starting `optc: error:`, exit code 2, no output file and the input directory untouched. The good
ones load with the right values, symbolic links that stay inside the model's directory included.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper, numpy_helper

N = 4  # elements of each weight (float32: 16 bytes)
W1 = np.arange(N, dtype=np.float32) + 1
W2 = np.arange(N, dtype=np.float32) * 10
SECRET = np.full(2 * N, 7.0, np.float32)  # the bytes of a file outside the model's directory


def _ext(name: str, location: str, offset="0", length="16", dims=(N,)) -> TensorProto:
    """A float tensor whose data is at `location` (entries written by hand: any value, valid or not)."""
    t = TensorProto()
    t.name, t.data_type = name, TensorProto.FLOAT
    t.dims.extend(dims)
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", offset), ("length", length)):
        if v is not None:
            e = t.external_data.add()
            e.key, e.value = k, str(v)
    return t


def _model(initializers=(), constant: TensorProto | None = None) -> onnx.ModelProto:
    """y = x + w1 (+ w2 ...) (+ a Constant's value): every weight is read."""
    nodes, prev = [], "x"
    if constant is not None:
        nodes.append(helper.make_node("Constant", [], ["c"], value=constant))
    names = [t.name for t in initializers] + (["c"] if constant is not None else [])
    for k, name in enumerate(names):
        out = "y" if k == len(names) - 1 else f"h{k}"
        nodes.append(helper.make_node("Add", [prev, name], [out]))
        prev = out
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [N]) for n in ("x", "y")]
    g = helper.make_graph(nodes, "g", vi[:1], vi[1:], initializer=list(initializers))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return m


def _write(path, data: bytes | np.ndarray | onnx.ModelProto) -> str:
    if isinstance(data, onnx.ModelProto):
        data = data.SerializeToString()
    elif isinstance(data, np.ndarray):
        data = data.tobytes()
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def _model_dir(tmp_path, data: bytes | np.ndarray | None = None):
    """`tmp_path/model/` (with `weights.bin` = `data`, if given) and a secret file beside it, outside."""
    d = tmp_path / "model"
    d.mkdir()
    if data is not None:
        _write(d / "weights.bin", data)
    _write(tmp_path / "secret.bin", SECRET)
    return d


# -- the bad models: each returns the path of a model that must be refused -------------------------------------


def _symlink_file_outside(tmp_path):
    d = _model_dir(tmp_path)
    os.symlink("../secret.bin", d / "weights.bin")
    return _write(d / "m.onnx", _model([_ext("w1", "weights.bin")]))


def _symlink_dir_outside(tmp_path):
    d = _model_dir(tmp_path)
    os.symlink("..", d / "up")  # a linked directory on the way: up/secret.bin is tmp_path/secret.bin
    return _write(d / "m.onnx", _model([_ext("w1", "up/secret.bin")]))


def _symlink_in_linked_model_dir_outside(tmp_path):
    """The model's directory is reached through a link; its data links out of the real directory."""
    d = _model_dir(tmp_path)
    os.symlink("../secret.bin", d / "weights.bin")
    _write(d / "m.onnx", _model([_ext("w1", "weights.bin")]))
    os.symlink(d, tmp_path / "linked")
    return str(tmp_path / "linked" / "m.onnx")


def _linked_model_data_not_beside_it(tmp_path):
    """onnxruntime's own refused case: model and data linked from a snapshot directory to two other ones."""
    for sub in ("snapshot", "model_blobs", "data_blobs"):
        (tmp_path / sub).mkdir()
    _write(tmp_path / "model_blobs" / "m", _model([_ext("w1", "weights.bin")]))
    _write(tmp_path / "data_blobs" / "w", W1)
    os.symlink(tmp_path / "model_blobs" / "m", tmp_path / "snapshot" / "m.onnx")
    os.symlink(tmp_path / "data_blobs" / "w", tmp_path / "snapshot" / "weights.bin")
    return str(tmp_path / "snapshot" / "m.onnx")


def _dotdot_location(tmp_path):
    d = _model_dir(tmp_path)
    return _write(d / "m.onnx", _model([_ext("w1", "../secret.bin")]))


def _absolute_location(tmp_path):
    d = _model_dir(tmp_path, W1)
    return _write(d / "m.onnx", _model([_ext("w1", str(d / "weights.bin"))]))


def _offset_past_end(tmp_path):
    d = _model_dir(tmp_path, W1)
    return _write(d / "m.onnx", _model([_ext("w1", "weights.bin", offset="32")]))


def _length_past_end(tmp_path):
    d = _model_dir(tmp_path, W1)
    return _write(d / "m.onnx", _model([_ext("w1", "weights.bin", offset="8", length="16")]))


def _length_not_the_shape(tmp_path):
    d = _model_dir(tmp_path, np.concatenate([W1, W2]))
    return _write(d / "m.onnx", _model([_ext("w1", "weights.bin", length="20")]))


def _negative_offset(tmp_path):
    d = _model_dir(tmp_path, W1)
    return _write(d / "m.onnx", _model([_ext("w1", "weights.bin", offset="-4")]))


def _fractional_length(tmp_path):
    d = _model_dir(tmp_path, W1)
    return _write(d / "m.onnx", _model([_ext("w1", "weights.bin", length="16.0")]))


def _non_integer_offset(tmp_path):
    d = _model_dir(tmp_path, W1)
    return _write(d / "m.onnx", _model([_ext("w1", "weights.bin", offset="0x0")]))


def _overlapping_ranges(tmp_path):
    d = _model_dir(tmp_path, np.concatenate([W1, W2]))
    return _write(d / "m.onnx", _model([_ext("w1", "weights.bin", "0"), _ext("w2", "weights.bin", "8")]))


def _overlapping_ranges_through_a_link(tmp_path):
    """The same file under two names: the ranges are compared in the resolved file."""
    d = _model_dir(tmp_path, np.concatenate([W1, W2]))
    os.symlink("weights.bin", d / "alias.bin")
    return _write(d / "m.onnx", _model([_ext("w1", "weights.bin", "0"), _ext("w2", "alias.bin", "12")]))


def _attribute_symlink_outside(tmp_path):
    d = _model_dir(tmp_path)
    os.symlink("../secret.bin", d / "constant.bin")
    return _write(d / "m.onnx", _model(constant=_ext("", "constant.bin")))


def _attribute_symlink_dir_outside(tmp_path):
    d = _model_dir(tmp_path)
    os.symlink("..", d / "up")
    return _write(d / "m.onnx", _model(constant=_ext("", "up/secret.bin")))


def _attribute_length_past_end(tmp_path):
    d = _model_dir(tmp_path, W1)
    return _write(d / "m.onnx", _model(constant=_ext("", "weights.bin", offset="4")))


def _attribute_length_not_the_shape(tmp_path):
    d = _model_dir(tmp_path, np.concatenate([W1, W2]))
    return _write(d / "m.onnx", _model(constant=_ext("", "weights.bin", length="12")))


def _attribute_overlaps_an_initializer(tmp_path):
    d = _model_dir(tmp_path, np.concatenate([W1, W2]))
    return _write(d / "m.onnx", _model([_ext("w1", "weights.bin", "0")], constant=_ext("", "weights.bin", "4")))


BAD = {f.__name__[1:]: f for f in (
    _symlink_file_outside, _symlink_dir_outside, _symlink_in_linked_model_dir_outside,
    _linked_model_data_not_beside_it, _dotdot_location, _absolute_location, _offset_past_end, _length_past_end,
    _length_not_the_shape, _negative_offset, _fractional_length, _non_integer_offset, _overlapping_ranges,
    _overlapping_ranges_through_a_link, _attribute_symlink_outside, _attribute_symlink_dir_outside,
    _attribute_length_past_end, _attribute_length_not_the_shape, _attribute_overlaps_an_initializer,
)}

# What each refusal's message says (a word or two of it).
EXPECTED = {
    "symlink_file_outside": "outside the model's directory", "symlink_dir_outside": "outside the model's directory",
    "symlink_in_linked_model_dir_outside": "outside the model's directory",
    "linked_model_data_not_beside_it": "outside the model's directory",
    "dotdot_location": "outside the model's directory", "absolute_location": "absolute path",
    "offset_past_end": "needs bytes 32..48", "length_past_end": "needs bytes 8..24",
    "length_not_the_shape": "has length 20", "negative_offset": "not a non-negative integer",
    "fractional_length": "not a non-negative integer", "non_integer_offset": "not a non-negative integer",
    "overlapping_ranges": "overlaps", "overlapping_ranges_through_a_link": "overlaps",
    "attribute_symlink_outside": "outside the model's directory",
    "attribute_symlink_dir_outside": "outside the model's directory",
    "attribute_length_past_end": "needs bytes 4..20", "attribute_length_not_the_shape": "has length 12",
    "attribute_overlaps_an_initializer": "overlaps",
}


def _snapshot(root) -> dict[str, bytes | str]:
    """Every file and link under `root` (links not followed): to check nothing was modified or added."""
    state: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                state[p] = "-> " + os.readlink(p)
            elif os.path.isfile(p):
                state[p] = open(p, "rb").read()
    return state


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "optc.tools.cli", *argv], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OPTC_DEBUG": ""})


@pytest.mark.parametrize("bad", list(BAD))
def test_api_refuses(bad, tmp_path):
    model = BAD[bad](tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(optc.OptcError) as info:
        optc.load(model)
    message = str(info.value)
    assert "\n" not in message and EXPECTED[bad] in message, message
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("bad", list(BAD))
def test_cli_convert_refuses(bad, tmp_path):
    model = BAD[bad](tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = _snapshot(tmp_path)
    proc = _cli("convert", model, "-o", str(out_dir / "out.onnx"))
    where = f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}"
    lines = proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr + proc.stdout, where
    assert len(lines) == 1 and lines[0].startswith("optc: error: "), where
    assert EXPECTED[bad] in lines[0], where
    assert proc.returncode == 2, where
    assert not (out_dir / "out.onnx").exists() and os.listdir(out_dir) == [], where  # no output, no temporary
    assert _snapshot(tmp_path) == before, where  # the input, its data and its directory untouched


# -- the good models --------------------------------------------------------------------------------------------


def _values(model: optc.Model) -> dict[str, np.ndarray]:
    """Initializers' and Constants' values, by name (a Constant by its output)."""
    out = {k: np.asarray(v.const.numpy()) for k, v in model.graph.initializers.items()}
    for node in model.graph:
        if node.op_type == "Constant":
            out[node.output.name] = np.asarray(node.attr("value").numpy())
    return out


def _convert_and_check(model_path: str, expected: dict[str, np.ndarray], tmp_path) -> None:
    """`optc convert` succeeds, and the output (self-contained or not) holds the expected values."""
    out = tmp_path / "converted" / "out.onnx"
    out.parent.mkdir()
    proc = _cli("convert", model_path, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    got = _values(optc.load(out))
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        np.testing.assert_array_equal(got[k], v)


def test_valid_external_data(tmp_path):
    """A model saved by onnx with all its weights (and a Constant's value) in one external file."""
    d = tmp_path / "model"
    d.mkdir()
    m = _model([numpy_helper.from_array(W1, "w1"), numpy_helper.from_array(W2, "w2")],
               constant=numpy_helper.from_array(W1 * 3, ""))
    onnx.save(m, d / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0, convert_attribute=True)
    saved = onnx.load(d / "m.onnx", load_external_data=False)
    assert saved.graph.node[0].attribute[0].t.data_location == TensorProto.EXTERNAL
    before = _snapshot(tmp_path)
    expected = {"w1": W1, "w2": W2, "c": W1 * 3}
    for k, v in expected.items():
        np.testing.assert_array_equal(_values(optc.load(d / "m.onnx"))[k], v)
    _convert_and_check(str(d / "m.onnx"), expected, tmp_path)
    assert {k: v for k, v in _snapshot(tmp_path).items() if "converted" not in k} == before


def test_symlink_inside_the_directory(tmp_path):
    """A link to a file in the model's directory (through a linked sub-directory, too) is followed."""
    d = _model_dir(tmp_path, np.concatenate([W1, W2]))
    (d / "blobs").mkdir()
    _write(d / "blobs" / "w3", W1 * 5)
    os.symlink("weights.bin", d / "alias.bin")
    os.symlink("blobs", d / "linked_blobs")
    m = _model([_ext("w1", "alias.bin", "0"), _ext("w2", "alias.bin", "16"), _ext("w3", "linked_blobs/w3")])
    path = _write(d / "m.onnx", m)
    expected = {"w1": W1, "w2": W2, "w3": W1 * 5}
    got = _values(optc.load(path))
    for k, v in expected.items():
        np.testing.assert_array_equal(got[k], v)
    _convert_and_check(path, expected, tmp_path)


def test_attribute_symlink_inside_the_directory(tmp_path):
    d = _model_dir(tmp_path, W2)
    os.symlink("weights.bin", d / "constant.bin")
    path = _write(d / "m.onnx", _model(constant=_ext("", "constant.bin")))
    np.testing.assert_array_equal(_values(optc.load(path))["c"], W2)
    _convert_and_check(path, {"c": W2}, tmp_path)


def test_model_directory_reached_through_a_link(tmp_path):
    """The model's own directory is a link: its data, in the real directory, is inside."""
    d = _model_dir(tmp_path, W1)
    _write(d / "m.onnx", _model([_ext("w1", "weights.bin")]))
    os.symlink(d, tmp_path / "linked")
    path = str(tmp_path / "linked" / "m.onnx")
    np.testing.assert_array_equal(_values(optc.load(path))["w1"], W1)
    _convert_and_check(path, {"w1": W1}, tmp_path)


def test_linked_model_with_its_data_beside_its_real_file(tmp_path):
    """A Hugging Face cache: `snapshot/m.onnx` and `snapshot/weights.bin` link to files side by side in `blobs/`.
    The data is in the directory of the model's real file, which onnxruntime accepts too."""
    (tmp_path / "blobs").mkdir()
    (tmp_path / "snapshot").mkdir()
    _write(tmp_path / "blobs" / "model-hash", _model([_ext("w1", "weights.bin")]))
    _write(tmp_path / "blobs" / "data-hash", W1)
    os.symlink("../blobs/model-hash", tmp_path / "snapshot" / "m.onnx")
    os.symlink("../blobs/data-hash", tmp_path / "snapshot" / "weights.bin")
    path = str(tmp_path / "snapshot" / "m.onnx")
    np.testing.assert_array_equal(_values(optc.load(path))["w1"], W1)
    _convert_and_check(path, {"w1": W1}, tmp_path)


def test_identical_ranges_are_shared(tmp_path):
    """Two tensors on exactly the same bytes (tied weights) load: onnx's checker and onnxruntime accept it."""
    d = _model_dir(tmp_path, W1)
    c = _ext("", "weights.bin")
    path = _write(d / "m.onnx", _model([_ext("w1", "weights.bin"), _ext("w2", "weights.bin")], constant=c))
    onnx.checker.check_model(path)
    expected = {"w1": W1, "w2": W1, "c": W1}
    got = _values(optc.load(path))
    for k, v in expected.items():
        np.testing.assert_array_equal(got[k], v)
    _convert_and_check(path, expected, tmp_path)


def test_adjacent_ranges_and_absent_offset_and_length(tmp_path):
    """Ranges that touch do not overlap; `offset` defaults to 0 and `length` to the tensor's size."""
    d = _model_dir(tmp_path, np.concatenate([W1, W2]))
    m = _model([_ext("w1", "weights.bin", offset=None, length=None), _ext("w2", "weights.bin", "16", None)])
    path = _write(d / "m.onnx", m)
    got = _values(optc.load(path))
    np.testing.assert_array_equal(got["w1"], W1)
    np.testing.assert_array_equal(got["w2"], W2)
