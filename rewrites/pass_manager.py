"""Pass infrastructure: the `Pass` base class, the pass registry, pipelines and fixed-point groups, pipeline
strings (`"fold-constants,cse,fuse{set=conv-bn},fixed-point{max-iterations=4}(cse,dce)"`), plugins from the
`optc.passes` entry-point group, and the `PassManager` that runs a pipeline with instruments
(`--print-ir-after`, `--verify-each`, `--time-passes`, `--bisect-limit`, `--report`).

A pass is a dataclass with a kebab-case `name` (a class variable), its options as fields, and
`run(model, ctx) -> PassResult`. Every change a pass makes counts as a rewrite: it asks `ctx.budget.take()`
first (and skips the change when that says no) and logs it with `ctx.record(...)` after, so `--bisect-limit N`
applies exactly the first N rewrites of a whole pipeline.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, TextIO

from ..errors import OptcError, did_you_mean
from ..ir.core import Model, gc_paused
from .context import PassContext, PassResult

_KEBAB = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


# -- passes -----------------------------------------------------------------------------------------------


@dataclass
class Pass:
    """Base class of passes. Subclasses are dataclasses: `name` and `description` are class variables,
    options are fields (`max_size: int = 1024` is written `name{max-size=1024}` in a pipeline string), and
    `option_help` says what each option does (`optc passes NAME` prints it)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    option_help: ClassVar[dict[str, str]] = {}

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        raise NotImplementedError

    def children(self) -> list[Pass]:
        """Nested passes (pipelines and groups); empty for a leaf pass."""
        return []

    def options(self) -> dict[str, Any]:
        """The option values, keyed by their kebab-case names."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)
                if f.init and not f.name.startswith("_")}

    def spec(self) -> str:
        """This pass as a pipeline-string element (options that differ from their defaults only)."""
        opts = []
        for f in dataclasses.fields(self):
            if not f.init or f.name.startswith("_"):
                continue
            v = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
            if v != default:
                opts.append(f"{f.name.replace('_', '-')}={_format_option(v)}")
        return self.name + ("{" + ",".join(opts) + "}" if opts else "")


def _format_option(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    return str(v)


@dataclass
class Pipeline(Pass):
    """Run passes in order, once."""

    name: ClassVar[str] = "pipeline"
    description: ClassVar[str] = "run a list of passes in order"
    passes: list[Pass] = field(default_factory=list)

    def children(self) -> list[Pass]:
        return self.passes

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        return PassManager(self).run(model, ctx).result

    def spec(self) -> str:
        return ",".join(p.spec() for p in self.passes)


@dataclass
class FixedPoint(Pass):
    """Repeat a group of passes until none of them changes the model (at most `max_iterations` rounds)."""

    name: ClassVar[str] = "fixed-point"
    description: ClassVar[str] = "repeat a group of passes until nothing changes (capped)"
    option_help: ClassVar[dict[str, str]] = {"max-iterations": "at most this many rounds of the group"}
    passes: list[Pass] = field(default_factory=list)
    max_iterations: int = 8

    def children(self) -> list[Pass]:
        return self.passes

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        return PassManager(self).run(model, ctx).result

    def spec(self) -> str:
        opts = f"{{max-iterations={self.max_iterations}}}" if self.max_iterations != 8 else ""
        return f"fixed-point{opts}(" + ",".join(p.spec() for p in self.passes) + ")"


# -- registry ---------------------------------------------------------------------------------------------

PassFactory = Callable[..., Pass]


@dataclass
class PassInfo:
    """A registered pass: its name, a factory taking the options as keyword arguments, and its description."""

    name: str
    factory: PassFactory
    description: str
    options: dict[str, Any]  # kebab-case option name -> default (or a type when required)
    origin: str = "optc"
    option_help: dict[str, str] = field(default_factory=dict)  # kebab-case option name -> what it does
    doc: str = ""  # the full description (the pass class's docstring)


_REGISTRY: dict[str, PassInfo] = {}
_plugins_loaded = False
_builtins_loaded = False


def register_pass(cls=None, *, name: str | None = None, description: str | None = None,
                  factory: PassFactory | None = None, options: dict[str, Any] | None = None,
                  replace: bool = False, origin: str = "optc"):
    """Register a pass class (usable as a decorator) so pipelines and the CLI can name it.

    `name` defaults to the class's `name`; `factory` (default: the class) is called with the options as keyword
    arguments. Raises ValueError for a name that is not kebab-case or is already taken (unless `replace`).
    """

    def add(c):
        pname = name or getattr(c, "name", "")
        if not pname or not _KEBAB.match(pname):
            raise ValueError(f"pass name {pname!r} is not kebab-case (e.g. 'fold-constants')")
        if pname in _REGISTRY and not replace and _REGISTRY[pname].factory is not (factory or c):
            raise ValueError(f"a pass named '{pname}' is already registered")
        opts = options
        if opts is None:
            opts = {}
            if dataclasses.is_dataclass(c):
                for f in dataclasses.fields(c):
                    if not f.init or f.name.startswith("_") or f.name == "passes":
                        continue
                    if f.default is not dataclasses.MISSING:
                        opts[f.name.replace("_", "-")] = f.default
                    elif f.default_factory is not dataclasses.MISSING:
                        opts[f.name.replace("_", "-")] = f.default_factory()
                    else:
                        opts[f.name.replace("_", "-")] = f.type
        desc = description if description is not None else (getattr(c, "description", "") or _first_line(c))
        helps = {k.replace("_", "-"): v for k, v in (getattr(c, "option_help", None) or {}).items()}
        doc = inspect.cleandoc(c.__doc__) if isinstance(c, type) and c.__doc__ else ""
        _REGISTRY[pname] = PassInfo(pname, factory or c, desc, opts, origin, helps, doc)
        return c

    return add(cls) if cls is not None else add


def _first_line(obj) -> str:
    doc = (getattr(obj, "__doc__", "") or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def _ensure_loaded() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        from . import passes  # noqa: F401  (registers the built-in passes)
    load_plugins()


def load_plugins(*, warn: TextIO | None = None) -> list[str]:
    """Load passes from the `optc.passes` entry-point group (once). Each entry point names a Pass class, a list
    of them, or a callable that registers passes itself. A broken plugin is reported and skipped."""
    global _plugins_loaded
    if _plugins_loaded:
        return []
    _plugins_loaded = True
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group="optc.passes"):
        try:
            obj = ep.load()
            dist = getattr(ep, "dist", None)
            origin = f"plugin {dist.name if dist else ep.value}"
            items = obj if isinstance(obj, list | tuple) else [obj]
            for item in items:
                if isinstance(item, type) and issubclass(item, Pass):
                    register_pass(item, origin=origin)
                elif callable(item):
                    item()
                else:
                    raise TypeError(f"{item!r} is neither a Pass subclass nor a callable")
            loaded.append(ep.name)
        except Exception as exc:  # a broken plugin must not break optc
            print(f"optc: warning: pass plugin '{ep.name}' ({ep.value}) failed to load: "
                  f"{type(exc).__name__}: {exc}", file=warn or sys.stderr)
    return loaded


def registered_passes() -> dict[str, PassInfo]:
    """Every registered pass (built-ins and plugins), by name."""
    _ensure_loaded()
    return dict(sorted(_REGISTRY.items()))


def get_pass_info(name: str) -> PassInfo:
    _ensure_loaded()
    info = _REGISTRY.get(name)
    if info is None:
        raise OptcError(f"unknown pass '{name}'{_suggest(name, _REGISTRY)}; `optc passes` lists them")
    return info


def _suggest(name: str, known: Iterable[str]) -> str:

    return did_you_mean(name, known)


def create_pass(name: str, options: dict[str, str] | None = None) -> Pass:
    """Instantiate a registered pass from string options (`{"max-size": "100"}`), converting each value to
    the type of the option's default. Unknown options are an OptcError naming the valid ones."""
    info = get_pass_info(name)
    kwargs: dict[str, Any] = {}
    for key, raw in (options or {}).items():
        if key not in info.options:
            valid = ", ".join(info.options) or "none"
            raise OptcError(f"pass '{name}' has no option '{key}'{_suggest(key, info.options)} "
                            f"(its options: {valid})")
        kwargs[key.replace("-", "_")] = _convert_option(name, key, raw, info.options[key])
    try:
        return info.factory(**kwargs)
    except OptcError:
        raise
    except (TypeError, ValueError) as exc:
        raise OptcError(f"pass '{name}': {exc}") from None


