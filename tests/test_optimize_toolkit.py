"""`optc optimize` for pass writers: --trace, --disable-rule/--enable-rule, rule statistics, plugin rule sets,
--size-limit, --check, the before/after summary, names kept by fusions, and `optc passes NAME`."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import optc
import pytest
from onnx import helper as h
from onnx import numpy_helper as nh
from optc.ortsession import session
from optc.rewrites import rules as rules_mod
from optc.rewrites.pass_manager import registered_passes
from optc.rewrites.rule import Rule
from optc.tools.cli import main


def _conv_bn(path: str, shared: bool = True) -> str:
    """Conv+BN+Relu (fusable) and, with `shared`, a second Conv+BN whose Conv output is also read by an Add
    (the fusion must be refused there)."""
    rng = np.random.default_rng(0)
    w = nh.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W")
    bn = [nh.from_array((rng.random(4) + 0.5).astype(np.float32), n) for n in ("sc", "b", "m", "v")]
    nodes = [h.make_node("Conv", ["x", "W"], ["conv_out"], name="conv"),
             h.make_node("BatchNormalization", ["conv_out", "sc", "b", "m", "v"], ["bn_out"], name="bn"),
             h.make_node("Relu", ["bn_out"], ["y"], name="relu")]
    outputs = [h.make_tensor_value_info("y", 1, None)]
    if shared:
        nodes += [h.make_node("Conv", ["x", "W"], ["c2"], name="conv2"),
                  h.make_node("BatchNormalization", ["c2", "sc", "b", "m", "v"], ["bn2"], name="bn2"),
                  h.make_node("Add", ["bn2", "c2"], ["z"], name="add")]
        outputs.append(h.make_tensor_value_info("z", 1, None))
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", 1, [1, 3, 8, 8])], outputs, [w, *bn])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=10), path)
    return path


def _ops(path: str) -> list[str]:
    return [n.op_type for n in onnx.load(path).graph.node]


def test_trace_prints_the_rewrite_and_the_rejection(tmp_path, capsys):
    src = _conv_bn(str(tmp_path / "m.onnx"))
    assert main(["optimize", src, "-o", str(tmp_path / "o.onnx"), "--trace", "FuseConvBatchNorm"]) == 0
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("optc: trace: FuseConvBatchNorm")]
    done = [x for x in lines if "'bn'" in x and "rewrote" in x]
    refused = [x for x in lines if "'bn2'" in x and "no match" in x]
    assert done and "-> [Conv 'conv']" in done[0]
    assert refused and "'c2' (of Conv 'conv2') is also used outside the match" in refused[0]
    assert len(refused) == 1  # the fixed-point sweep retries it: reported once
    assert all("FusePadConv" not in x for x in err.splitlines())  # only the traced rule


def test_trace_names_unnamed_nodes_by_their_first_output(tmp_path, capsys):
    """Nodes without names are labelled by their first output everywhere on the trace line (the best partial
    match and the reason too, not '')."""
    src = _conv_bn(str(tmp_path / "m.onnx"))
    m = onnx.load(src)
    for n in m.graph.node:
        n.name = ""
    onnx.save(m, src)
    assert main(["optimize", src, "-o", str(tmp_path / "o.onnx"), "--trace", "FuseConvBatchNorm"]) == 0
    refused = [x for x in capsys.readouterr().err.splitlines() if "no match" in x]
    assert refused and "at BatchNormalization 'bn2'" in refused[0] and "''" not in refused[0]
    assert "(of Conv 'c2') is also used outside the match" in refused[0]
    assert "best partial match: [BatchNormalization 'bn2', Conv 'c2']" in refused[0]


def test_trace_of_an_unknown_rule_is_one_line_exit_2(tmp_path, capsys):
    src = _conv_bn(str(tmp_path / "m.onnx"))
    out = tmp_path / "o.onnx"
    assert main(["optimize", src, "-o", str(out), "--trace", "FuseConvBN"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown rule 'FuseConvBN'" in err
    assert not out.exists()


def test_disable_and_enable_rule(tmp_path, capsys):
    src = _conv_bn(str(tmp_path / "m.onnx"), shared=False)
    out = str(tmp_path / "o.onnx")
    assert main(["optimize", src, "-o", out]) == 0
    assert "BatchNormalization" not in _ops(out)
    assert main(["optimize", src, "-o", out, "--disable-rule", "FuseConvBatchNorm"]) == 0
    assert "BatchNormalization" in _ops(out)
    assert main(["optimize", src, "-o", out, "--enable-rule", "IdentityNoop"]) == 0
    assert "BatchNormalization" in _ops(out)  # only IdentityNoop may fire
    assert main(["optimize", src, "-o", out, "--enable-rule", "FuseConvBatchNorm"]) == 0
    assert "BatchNormalization" not in _ops(out)
    capsys.readouterr()


def test_report_has_attempts_and_rejections_per_rule(tmp_path, capsys):
    src = _conv_bn(str(tmp_path / "m.onnx"))
    rep = tmp_path / "r.json"
    assert main(["optimize", src, "-o", str(tmp_path / "o.onnx"), "--report", str(rep)]) == 0
    stats = json.loads(rep.read_text())["rule_stats"]["FuseConvBatchNorm"]
    assert stats["applied"] == 1 and stats["rejected"] >= 1
    assert stats["attempts"] == stats["applied"] + stats["rejected"] + stats["skipped"]
    capsys.readouterr()


def test_fusion_keeps_the_user_value_and_node_names(tmp_path):
    src = _conv_bn(str(tmp_path / "m.onnx"), shared=False)
    out = optc.optimize(src)
    conv = next(n for n in out.graph if n.op_type == "Conv")
    assert conv.name == "conv" and conv.outputs[0].name == "bn_out"
    assert conv.meta["from"] == ["bn", "conv"] or sorted(conv.meta["from"]) == ["bn", "conv"]


# -- plugin rule sets ------------------------------------------------------------------------------------


class _BrokenReluToNeg(Rule):
    """Relu(x) -> Neg(x): deliberately wrong, to prove --check catches a bad rewrite."""

    name = "BrokenReluToNeg"

    def pattern(self, op, x):
        return op.Relu(x)

    def rewrite(self, op, m, x):
        return op.Neg(x)


@pytest.fixture
def broken_plugin(monkeypatch):
    monkeypatch.setattr(rules_mod, "_SETS", dict(rules_mod._SETS))
    rules_mod.register_rule_set("broken-plugin", [_BrokenReluToNeg], level=2, origin="plugin test")
    yield


def test_plugin_rule_set_with_a_level_joins_O2_and_check_catches_it(tmp_path, capsys, broken_plugin):
    from optc.rewrites.pipelines import level_spec

    assert "rules{rule-set=broken-plugin,fold=true}" in level_spec(2)
    assert "broken-plugin" not in level_spec(1)
    src = _conv_bn(str(tmp_path / "m.onnx"), shared=False)
    out = tmp_path / "o.onnx"
    assert main(["optimize", src, "-o", str(out), "--check", "2"]) == 1
    err = capsys.readouterr().err
    assert "check failed: the optimized model's output 'y' differs" in err and err.count("\n") == 1
    assert not out.exists()  # nothing written
    assert main(["optimize", src, "-o", str(out), "--check", "2", "--disable-rule", "BrokenReluToNeg"]) == 0
    err = capsys.readouterr().err
    assert "check: outputs equal on 2 random input set(s)" in err and out.exists()
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32))
    assert main(["optimize", src, "-o", str(out), "--check", "1", "--inputs", str(tmp_path / "x.npz")]) == 1
    assert "differs from the input model's on the inputs of" in capsys.readouterr().err
    assert main(["passes"]) == 0
    listing = capsys.readouterr().out
    assert "broken-plugin: (in -O2 and up) [plugin test]" in listing and "BrokenReluToNeg" in listing


def test_register_rule_set_refuses_bad_input():
    with pytest.raises(ValueError, match="already registered"):
        rules_mod.register_rule_set("canonicalize", [])
    with pytest.raises(ValueError, match="level must be 1, 2 or 3"):
        rules_mod.register_rule_set("x-new", [], level=5)
    with pytest.raises(ValueError, match="is not a Rule"):
        rules_mod.register_rule_set("x-new", [object])
    assert "x-new" not in rules_mod.rule_sets()


# -- size limit, check and summary ----------------------------------------------------------------------


def _generated_weight(path: str, n: int) -> str:
    """y = x + ConstantOfShape([n]) (the model makes an n-element weight at run time)."""
    g = h.make_graph([h.make_node("ConstantOfShape", ["s"], ["w"], value=nh.from_array(np.array([0.5], np.float32))),
                      h.make_node("Add", ["x", "w"], ["y"])], "g",
                     [h.make_tensor_value_info("x", 1, [n])], [h.make_tensor_value_info("y", 1, [n])],
                     [nh.from_array(np.array([n], np.int64), "s")])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=10), path)
    return path


def test_size_limit_keeps_generated_weights_unfolded_by_default(tmp_path, capsys):
    src = _generated_weight(str(tmp_path / "m.onnx"), 1 << 19)  # 2 MiB of float32
    out = str(tmp_path / "o.onnx")
    assert main(["optimize", src, "-o", out, "--check", "1"]) == 0
    err = capsys.readouterr().err
    assert "ConstantOfShape" in _ops(out) and os.path.getsize(out) < 10_000
    assert "1 constant(s) larger than the size limit (1.0 MB)" in err and "--size-limit 2MB folds them" in err
    assert main(["optimize", src, "-o", out, "--size-limit", "2MB", "--check", "1"]) == 0
    assert _ops(out) == ["Add"] and os.path.getsize(out) > 2 << 20
    assert "size limit" not in capsys.readouterr().err.split("wrote")[-1]
    x = np.random.default_rng(1).standard_normal(1 << 19).astype(np.float32)
    assert np.array_equal(session(out).run(None, {"x": x})[0], x + np.float32(0.5))


@pytest.mark.parametrize("bad", ["big", "-5", "3 parsecs"])
def test_size_limit_errors(tmp_path, capsys, bad):
    src = _generated_weight(str(tmp_path / "m.onnx"), 8)
    assert main(["optimize", src, "-o", str(tmp_path / "o.onnx"), "--size-limit", bad]) == 2
    err = capsys.readouterr().err
    assert "--size-limit must be a size such as" in err and err.count("\n") == 1


def test_light_vgg19_keeps_its_size(tmp_path, capsys):
    import onnx.backend.test

    src = os.path.join(os.path.dirname(onnx.backend.test.__file__), "data", "light", "light_vgg19.onnx")
    out = str(tmp_path / "vgg.onnx")
    assert main(["optimize", src, "-o", out]) == 0
    assert os.path.getsize(out) < 2 << 20  # it was 513 MB when every generated weight was folded
    err = capsys.readouterr().err
    assert "left to be computed at run time (largest 392.0 MB" in err


def test_a_pipeline_size_limit_is_the_one_reported(tmp_path, capsys):
    src = _generated_weight(str(tmp_path / "m.onnx"), 64)  # 256 bytes
    assert main(["optimize", src, "-o", str(tmp_path / "o.onnx"), "-p", "fold-constants{size-limit=100}"]) == 0
    err = capsys.readouterr().err
    assert "larger than the size limit (100 B)" in err and "size-limit option of fold-constants" in err


def test_json_summary_and_table(tmp_path, capsys):
    src = _conv_bn(str(tmp_path / "m.onnx"), shared=False)
    out = str(tmp_path / "o.onnx")
    assert main(["optimize", src, "-o", out, "--json"]) == 0
    cap = capsys.readouterr()
    data = json.loads(cap.out)
    assert data["before"]["ops"]["BatchNormalization"] == 1 and "BatchNormalization" not in data["after"]["ops"]
    assert data["before"]["file_bytes"] == os.path.getsize(src) and data["after"]["file_bytes"] == os.path.getsize(out)
    assert data["after"]["parameters"] < data["before"]["parameters"]
    assert "file size" not in cap.err  # --json: no table
    assert main(["optimize", src, "-o", out]) == 0
    err = capsys.readouterr().err
    table = [x.split() for x in err.splitlines()]
    assert ["BatchNormalization", "1", "0"] in table and any(r[:2] == ["file", "size"] for r in table)


@pytest.mark.parametrize("args, message", [
    (["--check", "-1"], "--check must be 0 or more"),
    (["--check", "1", "--bisect"], "give --bisect or --check, not both"),
    (["--inputs", "x.npz"], "--inputs gives the inputs of --check or --bisect"),
    (["-p", "fold-constants{size-limit=-5}"], "must be 0 or more bytes"),
])
def test_check_and_inputs_errors(tmp_path, capsys, args, message):
    src = _conv_bn(str(tmp_path / "m.onnx"), shared=False)
    assert main(["optimize", src, "-o", str(tmp_path / "o.onnx"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


# -- optc passes -------------------------------------------------------------------------------------------


def test_every_pass_documents_every_option():
    for name, info in registered_passes().items():
        module = getattr(info.factory, "__module__", "")
        if not module.startswith("optc.") or "tests" in module.split("."):
            continue  # passes the test suites register
        missing = [k for k in info.options if not info.option_help.get(k)]
        assert not missing, f"pass '{name}' has undocumented options {missing} (set option_help)"


def test_passes_name_shows_options_and_rules(capsys):
    assert main(["passes", "fold-constants"]) == 0
    out = capsys.readouterr().out
    assert "size-limit" in out and "fold-shapes" in out and "(default true)" in out
    assert main(["passes", "FuseConvBatchNorm", "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert entry["root_ops"] == ["BatchNormalization"] and entry["rule_sets"] == ["fuse-conv-bn"]
    assert entry["rounding"]
    assert main(["passes", "FuseConvBN"]) == 2
    assert "did you mean 'FuseConvBatchNorm'" in capsys.readouterr().err


def test_rule_plugins_load_from_the_optc_rules_entry_point_group(monkeypatch):
    import importlib.metadata

    class _EP:
        name, value, dist = "broken", "tests:broken", None

        def load(self):
            return {"plugin-set": [_BrokenReluToNeg]}

    def entry_points(group=None, **kw):
        return [_EP()] if group == "optc.rules" else []

    monkeypatch.setattr(rules_mod, "_SETS", dict(rules_mod._SETS))
    monkeypatch.setattr(rules_mod, "_plugins_loaded", False)
    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    info = rules_mod.rule_sets()["plugin-set"]
    assert info.rules == (_BrokenReluToNeg,) and info.origin == "plugin tests:broken" and info.level is None

    class _Bad(_EP):
        def load(self):
            raise ImportError("no module named x")

    monkeypatch.setattr(rules_mod, "_plugins_loaded", False)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None, **kw: [_Bad()])
    with pytest.raises(optc.OptcError, match="rule plugin 'broken' .* failed to load: no module named x"):
        rules_mod.rule_sets()


def test_api_takes_one_rule_name_as_a_string(tmp_path):
    src = _conv_bn(str(tmp_path / "m.onnx"), shared=False)
    kept = optc.optimize(src, disable_rules="FuseConvBatchNorm")
    assert "BatchNormalization" in [n.op_type for n in kept.graph]
    with pytest.raises(optc.OptcError, match="unknown rule 'NoSuchRule'"):
        optc.optimize(src, enable_rules="NoSuchRule")
