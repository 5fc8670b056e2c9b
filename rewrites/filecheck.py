"""FileCheck-style tests of passes and rules, written in optc's text IR (as MLIR's lit tests and xDSL's
filecheck tests are).

A test file holds the input IR, the pipeline to run and what its printed output must contain::

    // RUN: eliminate-noops,dce
    // RUN-FLAGS: fast-math       (optional: fast-math, print-types, elided=random|zeros, no-infer-shapes)
    // NUMERICS: rtol=1e-5 atol=1e-6             (optional; the default is bit-exact outputs)
    // NO-NUMERICS: why the outputs cannot be compared   (optional, instead of NUMERICS)
    <ir_version: 8, opsets: {ai.onnx: 17}>
    graph g (%x: float32[2,3]) -> (%y: float32[2,3]) {
      %i = Identity(%x)
      %y = Relu(%i)
      return %y
    }
    // CHECK-LABEL: graph g
    // CHECK-NOT: Identity
    // CHECK: %y = Relu(%x)
    // CHECK-NEXT: return %y

The text outside `//` comments is parsed with `optc.ir.parse` (elided payloads stay an error unless
`elided=random` or `elided=zeros` is given); ONNX shape inference runs first (as the rule tests' `parse` does)
unless `no-infer-shapes`; then the pipeline (a `-p` string of `optc optimize`), then the IR verifier. The
printed result (`format_model`; with `print-types`, node outputs show their types) is matched against the checks:

- `CHECK: p` — `p` occurs at or after the end of the previous match;
- `CHECK-NEXT: p` — on the line right after the previous match; `CHECK-SAME: p` — on the same line, after it;
- `CHECK-EMPTY:` — the next line is empty;
- `CHECK-NOT: p` — `p` does not occur between the previous match and the next one (or the end);
- `CHECK-LABEL: p` — splits the output into blocks: the checks after a label match inside its block only.

A file needs at least one CHECK line ("no check strings found"). As in LLVM FileCheck, a `//` comment line that
looks like a misspelled directive fails the test: one that starts with `check` in any case (`// check:`,
`// CHECK-next:`, `// CHECK :`, `// CHECK-NOT Relu`) or with a word close to a CHECK directive (`// CHEKC:`),
unless it is a valid directive and its colon; write prose comments so that they do not start that way.

Patterns are plain text (runs of blanks match any run of blanks) with `{{regex}}`, `[[NAME:regex]]` (match and
remember the text) and `[[NAME]]` (the remembered text). Unless `NO-NUMERICS` is given, the input and output
models run on onnxruntime with the same random inputs (`rules._testing.random_feeds`), and the outputs must
agree bit for bit (NaN matches NaN), or within the `NUMERICS` tolerances. Output names and types must stay.

A failure raises `CheckFailure` (an AssertionError, so pytest shows it as a test failure) naming the test
file's line, the pattern, and the output line nearest to what was expected. Use `run_file(path)` in any
pytest suite, e.g. parametrized over `glob("tests/filecheck/**/*.ir", recursive=True)`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import OptcError

_DIRECTIVE = re.compile(r"^\s*//\s*(?P<kind>[A-Z][A-Z-]*):(?P<rest>.*)$")
_CHECK_KINDS = ("CHECK", "CHECK-NEXT", "CHECK-SAME", "CHECK-NOT", "CHECK-LABEL", "CHECK-EMPTY")
_OTHER_KINDS = ("RUN", "RUN-FLAGS", "NUMERICS", "NO-NUMERICS")
_FLAGS = ("fast-math", "print-types", "no-infer-shapes", "elided=random", "elided=zeros")
_COMMENT_WORD = re.compile(r"^\s*//\s*(?P<word>[A-Za-z][A-Za-z-]*)(?P<after>\s*:?)")


def _misspelled(line: str) -> str | None:
    """The word that starts a `//` comment line when it looks like a misspelled directive, as LLVM FileCheck
    rejects them: a `check` prefix in any case (`check:`, `CHECK-next:`, `CHECK :`, `CHECK Nope`) or a word close
    to a CHECK directive (`CHEKC:`), unless it is a valid directive followed by its colon."""
    m = _COMMENT_WORD.match(line)
    if m is None:
        return None
    word, after = m.group("word"), m.group("after")
    if word in _CHECK_KINDS + _OTHER_KINDS and after == ":":
        return None
    upper = word.upper()
    if word == upper and after == ":" and upper.startswith("CHECK"):
        return None  # an unknown directive (CHECK-DAG:): parse_test names the known ones
    if upper.startswith("CHECK"):
        return word
    close = difflib.get_close_matches(upper, _CHECK_KINDS, n=1, cutoff=0.8)
    return word if close and (word.isupper() or after.strip() == ":") else None


class CheckFailure(AssertionError):
    """A check, the numerics comparison, or the test file itself failed; the message says where and why."""


@dataclass
class Check:
    """One `// CHECK...: pattern` line (`lineno`: 1-based line in the test file)."""

    kind: str
    pattern: str
    lineno: int


@dataclass
class IRTest:
    """A parsed test file: the IR text, the pipeline string, flags, numerics settings and checks."""

    source: str
    text: str
    pipeline: str
    flags: set[str] = field(default_factory=set)
    checks: list[Check] = field(default_factory=list)
    no_numerics: str | None = None  # the reason, when the outputs are not compared
    exact: bool = True
    rtol: float = 0.0
    atol: float = 0.0


@dataclass
class IRTestResult:
    """What `run_test` produced: the printed output and the models before and after the pipeline."""

    output: str
    before: object  # onnx.ModelProto of the input
    after: object  # onnx.ModelProto of the result


def parse_test(text: str, source: str = "<test>") -> IRTest:
    """Read the directives of a test file. Raises CheckFailure for a missing or repeated RUN line, no CHECK
    line at all ("no check strings found"), unknown flags or directives, a comment line that looks like a
    misspelled directive (see the module docstring), and a NUMERICS line that is not `exact` or `rtol=.. atol=..`."""
    pipeline = None
    test = IRTest(source, text, "")
    numerics_seen = False
    for lineno, line in enumerate(text.splitlines(), 1):
        word = _misspelled(line)
        if word is not None:
            raise CheckFailure(f"{source}:{lineno}: '{word}' looks like a misspelled directive (known: "
                               f"{', '.join(_CHECK_KINDS + _OTHER_KINDS)}, each followed by ':')")
        m = _DIRECTIVE.match(line)
        if not m:
            continue
        kind, rest = m.group("kind"), m.group("rest").strip()
        where = f"{source}:{lineno}"
        if kind in _CHECK_KINDS:
            if not rest and kind != "CHECK-EMPTY":
                raise CheckFailure(f"{where}: {kind} has an empty pattern")
            test.checks.append(Check(kind, rest, lineno))
        elif kind == "RUN":
            if pipeline is not None:
                raise CheckFailure(f"{where}: a second RUN line (one pipeline per file: join passes with ',')")
            pipeline = rest
        elif kind == "RUN-FLAGS":
            for flag in filter(None, (f.strip() for f in rest.split(","))):
                if flag not in _FLAGS:
                    raise CheckFailure(f"{where}: unknown flag '{flag}' (known: {', '.join(_FLAGS)})")
                test.flags.add(flag)
        elif kind in ("NUMERICS", "NO-NUMERICS"):
            if numerics_seen:
                raise CheckFailure(f"{where}: NUMERICS / NO-NUMERICS given twice")
            numerics_seen = True
            if kind == "NO-NUMERICS":
                if not rest:
                    raise CheckFailure(f"{where}: NO-NUMERICS needs a reason")
                test.no_numerics = rest
            else:
                _numerics(test, rest, where)
        elif kind.startswith("CHECK") or kind in ("RUN-FLAG", "NUMERIC"):
            raise CheckFailure(f"{where}: unknown directive {kind} (known: {', '.join(_CHECK_KINDS + _OTHER_KINDS)})")
    if pipeline is None:
        raise CheckFailure(f"{source}: no '// RUN: <pipeline>' line")
    if sum(1 for f in test.flags if f.startswith("elided=")) > 1:
        raise CheckFailure(f"{source}: give one of elided=random and elided=zeros")
    if not test.checks:
        raise CheckFailure(f"{source}: no check strings found (no '// CHECK...:' line)")
    test.pipeline = pipeline
    return test


def _numerics(test: IRTest, rest: str, where: str) -> None:
    if rest == "exact":
        return
    m = re.fullmatch(r"rtol=(\S+)\s+atol=(\S+)", rest)
    try:
        test.rtol, test.atol = float(m.group(1)), float(m.group(2))  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        raise CheckFailure(f"{where}: NUMERICS takes 'exact' or 'rtol=<float> atol=<float>', not '{rest}'") from None
    test.exact = False


def run_file(path: str | Path) -> IRTestResult:
    """Run the test in file `path` (see the module docstring); raises CheckFailure when it fails."""
    __tracebackhide__ = True  # pytest shows the failure message, not the harness's frames
    path = Path(path)
    return run_test(parse_test(path.read_text(), str(path)))


def run_test(test: IRTest, passes=None) -> IRTestResult:
    """Parse the IR, run the pipeline (or `passes`, a Pass object that stands in for the RUN line), verify,
    print, match the checks and compare the numerics. Raises CheckFailure."""
    __tracebackhide__ = True
    from ..ir import parse, to_onnx
    from ..ir.printer import format_model, format_type
    from ..ir.verify import verify
    from .passes.infer_shapes import InferShapes
    from .pipelines import build_pipeline, run_pipeline

    elided = next((f.split("=")[1] for f in test.flags if f.startswith("elided=")), "error")
    try:
        model = parse(test.text, elided=elided)
        if "no-infer-shapes" not in test.flags:
            run_pipeline(model, InferShapes())
        before = to_onnx(model)
        outs_before = [(v.name, format_type(v.type)) for v in model.graph.outputs]
        pipeline = passes if passes is not None else build_pipeline(None, test.pipeline)
        run_pipeline(model, pipeline, fast_math="fast-math" in test.flags)
        verify(model)
        after = to_onnx(model)
    except OptcError as exc:
        raise CheckFailure(f"{test.source}: {exc}") from None
    output = format_model(model, types="print-types" in test.flags)
    outs_after = [(v.name, format_type(v.type)) for v in model.graph.outputs]
    if outs_after != outs_before:
        raise CheckFailure(f"{test.source}: the graph outputs changed: {outs_before} -> {outs_after}")
    match_checks(test.checks, output, source=test.source)
    if test.no_numerics is None:
        _compare(test, before, after)
    return IRTestResult(output, before, after)


def _compare(test: IRTest, before, after) -> None:
    __tracebackhide__ = True
    from ..ortsession import session
    from .rules._testing import random_feeds, same_bits

    try:
        feeds = random_feeds(before)
    except (OptcError, ValueError) as exc:  # a sequence, map or string input: no random values for it
        raise CheckFailure(f"{test.source}: no random inputs for this model ({exc}); add '// NO-NUMERICS: <reason>'"
                           ) from None
    try:
        expected = session(before, optimize=False, label="the input model").run(None, feeds)
        got = session(after, optimize=False, label="the output model").run(None, feeds)
    except OptcError as exc:
        raise CheckFailure(f"{test.source}: {exc} (add '// NO-NUMERICS: <reason>' if it cannot run)") from None
    except Exception as exc:  # noqa: BLE001 - onnxruntime's run errors have no common type
        from ..ortsession import first_line

        raise CheckFailure(f"{test.source}: onnxruntime failed: {first_line(exc)}") from None
    names = [o.name for o in before.graph.output]
    for name, e, g in zip(names, expected, got, strict=True):
        e, g = np.asarray(e), np.asarray(g)
        if e.shape != g.shape or e.dtype != g.dtype:
            raise CheckFailure(f"{test.source}: output {name}: {e.dtype}{list(e.shape)} before, "
                               f"{g.dtype}{list(g.shape)} after")
        if test.exact:
            bad = ~same_bits(g, e)
            how = "bit for bit"
        else:
            with np.errstate(invalid="ignore"):
                bad = ~np.isclose(g, e, rtol=test.rtol, atol=test.atol, equal_nan=True)
            how = f"within rtol={test.rtol} atol={test.atol}"
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise CheckFailure(f"{test.source}: output {name} differs {how} in {int(bad.sum())} of {bad.size} "
                               f"elements, first at {idx}: {e[idx]!r} before, {g[idx]!r} after")


# -- matching -----------------------------------------------------------------------------------------------------

_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _pieces(check: Check, source: str) -> list[tuple[str, str, str]]:
    """Split a pattern into ("text", literal, ""), ("re", regex, ""), ("def", name, regex) and ("use", name, "").
    A `[[NAME:regex]]` ends at the first `]]` outside brackets of the regex, so `[[V:[a-z]]]` works."""
    text, out, pos, lit = check.pattern, [], 0, 0
    while pos < len(text):
        if text.startswith("{{", pos):
            close = text.find("}}", pos + 2)
            if close < 0:
                raise CheckFailure(f"{source}:{check.lineno}: {check.kind}: '{{{{' without '}}}}' in '{text}'")
            out += [("text", text[lit:pos], ""), ("re", text[pos + 2:close], "")]
            pos = lit = close + 2
        elif text.startswith("[[", pos):
            m = _VAR_NAME.match(text, pos + 2)
            if m is None:
                raise CheckFailure(f"{source}:{check.lineno}: {check.kind}: '[[' needs a variable name in '{text}'")
            out.append(("text", text[lit:pos], ""))
            if text.startswith("]]", m.end()):
                out.append(("use", m.group(0), ""))
                pos = lit = m.end() + 2
                continue
            if not text.startswith(":", m.end()):
                raise CheckFailure(f"{source}:{check.lineno}: {check.kind}: expected ':' or ']]' after "
                                   f"[[{m.group(0)} in '{text}'")
            i, depth = m.end() + 1, 0
            while i < len(text) and not (depth == 0 and text.startswith("]]", i)):
                if text[i] == "\\":
                    i += 1
                elif text[i] == "[":
                    depth += 1
                elif text[i] == "]":
                    depth -= 1
                i += 1
            if i >= len(text):
                raise CheckFailure(f"{source}:{check.lineno}: {check.kind}: '[[' without ']]' in '{text}'")
            out.append(("def", m.group(0), text[m.end() + 1:i]))
            pos = lit = i + 2
        else:
            pos += 1
    out.append(("text", text[lit:], ""))
    return out


def _compile(check: Check, variables: dict[str, str], source: str) -> tuple[re.Pattern, list[str]]:
    """The regex of a pattern, and the variables it defines."""
    parts: list[str] = []
    defined: list[str] = []
    for kind, a, b in _pieces(check, source):
        if kind == "text":
            parts.append(_literal(a))
        elif kind == "re":
            parts.append(f"(?:{a})")
        elif kind == "def":
            if check.kind in ("CHECK-NOT", "CHECK-LABEL"):
                raise CheckFailure(f"{source}:{check.lineno}: {check.kind} cannot define variables")
            parts.append(f"(?P<v_{a}>{b})" if a not in defined else f"(?:{b})")
            defined.append(a)
        elif a in defined:
            parts.append(f"(?P=v_{a})")
        elif a in variables:
            parts.append(re.escape(variables[a]))
        else:
            raise CheckFailure(f"{source}:{check.lineno}: {check.kind}: variable [[{a}]] is not defined by an "
                               f"earlier check")
    try:
        return re.compile("".join(parts)), defined
    except re.error as exc:
        raise CheckFailure(f"{source}:{check.lineno}: {check.kind}: bad regex in '{check.pattern}': {exc}") from None


def _literal(s: str) -> str:
    return "[ \t]+".join(re.escape(w) for w in re.split(r"[ \t]+", s))


class _Output:
    def __init__(self, text: str):
        self.text = text
        self.starts = [0]
        for m in re.finditer("\n", text):
            self.starts.append(m.end())

    def line_of(self, pos: int) -> int:
        """0-based line of offset `pos`."""
        lo, hi = 0, len(self.starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.starts[mid] <= pos:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def line_span(self, line: int) -> tuple[int, int]:
        start = self.starts[line]
        end = self.starts[line + 1] - 1 if line + 1 < len(self.starts) else len(self.text)
        return start, end

    def line(self, line: int) -> str:
        s, e = self.line_span(line)
        return self.text[s:e]


def match_checks(checks: list[Check], output: str, *, source: str = "<checks>") -> None:
    """Match `checks` against `output` (FileCheck semantics, see the module docstring). Raises CheckFailure
    naming the failing check's line in `source` and the nearest output line."""
    __tracebackhide__ = True  # pytest shows the failure message, not the harness's frames
    out = _Output(output)
    variables: dict[str, str] = {}
    # labels first: each is searched after the previous one, and bounds the block of checks after it
    blocks: list[tuple[int, int, int, list[Check]]] = []  # (start, end, line of the label, checks)
    labels: list[tuple[Check, int, int]] = []
    pos = 0
    for c in checks:
        if c.kind == "CHECK-LABEL":
            rx, _ = _compile(c, variables, source)
            m = rx.search(output, pos)
            if m is None:
                raise _failure(c, source, out, pos, len(output), "expected label not found in the output")
            labels.append((c, m.start(), m.end()))
            pos = m.end()
    # the checks between labels
    groups: list[list[Check]] = [[]]
    for c in checks:
        if c.kind == "CHECK-LABEL":
            groups.append([])
        else:
            groups[-1].append(c)
    bounds = [0] + [e for _, _, e in labels]
    ends = [s for _, s, _ in labels] + [len(output)]
    for i, group in enumerate(groups):
        start, end = bounds[i], ends[i]
        last_line = out.line_of(labels[i - 1][1]) if i > 0 else -1
        blocks.append((start, end, last_line, group))
    for start, end, last_line, group in blocks:
        _match_block(group, out, start, end, last_line, variables, source)


