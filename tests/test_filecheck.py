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


# -- the harness itself: checks that must fail do fail, and say where ---------------------------------------------

OUTPUT = """<ir_version: 8, opsets: {ai.onnx: 17}>
graph g (%x: float32[2,3]) -> (%y: float32[2,3]) {
  %a = Relu(%x)
  %y = Neg(%a)
  return %y
}"""


def checks(*lines: str) -> list[Check]:
    out = []
    for i, line in enumerate(lines, 1):
        kind, pattern = line.split(":", 1)
        out.append(Check(kind, pattern.strip(), i))
    return out


@pytest.mark.parametrize("lines", [
    ("CHECK: Relu(%x)", "CHECK-NEXT: Neg(%a)", "CHECK-NEXT: return %y"),
    ("CHECK-LABEL: graph g", "CHECK: %a = Relu", "CHECK-SAME: (%x)", "CHECK-NOT: Sigmoid", "CHECK: return"),
    ("CHECK: %[[V:[a-z]]] = Relu(%x)", "CHECK: Neg(%[[V]])"),
    ("CHECK: %{{[a-z]+}} =   Relu(%x)", "CHECK-NOT: Relu", "CHECK: }"),
    ("CHECK: %[[A:a]] = Relu(%[[X:x]]) ", "CHECK-NEXT: Neg(%[[A]])"),
])
def test_matching_checks_pass(lines):
    match_checks(checks(*lines), OUTPUT)


@pytest.mark.parametrize("lines,message", [
    (("CHECK: Sigmoid(%x)",), r"<checks>:1: CHECK: expected string not found in the output"),
    (("CHECK: %y = Neg(%a)", "CHECK: %a = Relu(%x)"), r"<checks>:2: CHECK: expected string not found"),
    (("CHECK: Relu(%x)", "CHECK-NEXT: return %y"), r"<checks>:2: CHECK-NEXT: expected string not found on the "
                                                      r"line after the previous match"),
    (("CHECK: %a = Relu", "CHECK-SAME: Neg"), r"<checks>:2: CHECK-SAME: expected string not found on the same line"),
    (("CHECK-NOT: Relu", "CHECK: Neg"), r"<checks>:1: CHECK-NOT: excluded string found in the output\n.*\n"
                                        r"  found at output line 3: '  %a = Relu\(%x\)'"),
    (("CHECK: Relu", "CHECK-NOT: Neg"), r"<checks>:2: CHECK-NOT: excluded string found"),
    (("CHECK-LABEL: graph h",), r"<checks>:1: CHECK-LABEL: expected label not found"),
    (("CHECK-LABEL: return", "CHECK: Relu"), r"<checks>:2: CHECK: expected string not found"),  # Relu is before
    (("CHECK: %[[V:[a-z]]] = Relu(%x)", "CHECK: Neg(%[[V]])", "CHECK: %[[V]] = Relu"), r"<checks>:3: CHECK"),
    (("CHECK: Neg(%[[W]])",), r"variable \[\[W\]\] is not defined by an earlier check"),
    (("CHECK: Neg({{[a-z}})",), r"bad regex"),
    (("CHECK: return %y", "CHECK-EMPTY:"), r"<checks>:2: CHECK-EMPTY: expected an empty line"),
    (("CHECK-NEXT: Relu",), r"CHECK-NEXT needs a match before it"),
    (("CHECK: Neg({{a",), r"'\{\{' without '\}\}'"),
    (("CHECK: %[[V:[a-z]",), r"'\[\[' without '\]\]'"),
    (("CHECK: %[[1]]",), r"'\[\[' needs a variable name"),
    (("CHECK-NOT: %[[V:a]]",), r"CHECK-NOT cannot define variables"),
])
def test_failing_checks_fail_and_point_at_the_check(lines, message):
    with pytest.raises(CheckFailure, match=message):
        match_checks(checks(*lines), OUTPUT)


def test_failure_names_the_nearest_output_line():
    with pytest.raises(CheckFailure) as info:
        match_checks(checks("CHECK: %a = Relu(%x)", "CHECK-NEXT: %y = Neg(%b)"), OUTPUT, source="t.ir")
    msg = str(info.value)
    assert msg.startswith("t.ir:2: CHECK-NEXT: expected string not found on the line after the previous match")
    assert "  // CHECK-NEXT: %y = Neg(%b)" in msg
    assert "nearest output line 4: '  %y = Neg(%a)'" in msg
    assert ">   4 |   %y = Neg(%a)" in msg  # the output, numbered, with the nearest line marked


TEST = """// RUN: eliminate-noops
<ir_version: 8, opsets: {ai.onnx: 17}>
graph g (%x: float32[2,3]) -> (%y: float32[2,3]) {
  %i = Identity(%x)
  %y = LeakyRelu(%i) {alpha=0.1}
  return %y
}
// CHECK-NOT: Identity
// CHECK: %y = LeakyRelu(%x) {alpha=0.1}
"""


def test_a_test_text_runs():
    result = run_test(parse_test(TEST, "t.ir"))
    assert "%y = LeakyRelu(%x) {alpha=0.1}" in result.output
    assert [n.op_type for n in result.before.graph.node] == ["Identity", "LeakyRelu"]


@pytest.mark.parametrize("path", ["noops/identity.ir", "noops/chain.ir", "fusion/conv-bn.ir", "fusion/matmul-add.ir",
                                  "canonicalize/min-max-to-clip.ir", "canonicalize/reshape-chain.ir"])
def test_positive_files_fail_without_their_pipeline(path):
    with open(os.path.join(HERE, "filecheck", path)) as f:
        test = parse_test(f.read(), path)
    test.pipeline = ""
    with pytest.raises(CheckFailure, match=rf"{path}:\d+: CHECK"):
        run_test(test)