def _convert_option(pass_name: str, key: str, raw: str, default: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    kind = default if isinstance(default, type) else type(default)
    try:
        if kind is bool:
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            return int(raw, 0)
        if kind is float:
            return float(raw)
        if default is None:  # optional int/str: try a number first
            if raw.lower() == "none":
                return None
            try:
                return int(raw, 0)
            except ValueError:
                return raw
    except ValueError:
        raise OptcError(f"pass '{pass_name}': option '{key}' expects {kind.__name__}, got '{raw}'") from None
    return raw


# -- pipeline strings -------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)|(?P<punct>[{}(),])|(?P<other>\S))")


def parse_pipeline(text: str) -> Pipeline:
    """Parse a pipeline string: passes separated by commas, options in braces (`name{key=value,...}`), and
    groups in parentheses (`fixed-point{max-iterations=4}(cse,dce)` repeats the group until nothing changes).
    Raises OptcError with the position of the problem."""
    parser = _PipelineParser(text)
    passes = parser.parse_list(top=True)
    return Pipeline(passes)


class _PipelineParser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def error(self, msg: str) -> OptcError:
        return OptcError(f"bad pipeline '{self.text}': {msg} at column {self.pos + 1}")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            raise self.error(f"expected '{ch}'" + (f", found '{self.peek()}'" if self.peek() else ""))
        self.pos += 1

    def name(self) -> str:
        self.skip_ws()
        m = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*").match(self.text, self.pos)
        if not m:
            found = self.peek()
            raise self.error("expected a pass name" + (f", found '{found}'" if found else ""))
        self.pos = m.end()
        return m.group(0)

    def parse_list(self, top: bool) -> list[Pass]:
        passes: list[Pass] = []
        if top and not self.text.strip():
            return passes
        while True:
            passes.append(self.parse_pass())
            ch = self.peek()
            if ch == ",":
                self.pos += 1
                continue
            if top and ch:
                raise self.error(f"unexpected '{ch}'")
            return passes

    def parse_pass(self) -> Pass:
        start = self.pos
        name = self.name()
        options: dict[str, str] = {}
        if self.peek() == "{":
            self.pos += 1
            while self.peek() != "}":
                if not self.peek():
                    raise self.error(f"unclosed '{{' after '{name}'")
                key = self.name()
                self.expect("=")
                self.skip_ws()
                m = re.compile(r"[^,{}()=\s]+").match(self.text, self.pos)
                if not m:
                    raise self.error(f"option '{key}' of '{name}' needs a value")
                if key in options:
                    raise self.error(f"option '{key}' of '{name}' is given twice")
                options[key] = m.group(0)
                self.pos = m.end()
                if self.peek() == ",":
                    self.pos += 1
                elif self.peek() != "}":
                    raise self.error(f"expected ',' or '}}' in the options of '{name}'")
            self.pos += 1
        children = None
        if self.peek() == "(":
            self.pos += 1
            children = self.parse_list(top=False)
            self.expect(")")
        try:
            if name == "fixed-point":
                if children is None:
                    raise self.error("'fixed-point' needs a group of passes in parentheses")
                bad = set(options) - {"max-iterations"}
                if bad:
                    raise OptcError(f"pass 'fixed-point' has no option '{sorted(bad)[0]}' (its options: "
                                    f"max-iterations)")
                n = _convert_option("fixed-point", "max-iterations", options.get("max-iterations", "8"), 8)
                if n < 1:
                    raise OptcError("pass 'fixed-point': max-iterations must be at least 1")
                return FixedPoint(children, max_iterations=n)
            if name == "pipeline":
                if options:
                    raise OptcError("pass 'pipeline' takes no options")
                return Pipeline(children or [])
            if children is not None:
                self.pos = start
                raise self.error(f"pass '{name}' does not take a group of passes")
            return create_pass(name, options)
        except OptcError as exc:
            if str(exc).startswith("bad pipeline"):
                raise
            raise OptcError(f"bad pipeline '{self.text}': {exc}") from None


# -- instruments and the pass manager --------------------------------------------------------------------


def count_nodes(model: Model) -> int:
    """Nodes in the model: main graph, subgraphs and function bodies."""
    return sum(len(g) for g in model.graphs())


@dataclass
class PassRecord:
    """One run of one leaf pass, for reports."""

    name: str
    spec: str
    seconds: float
    nodes_before: int
    nodes_after: int
    changed: bool
    converged: bool
    counts: dict[str, int]
    rewrites: int  # rewrites applied (budget units taken) by this run

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Instrument:
    """Hooks around every leaf pass the manager runs."""

    def before_pass(self, p: Pass, model: Model, ctx: PassContext) -> None:
        pass

    def after_pass(self, p: Pass, model: Model, ctx: PassContext, record: PassRecord) -> None:
        pass

    def finish(self, report: PipelineReport) -> None:
        pass


class PrintIRAfter(Instrument):
    """Print the IR after the passes named (or every pass for 'all')."""

    def __init__(self, names: Iterable[str], stream: TextIO | None = None):
        self.names = set(names)
        self.stream = stream

    def after_pass(self, p, model, ctx, record):
        if "all" in self.names or p.name in self.names:
            from ..ir.printer import format_model

            out = self.stream or sys.stderr
            print(f"// -----// IR after {record.spec} //----- //", file=out)
            print(format_model(model), file=out)


class VerifyEach(Instrument):
    """Run the IR verifier after every pass; fail naming the pass that broke an invariant."""

    def after_pass(self, p, model, ctx, record):
        from ..ir.verify import VerifyError, verify

        try:
            verify(model)
        except VerifyError as exc:
            raise OptcError(f"verification failed after pass '{record.spec}': {exc}") from None


class TimePasses(Instrument):
    """Print a table of time per pass (summed over repeats) when the pipeline ends."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream

    def finish(self, report):
        out = self.stream or sys.stderr
        totals: dict[str, list[float]] = {}
        for r in report.passes:
            t = totals.setdefault(r.spec, [0.0, 0, 0])
            t[0] += r.seconds
            t[1] += 1
            t[2] += r.rewrites
        total = sum(t[0] for t in totals.values()) or 1e-12
        print("===-------------------------------------------------------------------------===", file=out)
        print("                          ... Pass execution timing report ...", file=out)
        print("===-------------------------------------------------------------------------===", file=out)
        print(f"  {'wall (s)':>10}  {'share':>6}  {'runs':>4}  {'rewrites':>8}  pass", file=out)
        for spec, (secs, runs, rw) in sorted(totals.items(), key=lambda kv: -kv[1][0]):
            print(f"  {secs:10.4f}  {100 * secs / total:5.1f}%  {runs:4d}  {rw:8d}  {spec}", file=out)
        print(f"  {total:10.4f}  100.0%  {'':4}  {report.rewrites:8d}  total", file=out)


@dataclass
class PipelineReport:
    """What a pipeline run did: per-pass records, the overall result and the rewrite log."""

    result: PassResult
    passes: list[PassRecord] = field(default_factory=list)
    nodes_before: int = 0
    nodes_after: int = 0
    seconds: float = 0.0
    rewrites: int = 0
    bisect_limit: int | None = None
    last_rewrite: Any = None  # the RewriteRecord numbered `bisect_limit`, when a limit was set
    rule_stats: dict[str, Any] = field(default_factory=dict)  # rule name -> RuleStats (attempts, rejections...)
    fold_refusals: list[Any] = field(default_factory=list)  # FoldRefusal: folds over the size limit
    fold_size_limit: int | None = None

    def to_json(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for r in self.passes:
            for k, v in r.counts.items():
                counts[k] = counts.get(k, 0) + v
        d: dict[str, Any] = {
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "seconds": self.seconds,
            "rewrites": self.rewrites,
            "changed": self.result.changed,
            "converged": self.result.converged,
            "rule_counts": counts,
            "rule_stats": {k: v.to_json() for k, v in sorted(self.rule_stats.items())},
            "fold_size_limit": self.fold_size_limit,
            "folds_over_size_limit": [r.to_json() for r in self.fold_refusals],
            "passes": [r.to_json() for r in self.passes],
        }
        if self.bisect_limit is not None:
            d["bisect_limit"] = self.bisect_limit
            d["last_rewrite"] = dataclasses.asdict(self.last_rewrite) if self.last_rewrite else None
        return d


class PassManager:
    """Runs a pass (usually a Pipeline) with instruments; pipelines and fixed-point groups are walked here so
    every instrument sees each leaf pass. `disable` drops passes by name wherever they appear."""

    def __init__(self, root: Pass | list[Pass], instruments: Iterable[Instrument] = (),
                 disable: Iterable[str] = ()):
        self.root = Pipeline(list(root)) if isinstance(root, list) else root
        self.instruments = list(instruments)
        self.disable = set(disable)
        for name in self.disable:
            if name not in ("fixed-point", "pipeline"):
                get_pass_info(name)  # an unknown name is an error, not a silent no-op

    def leaves(self, p: Pass | None = None) -> Iterator[Pass]:
        p = self.root if p is None else p
        if p.name in self.disable:
            return
        kids = p.children()
        if kids or isinstance(p, Pipeline | FixedPoint):
            for c in kids:
                yield from self.leaves(c)
        else:
            yield p

    def run(self, model: Model, ctx: PassContext | None = None) -> PipelineReport:
        if ctx is None:
            ctx = PassContext(opsets=dict(model.opset_imports))
        report = PipelineReport(PassResult(False))
        report.nodes_before = count_nodes(model)
        report.bisect_limit = ctx.budget.limit
        used0 = ctx.budget.used
        t0 = time.perf_counter()
        # Passes create and drop many small objects; the cyclic GC would rescan the whole graph each time.
        with gc_paused():
            report.result = self._run(self.root, model, ctx, report)
        report.seconds = time.perf_counter() - t0
        report.nodes_after = count_nodes(model)
        report.rewrites = ctx.budget.used - used0
        if ctx.budget.limit is not None:
            report.last_rewrite = next((r for r in ctx.records if r.index == ctx.budget.limit), None)
        report.rule_stats = ctx.rule_stats
        report.fold_refusals = [r for r in ctx.fold_refusals if r.still_in_graph]
        report.fold_size_limit = ctx.fold_size_limit
        for ins in self.instruments:
            ins.finish(report)
        return report

    def _run(self, p: Pass, model: Model, ctx: PassContext, report: PipelineReport) -> PassResult:
        if p.name in self.disable:
            return PassResult(False)
        if isinstance(p, FixedPoint):
            changed_any = False
            for _ in range(p.max_iterations):
                changed = False
                for c in p.passes:
                    r = self._run(c, model, ctx, report)
                    changed |= r.changed
                changed_any |= changed
                if not changed or ctx.budget.exhausted:
                    return PassResult(changed_any, converged=True)
            return PassResult(changed_any, converged=False)
        if isinstance(p, Pipeline) or p.children():
            changed = False
            converged = True
            counts: dict[str, int] = {}
            for c in p.children():
                r = self._run(c, model, ctx, report)
                changed |= r.changed
                converged &= r.converged
                for k, v in r.counts.items():
                    counts[k] = counts.get(k, 0) + v
            return PassResult(changed, converged, counts)
        for ins in self.instruments:
            ins.before_pass(p, model, ctx)
        before = count_nodes(model)
        used = ctx.budget.used
        t = time.perf_counter()
        result = p.run(model, ctx)
        secs = time.perf_counter() - t
        rec = PassRecord(p.name, p.spec(), secs, before, count_nodes(model), bool(result.changed),
                         bool(result.converged), dict(result.counts), ctx.budget.used - used)
        report.passes.append(rec)
        for ins in self.instruments:
            ins.after_pass(p, model, ctx, rec)
        return result
