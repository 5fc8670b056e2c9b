"""ONNX node conformance through optc: every `onnx.backend.test.case.node` case survives the round trip.

For each case the ORIGINAL model is first run on onnxruntime (or, when onnxruntime cannot load or run it, or
gets a different answer, on onnx's reference evaluator) against the case's expected outputs. Cases that
neither runtime reproduces are "unrunnable" and counted apart. For the others, the model converted through
`optc.from_onnx` -> `optc.to_onnx` must reproduce the expected outputs on the same runtime, with the case's
own tolerances.

Losslessness is also checked at the proto level, with the strictest comparison that holds: the re-exported
ModelProto must SERIALIZE TO THE SAME BYTES as the original (deterministic serialization, so field order is
canonical; repeated fields - nodes, inputs, attributes, initializers, value_info, opsets - keep their order),
after one normalization: a scalar field that is explicitly set to its default value (ONNX's .proto is proto2,
so `domain: ""` on a node is "present") is cleared in both protos. optc does not record the presence bit of
default-valued scalars, and no ONNX consumer gives it meaning (oneof members such as `dim_value: 0` are
not touched: there presence is meaning); every other difference (including the presence
of empty sub-messages, such as a scalar's empty `shape {}`) still fails. (Plain byte equality, without that
normalization, holds for about three quarters of the cases; the others are the expanded function bodies, whose
nodes carry `domain: ""`.) This is checked three ways (`round_trip_problem`): as imported, with every node
written anew, and with every attribute of every node (subgraphs and functions included) decoded into optc
`Attr`s, so that optc's own node and attribute encoders are held to byte equality too.

The whole sweep takes 10-25 s here, so it is not marked slow; a quick subset (every 20th case) runs too.
"""

from __future__ import annotations

import functools
import os
import time
import warnings

import onnx
import optc
import pytest

from .conftest import (
    canonical_bytes,
    feed_names,
    outputs_mismatch,
    proto_diff,
    round_trip_problem,
    run_ort,
    run_reference,
)

QUICK_STRIDE = 20  # the non-slow subset: every 20th case


