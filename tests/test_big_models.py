"""Big models at small scale: external-data weights are not read at load, and are streamed on save.

A 64 MiB external-data model stands in for one past protobuf's 2 GB limit; reads of its data file are
counted by wrapping `open`, `np.memmap` and `np.fromfile` while the model is loaded and saved.
"""

from __future__ import annotations

import builtins
import io
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from optc.ir import ExternalTensor, load, save
from optc.ir import tensors as tensors_mod
from optc.tools.cli import main as cli_main

DIM = 1024
LAYERS = 16  # 16 x 4 MiB = 64 MiB


def _write_model(directory) -> tuple[str, str]:
    """A MatMul chain whose weights are written straight into `model.onnx.data` (not through protobuf)."""
    location = "model.onnx.data"
    data_path = os.path.join(directory, location)
    layer_bytes = DIM * DIM * 4
    nodes, inits, x = [], [], "x"
    with open(data_path, "wb") as f:
        for i in range(LAYERS):
            offset = f.tell()
            f.write(np.full((DIM, DIM), i, dtype=np.float32).tobytes())
            t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[DIM, DIM],
                            data_location=TensorProto.EXTERNAL)
            for k, v in (("location", location), ("offset", str(offset)), ("length", str(layer_bytes))):
                e = t.external_data.add()
                e.key, e.value = k, v
            inits.append(t)
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"]))
            x = f"h{i}"
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, DIM])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, DIM])], inits)
    path = os.path.join(directory, "model.onnx")
    with open(path, "wb") as f:
        f.write(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path, data_path


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    return _write_model(tmp_path_factory.mktemp("big"))


class _ReadCounter:
    """Counts bytes read from one file through `open(...).read*` and mappings of it."""

    def __init__(self, monkeypatch, watched: str):
        self.watched = os.path.realpath(watched)
        self.bytes_read = 0
        self.largest_read = 0
        self.mapped = 0
        real_open = builtins.open
        counter = self

        class CountingFile(io.BufferedReader):
            def read(self, size=-1):
                data = super().read(size)
                counter.bytes_read += len(data)
                counter.largest_read = max(counter.largest_read, len(data))
                return data

            def readinto(self, b):
                n = super().readinto(b)
                counter.bytes_read += n or 0
                counter.largest_read = max(counter.largest_read, n or 0)
                return n

        def counting_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if isinstance(file, (str, os.PathLike)) and "r" in mode and "b" in mode and \
                    os.path.realpath(file) == self.watched and isinstance(f, io.BufferedReader):
                raw = f.detach()
                return CountingFile(raw)
            return f

        real_memmap = np.memmap

        class CountingMemmap(real_memmap):
            def __new__(cls, filename, *args, **kwargs):
                if os.path.realpath(filename) == counter.watched:
                    counter.mapped += 1
                return real_memmap.__new__(real_memmap, filename, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", counting_open)
        monkeypatch.setattr(np, "memmap", CountingMemmap)
        monkeypatch.setattr(np, "fromfile", _forbidden)


def _forbidden(*args, **kwargs):
    raise AssertionError("np.fromfile would materialize external data")


def test_load_reads_no_external_data(big_model, monkeypatch):
    path, data_path = big_model
    counter = _ReadCounter(monkeypatch, data_path)
    model = load(path)
    assert counter.bytes_read == 0 and counter.mapped == 0
    consts = [v.const for v in model.graph.initializers.values()]
    assert len(consts) == LAYERS
    assert all(isinstance(t, ExternalTensor) for t in consts)


def test_save_streams_external_data(big_model, tmp_path, monkeypatch):
    path, data_path = big_model
    model = load(path)
    counter = _ReadCounter(monkeypatch, data_path)
    chunks: list[int] = []
    real_copy = ExternalTensor.copy_to

    def copy_to(self, out):
        before = counter.bytes_read
        real_copy(self, out)
        chunks.append(counter.bytes_read - before)

    monkeypatch.setattr(ExternalTensor, "copy_to", copy_to)
    out = tmp_path / "out.onnx"
    save(model, out)
    monkeypatch.undo()
    size = os.path.getsize(data_path)
    assert counter.mapped == 0, "save mapped the source data instead of streaming it"
    assert sum(chunks) == size and len(chunks) == LAYERS  # every byte read once, through copy_to
    assert counter.largest_read <= tensors_mod._CHUNK < size  # ... in chunks, never the whole data
    assert all(isinstance(v.const, ExternalTensor) for v in model.graph.initializers.values())
    _assert_same_values(path, str(out))


def test_convert_streams_and_keeps_values(big_model, tmp_path):
    path, _ = big_model
    out = tmp_path / "converted.onnx"
    assert cli_main(["convert", path, "-o", str(out)]) == 0
    assert os.path.exists(str(out) + ".data")
    assert os.path.getsize(out) < 64 * 1024  # the weights stayed outside the protobuf
    _assert_same_values(path, str(out))


def test_save_inline_small_model_from_external(big_model, tmp_path):
    """Inlining on request still works (it reads the data, as asked)."""
    path, _ = big_model
    out = tmp_path / "inline.onnx"
    save(load(path), out, external_data=False)
    proto = onnx.load(str(out))
    assert all(t.data_location != TensorProto.EXTERNAL for t in proto.graph.initializer)
    _assert_same_values(path, str(out))


def _assert_same_values(a: str, b: str) -> None:
    ma, mb = load(a), load(b)
    ia, ib = ma.graph.initializers, mb.graph.initializers
    assert list(ia) == list(ib)
    for name in ia:
        np.testing.assert_array_equal(ia[name].const.numpy(), ib[name].const.numpy())
    assert [n.op_type for n in ma.graph] == [n.op_type for n in mb.graph]