def _match_block(group: list[Check], out: _Output, pos: int, end: int, last_line: int, variables: dict[str, str],
                 source: str) -> None:
    __tracebackhide__ = True
    nots: list[tuple[Check, re.Pattern]] = []
    for c in group:
        if c.kind == "CHECK-NOT":
            nots.append((c, _compile(c, variables, source)[0]))
            continue
        if c.kind == "CHECK-EMPTY":
            line = last_line + 1
            if line >= len(out.starts) or out.line(line).strip():
                raise _failure(c, source, out, pos, end, "expected an empty line after the previous match")
            m_start = m_end = out.line_span(line)[0]
            new_vars: dict[str, str] = {}
        else:
            rx, defined = _compile(c, variables, source)
            if c.kind == "CHECK":
                lo, hi = pos, end
            elif c.kind == "CHECK-SAME":
                if last_line < 0:
                    raise CheckFailure(f"{source}:{c.lineno}: CHECK-SAME needs a match before it")
                lo, hi = pos, min(end, out.line_span(last_line)[1])
            else:  # CHECK-NEXT
                if last_line < 0:
                    raise CheckFailure(f"{source}:{c.lineno}: CHECK-NEXT needs a match before it")
                if last_line + 1 >= len(out.starts):
                    raise _failure(c, source, out, pos, end, "expected on the line after the previous match, "
                                   "but the output ends there")
                lo, hi = out.line_span(last_line + 1)
                lo, hi = max(lo, pos), min(hi, end)
            m = rx.search(out.text, lo, hi) if lo <= hi else None
            if m is None:
                where = {"CHECK": "in the output", "CHECK-SAME": "on the same line as the previous match",
                         "CHECK-NEXT": "on the line after the previous match"}[c.kind]
                raise _failure(c, source, out, lo, hi if c.kind == "CHECK-SAME" else end,
                               f"expected string not found {where}")
            m_start, m_end = m.start(), m.end()
            new_vars = {k: m.group(f"v_{k}") for k in defined}
        for nc, nrx in nots:
            bad = nrx.search(out.text, pos, m_start)
            if bad is not None:
                raise _not_failure(nc, source, out, bad)
        nots = []
        variables.update(new_vars)
        pos = m_end
        last_line = out.line_of(m_start) if c.kind != "CHECK-EMPTY" else last_line + 1
    for nc, nrx in nots:
        bad = nrx.search(out.text, pos, end)
        if bad is not None:
            raise _not_failure(nc, source, out, bad)