@functools.cache
def all_node_cases() -> list:
    """Every node case of the installed onnx, by name (built once per process: it takes a few seconds)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sorted(collect_testcases(), key=lambda c: c.name)


@pytest.fixture(scope="session")
def node_cases():
    return all_node_cases()


def _run(runtime: str, model: onnx.ModelProto, inputs: list) -> list:
    if runtime == "ort":
        return run_ort(model, inputs)
    return run_reference(model, dict(zip(feed_names(model), inputs, strict=False)))


def _data(x):
    """Case data as runtimes take it: TensorProtos (float8, int4, ... data) become (ml_dtypes) arrays."""
    if isinstance(x, onnx.TensorProto):
        return onnx.numpy_helper.to_array(x)
    if isinstance(x, list | tuple):
        return [_data(e) for e in x]
    return x


def _tolerances(case) -> tuple[float, float]:
    rtol = getattr(case, "rtol", None)
    atol = getattr(case, "atol", None)
    return (1e-5 if rtol is None else rtol), (1e-8 if atol is None else atol)  # numpy allclose defaults


def _reproduces(runtime: str, model: onnx.ModelProto, case) -> str | None:
    """None if `model` reproduces every data set of `case` on `runtime`, else why not."""
    rtol, atol = _tolerances(case)
    for inputs, expected in case.data_sets:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = _run(runtime, model, _data(list(inputs)))
        except Exception as exc:  # noqa: BLE001 - a runtime's refusal is an outcome, not an error
            return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        why = outputs_mismatch(got, _data(list(expected)), rtol, atol)
        if why:
            return why
    return None


#: ops whose outputs are random unless a seed attribute fixes them
_RANDOM_OPS = {"Bernoulli", "Multinomial", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike"}


def _unseeded_random(model: onnx.ModelProto) -> str | None:
    """The first op of `model` whose outputs are random (no seed), else None: whether the original 'reproduces'
    the expected outputs depends on the random state that earlier tests left (test_bernoulli passed by chance
    with the original and failed with the converted model under one test order)."""
    return next((n.op_type for n in model.graph.node if n.op_type in _RANDOM_OPS
                 and not any(a.name == "seed" for a in n.attribute)), None)


def check_case(case) -> tuple[str, str]:
    """('pass' | 'unrunnable' | 'fail', detail)."""
    try:
        problem = round_trip_problem(case.model)
    except Exception as exc:  # noqa: BLE001
        return "fail", f"round trip raised {type(exc).__name__}: {exc}"
    if problem:
        return "fail", f"not lossless: {problem}"
    random_op = _unseeded_random(case.model)
    if random_op is not None:
        return "unrunnable", f"{random_op} without a seed: its outputs are random"
    converted = optc.to_onnx(optc.from_onnx(case.model))
    reasons = []
    for runtime in ("ort", "reference"):
        why = _reproduces(runtime, case.model, case)
        if why is None:
            after = _reproduces(runtime, converted, case)
            if after is not None:
                return "fail", f"{runtime}: the original reproduces the expected outputs, the converted model not: {after}"
            return "pass", runtime
        reasons.append(f"{runtime}: {why}")
    return "unrunnable", "; ".join(reasons)


def _sweep(cases, report, title: str) -> None:
    start = time.perf_counter()
    outcomes: dict[str, list[tuple[str, str]]] = {"pass": [], "unrunnable": [], "fail": []}
    for case in cases:
        status, detail = check_case(case)
        outcomes[status].append((case.name, detail))
    elapsed = time.perf_counter() - start
    runnable = len(outcomes["pass"]) + len(outcomes["fail"])
    on_ref = sum(1 for _, d in outcomes["pass"] if d == "reference")
    lines = [
        f"{len(cases)} cases in {elapsed:.0f} s: passed {len(outcomes['pass'])} / runnable {runnable} "
        f"(onnxruntime {len(outcomes['pass']) - on_ref}, reference evaluator {on_ref}); "
        f"unrunnable {len(outcomes['unrunnable'])}; failed after the round trip {len(outcomes['fail'])}",
    ]
    if os.environ.get("OPTC_CONFORMANCE_VERBOSE"):
        lines += [f"  unrunnable {n}: {d[:200]}" for n, d in outcomes["unrunnable"]]
    lines += [f"  FAILED {n}: {d[:300]}" for n, d in outcomes["fail"]]
    report(title, lines)
    print("\n".join(lines))
    assert not outcomes["fail"], "\n".join(f"{n}: {d}" for n, d in outcomes["fail"])
    # every case is either lossless and reproduced, or its original could not be run: never silently skipped
    assert len(outcomes["pass"]) + len(outcomes["unrunnable"]) == len(cases)


def test_conformance_quick(node_cases, report):
    """Every 20th node case (a fast, representative subset)."""
    _sweep(node_cases[::QUICK_STRIDE], report, f"ONNX node conformance, quick subset (every {QUICK_STRIDE}th case)")


def test_conformance_full(node_cases, report):
    """Every node case of the installed onnx (about 15 s here, so not marked slow)."""
    assert len(node_cases) > 1000
    _sweep(node_cases, report, "ONNX node conformance, all cases")


def test_sweep_detects_wrong_outputs(node_cases):
    """The output comparison is not vacuous: a model that computes something else is caught on both runtimes."""
    case = next(c for c in node_cases if c.name == "test_relu")
    assert check_case(case) == ("pass", "ort")
    wrong = onnx.ModelProto()
    wrong.CopyFrom(case.model)
    wrong.graph.node[0].op_type = "Abs"
    assert _reproduces("ort", wrong, case) is not None
    assert _reproduces("reference", wrong, case) is not None


def test_round_trip_detects_a_loss():
    """The proto comparison is not vacuous: a model changed in one field is reported."""
    from onnx import helper

    node = helper.make_node("Relu", ["x"], ["y"], name="r")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [2])],
                          [helper.make_tensor_value_info("y", 1, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    assert round_trip_problem(m) is None
    exported = optc.to_onnx(optc.from_onnx(m))
    exported.graph.node[0].name = "other"
    assert canonical_bytes(exported) != canonical_bytes(m)
    assert "node[0]" in proto_diff(m, exported)
