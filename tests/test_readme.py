"""README.md's code blocks are a test: every ```bash, ```console and ```python block runs as written, from the
repository root, in document order (a later block may use what an earlier one wrote, as a reader would).

- bash: the block runs with `bash -e` and must exit 0. Install steps (`python3 -m venv DIR`, `. DIR/bin/activate`,
  `pip install ...`) at the start of a `&&` chain are left out: the test runs in the environment that has optc
  installed, and CI (`.ci/run`) runs the install itself. They are counted in the summary.
- console: each `$ command` runs with bash; the lines after it are its expected output, compared with what
  the terminal would show (stdout and stderr together, TVM's native log lines aside). When they hold
  `optc: error:` the command must fail, otherwise it must succeed. Lines are compared with numbers and runs of
  spaces normalized (timings and sizes vary); a line `...` stands for any number of lines.
- python: the block runs with this interpreter and must exit 0.

Every block starts with an empty calibration cache (`XDG_CACHE_HOME` in a temporary directory), so what a block
prints does not depend on what ran before it, and the user's own cache is left alone.

A block is skipped only when the line before it (blank lines aside) is `<!-- readme-test: skip (REASON) -->`;
skipped blocks and their reasons are printed with the summary. Outputs must go outside the package directory
(e.g. /tmp): a fast test checks the paths the blocks write, the slow one that no output appeared in the
repository.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUNNABLE = ("bash", "console", "python")
OUTPUT_SUFFIXES = (".onnx", ".so", ".json", ".npz", ".data", ".md", ".html")

_FENCE = re.compile(r"^```(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*readme-test:(.*)-->\s*$")
_SKIP = re.compile(r"^\s*skip\s*\(([^)]+)\)\s*$")
_INSTALL = re.compile(r"^(python3? -m venv \S+|(\.|source) \S*bin/activate|(python3? -m )?pip install .+)$")
# paths a command writes: -o/--output and --report/--save-* values, shell redirections
_CLI_OUTPUT = re.compile(r"(?:^|\s)(?:-o|--output|--report|--save-inputs|--save-outputs|--db|>)\s+(\S+)")
# paths Python code writes: save(model, "path") / .export("path") / write_json("path", ...)
_PY_OUTPUT = re.compile(r"\b(?:save|export|write_json|write_npz)\((?:[^()\"']*,\s*)?[\"']([^\"']+)[\"']")
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)*(?:e[-+]?\d+)?")
_TVM_LOG = re.compile(r"^\[\d{2}:\d{2}:\d{2}\] \S+\.(cc|h|cpp):\d+: ")


@dataclass
class Block:
    lang: str
    line: int  # of the opening fence, 1-based
    code: str
    skip: str | None  # the reason, when marked to be skipped

    @property
    def where(self) -> str:
        return f"README.md:{self.line} ({self.lang})"


def parse_readme(text: str) -> list[Block]:
    """The fenced blocks of `text`, with the skip marker that precedes each (ValueError for a marker that is not
    `skip (REASON)`, one not followed by a block, or an unclosed fence)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    marker: tuple[int, str] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _MARKER.match(line.strip())
        if m:
            skip = _SKIP.match(m.group(1))
            if not skip:
                raise ValueError(f"README.md:{i + 1}: a readme-test marker must be 'skip (REASON)'")
            marker = (i + 1, skip.group(1).strip())
        elif (fence := _FENCE.match(line)) is not None:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
            if end is None:
                raise ValueError(f"README.md:{i + 1}: unclosed code block")
            blocks.append(Block(fence.group(1), i + 1, "\n".join(lines[i + 1:end]) + "\n",
                                marker[1] if marker else None))
            marker = None
            i = end
        elif line.strip() and marker is not None:
            raise ValueError(f"README.md:{marker[0]}: a readme-test marker must come right before a code block")
        i += 1
    return blocks


def without_install(code: str) -> tuple[str, int]:
    """`code` with the install steps at the start of each `&&` chain left out, and how many were."""
    dropped = 0
    out = []
    for line in code.splitlines():
        steps = [s.strip() for s in line.split(" && ")]
        while len(steps) > 1 and _INSTALL.match(steps[0]):
            steps.pop(0)
            dropped += 1
        if len(steps) == 1 and _INSTALL.match(steps[0]):
            dropped += 1
            continue
        out.append(" && ".join(steps))
    return "\n".join(out) + "\n", dropped


def console_commands(code: str) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for each `$ ` line of a console block."""
    commands: list[tuple[str, list[str]]] = []
    for line in code.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands:
            commands[-1][1].append(line)
    return commands


def output_paths(block: Block) -> list[str]:
    """The paths a block's commands or code write (see _CLI_OUTPUT / _PY_OUTPUT)."""
    if block.lang == "python":
        return _PY_OUTPUT.findall(block.code)
    code = block.code
    if block.lang == "console":
        code = "\n".join(cmd for cmd, _ in console_commands(code))
    return [p.strip("'\"") for p in _CLI_OUTPUT.findall(code)]


def _norm(line: str) -> str:
    return " ".join(_NUMBER.sub("#", line).split())


def match_lines(expected: list[str], actual: list[str]) -> str | None:
    """None when `actual` matches `expected` (normalized; `...` matches any lines), else what differs."""
    exp = [_norm(e) for e in expected if e.strip()]
    act = [_norm(a) for a in actual if a.strip() and not _TVM_LOG.match(a)]

    def go(i: int, j: int) -> bool:
        if i == len(exp):
            return j == len(act)
        if exp[i] == "...":
            return any(go(i + 1, k) for k in range(j, len(act) + 1))
        return j < len(act) and exp[i] == act[j] and go(i + 1, j + 1)

    if go(0, 0):
        return None
    return "expected:\n  " + "\n  ".join(expected) + "\ngot:\n  " + "\n  ".join(actual)