def _not_failure(c: Check, source: str, out: _Output, m: re.Match) -> CheckFailure:
    line = out.line_of(m.start())
    return CheckFailure(f"{source}:{c.lineno}: CHECK-NOT: excluded string found in the output\n"
                        f"  // CHECK-NOT: {c.pattern}\n"
                        f"  found at output line {line + 1}: {out.line(line)!r}\n{_numbered(out, line)}")


def _failure(c: Check, source: str, out: _Output, lo: int, hi: int, what: str) -> CheckFailure:
    lo = min(lo, len(out.text))
    first = out.line_of(lo)
    last = out.line_of(max(lo, min(hi, len(out.text)) - 1)) if out.text else 0
    plain = "".join(a for kind, a, _ in _pieces(c, source) if kind == "text").strip()
    best, best_score = first, -1.0
    for i in range(first, last + 1):
        score = difflib.SequenceMatcher(None, plain, out.line(i).strip()).ratio()
        if score > best_score:
            best, best_score = i, score
    return CheckFailure(f"{source}:{c.lineno}: {c.kind}: {what}\n"
                        f"  // {c.kind}: {c.pattern}\n"
                        f"  scanning from output line {first + 1}: {out.line(first)!r}\n"
                        f"  nearest output line {best + 1}: {out.line(best)!r}\n{_numbered(out, best)}")


def _numbered(out: _Output, mark: int) -> str:
    lines = out.text.split("\n")
    return "--- output ---\n" + "\n".join(f"{'>' if i == mark else ' '}{i + 1:4d} | {s}" for i, s in enumerate(lines))