@dataclass
class _BreakLeakyRelu(Pass):
    """A deliberately wrong pass: changes LeakyRelu's alpha (through the Rewriter)."""

    name = "break-leaky-relu"

    def run(self, model, ctx: PassContext) -> PassResult:
        rw = Rewriter(model)
        for n in list(model.graph):
            if n.op_type == "LeakyRelu":
                rw.set_attr(n, "alpha", 0.2)
        return PassResult(changed=True)


def test_numerics_catch_a_wrong_rewrite():
    test = parse_test(TEST.replace("// CHECK-NOT: Identity\n// CHECK: %y = LeakyRelu(%x) {alpha=0.1}\n",
                                   "// CHECK: LeakyRelu\n"), "t.ir")
    with pytest.raises(CheckFailure, match=r"t.ir: output y differs bit for bit in \d+ of 6 elements, first at"):
        run_test(test, passes=_BreakLeakyRelu())
    # ... and NO-NUMERICS or a wide enough tolerance let it through
    run_test(parse_test("// NO-NUMERICS: alpha is changed on purpose\n" + test.text, "t.ir"), passes=_BreakLeakyRelu())
    with pytest.raises(CheckFailure, match="within rtol=0.01 atol=0.0"):
        run_test(parse_test("// NUMERICS: rtol=0.01 atol=0.0\n" + test.text, "t.ir"), passes=_BreakLeakyRelu())


@pytest.mark.parametrize("text,message", [
    ("graph", r"t.ir: no '// RUN: <pipeline>' line"),
    ("// RUN: dce\n// RUN: cse\n", r"t.ir:2: a second RUN line"),
    ("// RUN: dce\n// RUN-FLAGS: fast-math, turbo\n", r"t.ir:2: unknown flag 'turbo'"),
    ("// RUN: dce\n// NO-NUMERICS:\n", r"t.ir:2: NO-NUMERICS needs a reason"),
    ("// RUN: dce\n// NUMERICS: loose\n", r"t.ir:2: NUMERICS takes 'exact' or 'rtol=<float> atol=<float>'"),
    ("// RUN: dce\n// CHECK-DAG: x\n", r"t.ir:2: unknown directive CHECK-DAG"),
    ("// RUN: dce\n// CHECK:\n", r"t.ir:2: CHECK has an empty pattern"),
    ("// RUN: dce\n// NOTE: a prose comment\n", r"t.ir: no check strings found"),
    ("// RUN: dce\n// CHECK-NOT: Relu\n// CHEKC: Relu\n", r"t.ir:3: 'CHEKC' looks like a misspelled directive"),
    ("// RUN: dce\n// CHECK-next: Relu\n", r"t.ir:2: 'CHECK-next' looks like a misspelled directive"),
    ("// RUN: dce\n// CHECK : Relu\n", r"t.ir:2: 'CHECK' looks like a misspelled directive"),
    ("// RUN: dce\n// CHECK Nope\n", r"t.ir:2: 'CHECK' looks like a misspelled directive"),
    ("// RUN: dce\n// check: Relu\n", r"t.ir:2: 'check' looks like a misspelled directive"),
    ("// RUN: dce\n// CHECK-NOT Relu\n", r"t.ir:2: 'CHECK-NOT' looks like a misspelled directive"),
    ("// RUN: dce\n  //CHECK-LABLE: g\n", r"t.ir:2: unknown directive CHECK-LABLE"),
    ("// RUN: dce\n// RUN-FLAGS: elided=random, elided=zeros\n", r"give one of elided=random and elided=zeros"),
])
def test_bad_test_files(text, message):
    with pytest.raises(CheckFailure, match=message):
        parse_test(text, "t.ir")


def test_ir_errors_and_bad_pipelines_are_check_failures():
    with pytest.raises(CheckFailure, match=r"t.ir: line 5, column 18: value %j is used before it is defined"):
        run_test(parse_test(TEST.replace("LeakyRelu(%i)", "LeakyRelu(%j)"), "t.ir"))
    with pytest.raises(CheckFailure, match=r"t.ir: bad pipeline 'no-such-pass'"):
        run_test(parse_test(TEST.replace("RUN: eliminate-noops", "RUN: no-such-pass"), "t.ir"))
    with pytest.raises(CheckFailure, match=r"t.ir: line 4, column 13: the payload of %w .* is elided"):
        run_test(parse_test(TEST.replace("  %i = Identity(%x)", "  %w = init float32[16]\n  %i = Identity(%x)"),
                            "t.ir"))


def test_inputs_without_random_values_ask_for_no_numerics():
    text = """// RUN: dce
<ir_version: 8, opsets: {ai.onnx: 17}>
graph g (%s: seq<float32[2]>) -> (%n: int64[]) {
  %n = SequenceLength(%s)
  return %n
}
// CHECK: SequenceLength(%s)
"""
    with pytest.raises(CheckFailure, match=r"t.ir: no random inputs for this model .*add '// NO-NUMERICS: <reason>'"):
        run_test(parse_test(text, "t.ir"))
    run_test(parse_test("// NO-NUMERICS: a sequence input\n" + text, "t.ir"))


def test_prose_comments_and_valid_directives_are_not_misspellings():
    test = parse_test("// RUN: dce\n// This checks that Relu stays.\n// NOTE: fine\n//CHECK-NOT: Sigmoid\n"
                      "  // CHECK: Relu\n", "t.ir")
    assert [(c.kind, c.pattern) for c in test.checks] == [("CHECK-NOT", "Sigmoid"), ("CHECK", "Relu")]
