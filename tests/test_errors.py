"""Bad input gives a one-line error, exit code 2 and no debris, for every subcommand and for the Python API.

Each bad input is run through every entry of `SUBCOMMAND_INVOCATIONS` (as a subprocess, the way a user runs
it) and must: exit with code 2; print exactly one line on stderr, starting with `optc: error:`; print no
traceback; leave no output file and no temporary file behind; leave the input file unchanged. `optc.load` must
raise `optc.OptcError` for the same inputs. The messages are printed in the terminal summary.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np
import onnx
import optc
import pytest
from onnx import TensorProto, helper, numpy_helper
from optc.tools import cli

# A subcommand invocation: argv with "{model}" (the bad input), "{out}" (an empty directory for outputs) and
# "{good}" (a valid model, for commands that take two). Add new subcommands here; entries whose subcommand is
# not registered are skipped (and say so), registered ones must pass.
SUBCOMMAND_INVOCATIONS: list[list[str]] = [
    ["inspect", "{model}"],
    ["show", "{model}"],
    ["convert", "{model}", "-o", "{out}/out.onnx"],
    ["optimize", "{model}", "-o", "{out}/out.onnx"],
    ["verify", "{model}", "{good}"],
    ["verify", "{good}", "{model}"],
    ["compile", "{model}", "-o", "{out}/out.so"],
]


def _invocation_ids() -> list[str]:
    ids = []
    for inv in SUBCOMMAND_INVOCATIONS:
        same = [i for i in SUBCOMMAND_INVOCATIONS if i[0] == inv[0]]
        ids.append(inv[0] if len(same) == 1 else f"{inv[0]}{same.index(inv) + 1}")
    return ids


def registered_subcommands() -> set[str]:
    """The subcommands `optc` registers (from `optc.tools.cli.COMMANDS`, through its parser)."""
    parser = cli.build_parser()
    names: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            names.update(action.choices)
    return names


def test_the_first_subcommands_are_registered():
    """The list of invocations is not silently empty: the subcommands that exist from the start are there."""
    assert {"inspect", "show", "convert"} <= registered_subcommands()
    assert {inv[0] for inv in SUBCOMMAND_INVOCATIONS} >= {"inspect", "show", "convert"}


# -- the bad inputs -----------------------------------------------------------------------------------


def _vi(name):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [2])


def _model(nodes, inputs=("x",), outputs=("y",), initializers=(), opset=21) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [_vi(i) for i in inputs], [_vi(o) for o in outputs],
                          initializer=list(initializers))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def _good() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(256, dtype=np.float32).reshape(128, 2)[:1].reshape(2), "w")
    return _model([helper.make_node("Add", ["x", "w"], ["h"], name="add"),
                   helper.make_node("Relu", ["h"], ["y"], name="relu")], initializers=[w])


def _write(path, data: bytes | onnx.ModelProto) -> None:
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.SerializeToString())


def _missing(d):
    return os.path.join(d, "no_such_model.onnx")


def _directory(d):
    p = os.path.join(d, "a_directory.onnx")
    os.mkdir(p)
    return p


def _empty(d):
    p = os.path.join(d, "empty.onnx")
    _write(p, b"")
    return p


def _truncated(d):
    p = os.path.join(d, "truncated.onnx")
    data = _good().SerializeToString()
    _write(p, data[: len(data) // 2])
    return p


def _random_bytes(d):
    p = os.path.join(d, "random.onnx")
    _write(p, np.random.default_rng(0).bytes(4096))
    return p


def _cycle(d):
    p = os.path.join(d, "cycle.onnx")
    _write(p, _model([helper.make_node("Add", ["x", "z"], ["y"]), helper.make_node("Relu", ["y"], ["z"])]))
    return p


def _undefined_input(d):
    p = os.path.join(d, "undefined_input.onnx")
    _write(p, _model([helper.make_node("Add", ["x", "nowhere"], ["y"])]))
    return p


def _defined_twice(d):
    p = os.path.join(d, "defined_twice.onnx")
    _write(p, _model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["y"])]))
    return p


def _external(d, name, location, data: bytes | None = None):
    """A model whose weight 'w' (8 bytes) lives at `location`, in its own directory `d/name/`."""
    sub = os.path.join(d, name)
    os.mkdir(sub)
    m = _good()
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "8")):
        e = t.external_data.add()
        e.key, e.value = k, v
    if data is not None:
        _write(os.path.join(sub, location), data)
    p = os.path.join(sub, f"{name}.onnx")
    _write(p, m)
    return p


def _missing_external_data(d):
    return _external(d, "missing_external_data", "weights.bin")


def _external_data_too_short(d):
    return _external(d, "external_data_too_short", "weights.bin", b"\0" * 4)


def _external_data_outside_the_model_directory(d):
    _write(os.path.join(d, "secret.bin"), b"\1" * 8)
    return _external(d, "external_data_outside", "../secret.bin")


def _missing_external_attribute_data(d):
    sub = os.path.join(d, "external_attribute")
    os.mkdir(sub)
    t = numpy_helper.from_array(np.arange(4, dtype=np.float32), "")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "constant.bin"), ("offset", "0"), ("length", "16")):
        e = t.external_data.add()
        e.key, e.value = k, v
    p = os.path.join(sub, "missing_external_attribute_data.onnx")
    _write(p, _model([helper.make_node("Constant", [], ["y"], value=t)], inputs=()))
    return p


def _opset_too_new(d):
    p = os.path.join(d, "opset_too_new.onnx")
    _write(p, _model([helper.make_node("Relu", ["x"], ["y"])], opset=onnx.defs.onnx_opset_version() + 10))
    return p


def _ir_version_too_new(d):
    p = os.path.join(d, "ir_version_too_new.onnx")
    m = _model([helper.make_node("Relu", ["x"], ["y"])])
    m.ir_version = onnx.IR_VERSION + 5
    _write(p, m)
    return p


def _unknown_element_type(d):
    p = os.path.join(d, "unknown_element_type.onnx")
    m = _model([helper.make_node("Relu", ["x"], ["y"])])
    m.graph.input[0].type.tensor_type.elem_type = 99
    _write(p, m)
    return p


def _initializer_of_unknown_type(d):
    p = os.path.join(d, "initializer_of_unknown_type.onnx")
    m = _good()
    m.graph.initializer[0].data_type = 99
    _write(p, m)
    return p


def _unknown_op(d):
    p = os.path.join(d, "unknown_op.onnx")
    _write(p, _model([helper.make_node("NoSuchOpAnywhere", ["x"], ["y"])]))
    return p


BAD_INPUTS = {f.__name__[1:]: f for f in (
    _missing, _directory, _empty, _truncated, _random_bytes, _cycle, _undefined_input, _defined_twice,
    _missing_external_data, _external_data_too_short, _external_data_outside_the_model_directory,
    _missing_external_attribute_data, _opset_too_new, _ir_version_too_new, _unknown_element_type,
    _initializer_of_unknown_type, _unknown_op,
)}


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict[str, str]:
    d = str(tmp_path_factory.mktemp("bad_inputs"))
    return {name: make(d) for name, make in BAD_INPUTS.items()}


@pytest.fixture(scope="module")
def good_model(tmp_path_factory) -> str:
    p = str(tmp_path_factory.mktemp("good") / "good.onnx")
    _write(p, _good())
    return p


@pytest.fixture(scope="module")
def messages(report):
    """What each bad input printed, for the terminal summary (and the release notes)."""
    collected: dict[str, dict[str, str]] = {}
    yield collected
    lines = []
    for name in BAD_INPUTS:
        for message, commands in _group(collected.get(name, {})).items():
            lines.append(f"{name} [{', '.join(commands)}]: {message}")
    report("bad-input messages", lines)


def _group(by_command: dict[str, str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for command, message in by_command.items():
        grouped.setdefault(message, []).append(command)
    return grouped


def _snapshot(path: str):
    """The state of a bad input and of its directory, to check nothing was modified or added."""
    d = os.path.dirname(path)
    if os.path.isdir(path):
        content = ("dir", tuple(sorted(os.listdir(path))))
    elif os.path.exists(path):
        content = ("file", open(path, "rb").read())
    else:
        content = ("missing",)
    return content, tuple(sorted(os.listdir(d)))


@pytest.mark.parametrize("invocation", SUBCOMMAND_INVOCATIONS, ids=_invocation_ids())
@pytest.mark.parametrize("bad", list(BAD_INPUTS))
def test_cli_bad_input(bad, invocation, bad_inputs, good_model, messages, tmp_path):
    if invocation[0] not in registered_subcommands():
        pytest.skip(f"subcommand '{invocation[0]}' is not registered (yet)")
    model = bad_inputs[bad]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv = [a.format(model=model, out=out_dir, good=good_model) for a in invocation]
    before = _snapshot(model)
    proc = subprocess.run([sys.executable, "-m", "optc.tools.cli", *argv], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OPTC_DEBUG": ""})
    where = f"optc {' '.join(argv)}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr + proc.stdout, where
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("optc: error: "), where
    assert proc.returncode == 2, where
    assert os.listdir(out_dir) == [], where  # no output, no temporary file
    assert _snapshot(model) == before, where  # the input (and its directory) untouched
    messages.setdefault(bad, {})[" ".join(invocation).replace("{", "").replace("}", "")] = \
        lines[0][len("optc: error: "):]


@pytest.mark.parametrize("bad", list(BAD_INPUTS))
def test_api_bad_input(bad, bad_inputs):
    model = bad_inputs[bad]
    before = _snapshot(model)
    with pytest.raises(optc.OptcError) as info:
        optc.load(model)
    message = str(info.value)
    assert message and "\n" not in message
    assert _snapshot(model) == before


@pytest.mark.parametrize("bad", [b for b in BAD_INPUTS if b not in ("missing", "directory") and "external" not in b])
def test_api_bad_bytes_and_protos(bad, bad_inputs):
    """The same bad models given as bytes (and, where they parse, as ModelProtos) raise OptcError too."""
    data = open(bad_inputs[bad], "rb").read()
    with pytest.raises(optc.OptcError):
        optc.load(data)
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception:  # noqa: BLE001 - only the models that parse are tried as protos
        return
    if proto.HasField("graph"):
        with pytest.raises(optc.OptcError):
            optc.load(proto)


@pytest.mark.parametrize("bad", [b for b in BAD_INPUTS if "external" in b])
def test_api_external_data_without_a_directory(bad, bad_inputs):
    """A model with external data given as bytes has no directory to find its data in: a clear error."""
    data = open(bad_inputs[bad], "rb").read()
    with pytest.raises(optc.OptcError, match="external data"):
        optc.load(data)


def test_good_model_passes_every_subcommand(tmp_path):
    """The harness is not vacuous: the same invocations succeed on a good model and write their output."""
    model = tmp_path / "good.onnx"
    _write(model, _good())
    for k, invocation in enumerate(SUBCOMMAND_INVOCATIONS):
        if invocation[0] not in registered_subcommands() or invocation[0] == "compile":
            continue  # compile is slow and tested where it lives
        out_dir = tmp_path / f"out_{k}"
        out_dir.mkdir()
        argv = [a.format(model=model, out=out_dir, good=model) for a in invocation]
        proc = subprocess.run([sys.executable, "-m", "optc.tools.cli", *argv], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, (argv, proc.stderr)
        if "-o" in argv:
            assert os.listdir(out_dir) == [os.path.basename(argv[argv.index("-o") + 1])]


def test_first_line_keeps_what_a_lead_in_announces():
    """onnxruntime's shape error puts the detail on its second line: a first line ending in a lead-in is joined
    with it (the one-line message kept 'for the following indices' and lost which index and sizes)."""
    from optc.errors import first_line

    exc = RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: x for the "
                       "following indices\n index: 0 Got: 3 Expected: 4\n Please fix either the inputs or the model.")
    assert first_line(exc).endswith("for the following indices index: 0 Got: 3 Expected: 4")
    assert first_line(RuntimeError("one\ntwo")) == "one"  # no lead-in: the first line alone
    assert first_line(RuntimeError("a:\nb\nc"), last=True) == "c"