def _run(argv: list[str], cache: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run from the repository root with this venv's optc and python first on PATH; stderr joins stdout."""
    env = dict(os.environ, XDG_CACHE_HOME=cache)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def run_block(block: Block) -> tuple[str | None, int]:
    """Run one block: (None or what failed, install steps left out)."""
    with tempfile.TemporaryDirectory(prefix="optc-readme-cache-") as cache:
        if block.lang == "python":
            r = _run([sys.executable, "-c", block.code], cache)
            return (None if r.returncode == 0 else f"exit {r.returncode}\n{r.stdout[-3000:]}"), 0
        if block.lang == "bash":
            code, dropped = without_install(block.code)
            r = _run(["bash", "-e", "-c", code], cache)
            return (None if r.returncode == 0 else f"exit {r.returncode}\n{r.stdout[-3000:]}"), dropped
        dropped = 0
        for command, expected in console_commands(block.code):
            command, n = without_install(command)
            dropped += n
            r = _run(["bash", "-c", command], cache)
            fails = any("optc: error:" in e for e in expected)
            if fails != (r.returncode != 0):
                return (f"$ {command.strip()}: exit {r.returncode}, expected {'a failure' if fails else '0'}\n"
                        f"{r.stdout[-3000:]}"), dropped
            diff = match_lines(expected, r.stdout.splitlines()) if expected else None
            if diff:
                return f"$ {command.strip()}: output differs\n{diff}", dropped
        return None, dropped


# -- fast checks ---------------------------------------------------------------------------------------------


def test_readme_parses_and_has_runnable_blocks():
    blocks = parse_readme(README.read_text())
    runnable = [b for b in blocks if b.lang in RUNNABLE]
    assert runnable, "README.md has no bash / console / python block"
    assert any(b.lang == "bash" and b.skip is None for b in runnable)


def test_readme_blocks_write_outside_the_package():
    """Every path a runnable block writes is absolute and outside the repository (e.g. /tmp/...)."""
    bad = []
    for block in parse_readme(README.read_text()):
        if block.lang not in RUNNABLE or block.skip:
            continue
        for path in output_paths(block):
            if path.startswith("$") or path == "/dev/null":
                continue
            resolved = Path(path) if os.path.isabs(path) else ROOT / path
            if not os.path.isabs(path) or resolved.resolve().is_relative_to(ROOT):
                bad.append(f"{block.where}: {path}")
    assert not bad, "README blocks write inside the package directory:\n" + "\n".join(bad)


def test_parser_and_matcher_catch_what_they_should():
    """The harness is not vacuous: markers, install steps, output paths and line matching."""
    text = "a\n<!-- readme-test: skip (needs a GPU) -->\n\n```bash\nnvidia-smi\n```\n```python\nx = 1\n```\n"
    blocks = parse_readme(text)
    assert [(b.lang, b.skip) for b in blocks] == [("bash", "needs a GPU"), ("python", None)]
    with pytest.raises(ValueError, match="right before a code block"):
        parse_readme("<!-- readme-test: skip (x) -->\ntext\n```bash\nls\n```\n")
    with pytest.raises(ValueError, match="skip \\(REASON\\)"):
        parse_readme("<!-- readme-test: maybe -->\n```bash\nls\n```\n")
    code, dropped = without_install('python3 -m venv .venv && . .venv/bin/activate && pip install . && optc inspect m\n'
                                    'pip install -e ".[dev]"\n')
    assert (code, dropped) == ("optc inspect m\n", 4)
    assert output_paths(Block("bash", 1, "optc optimize m.onnx -o out.onnx --report /tmp/r.json > x.txt\n", None)) \
        == ["out.onnx", "/tmp/r.json", "x.txt"]
    assert output_paths(Block("python", 1, 'optc.save(model, "a.onnx")\nm.export("/tmp/b.so")\n', None)) \
        == ["a.onnx", "/tmp/b.so"]
    assert match_lines(["took 1.5 s", "...", "end"], ["took 2.25 s", "x", "y", "end"]) is None
    assert match_lines(["nodes: 3"], ["edges: 3"]) is not None
    assert match_lines(["a"], ["a", "b"]) is not None


# -- the blocks, run ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_readme_blocks_run_as_written(capsys):
    blocks = [b for b in parse_readme(README.read_text()) if b.lang in RUNNABLE]
    outputs_before = _package_outputs()
    failures, skipped, ran, installs = [], [], {lang: 0 for lang in RUNNABLE}, 0
    for block in blocks:
        if block.skip:
            skipped.append(f"{block.where}: {block.skip}")
            continue
        failure, dropped = run_block(block)
        ran[block.lang] += 1
        installs += dropped
        if failure:
            failures.append(f"{block.where}: {failure}")
    new = sorted(_package_outputs() - outputs_before)
    with capsys.disabled():
        print(f"\nREADME: ran {sum(ran.values())} blocks ({', '.join(f'{n} {k}' for k, n in ran.items())}), "
              f"{len(failures)} failed; {installs} install steps left to CI; {len(skipped)} skipped"
              + "".join(f"\n  skipped {s}" for s in skipped))
    assert not failures, "\n\n".join(failures)
    assert not new, f"README blocks wrote into the package directory: {new}"


def _package_outputs() -> set[str]:
    """Output-like files at the repository root and in examples/ (what a README block might leave there)."""
    found = set()
    for folder in (ROOT, ROOT / "examples"):
        found |= {str(p.relative_to(ROOT)) for p in folder.iterdir() if p.is_file() and p.suffix in OUTPUT_SUFFIXES}
    return found
