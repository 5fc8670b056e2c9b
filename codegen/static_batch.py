"""Static batch entries beside ``main`` for small models whose only symbolic dims are batch dims
(`static_batch_entries`).

With a symbolic batch N, the Relax VM works out every intermediate shape at run time (a shape heap, a shape
function, a ``make_shape`` per tensor, storage allocated at computed sizes and not shared), and the kernels run
on symbolic extents: a matmul whose rows are N computes whole register tiles of 4 rows, 4x the work at N = 1.
For a tiny model that is most of a call: the digits CNN at batch 1 ran 13.8 us with a symbolic batch, 6.5 us
compiled for batch 1 (AMD EPYC Zen 4, one busy core); pruned by half at batch 32, 22.6 us and 18.9 us (Zen 5).
So such a library gets, for each batch size asked for (by default 1, the latency case: `default_sizes`),
``main_batch<n>`` (`entry_name`): ``main`` with every batch var bound to n before legalization, so it has static
shapes, static memory planning and its own static kernels. `optc.runtime.Module` calls the entry whose size every
batch dim of the inputs has, and ``main`` otherwise. Each entry compiles the model's kernels once more.

A symbolic var is a batch var when it appears in the inputs' shapes only as the leading dim, as itself (``N``,
not ``N * 2``). A model with any other symbolic dim (a sequence length) gets no entry: binding the batch
alone would leave the shape work in place. Nor does one whose lowering wrote TIR of its own (see
`static_batch_entries`), and a build that fails with the entries is built again without them (they only save
time). By default, nor does a model of more than ``MAX_MACS`` multiply-accumulates per sample: its kernels take
long enough that the fixed cost is noise.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Sequence

__all__ = ["ENTRY_PREFIX", "MAX_MACS", "MAX_SIZE", "batch_vars", "check_sizes", "default_sizes", "entry_name",
           "entry_only_kernels", "model_batch_vars", "parse_sizes", "static_batch_entries"]

#: models with more multiply-accumulates per sample (Conv/Gemm/MatMul with constant weights) get no batch-1
#: entry by default: at 16M MACs a call takes 0.1-0.3 ms on one core, of which the symbolic shapes' few
#: microseconds are noise
MAX_MACS = 16_000_000
#: the entry functions' names: this and the batch size (`entry_name`)
ENTRY_PREFIX = "main_batch"
#: the largest batch size an entry may be asked for (its static kernels are compiled for that size)
MAX_SIZE = 1 << 16


def entry_name(size: int) -> str:
    """The name of the library's entry function for batch `size` (``main_batch1``)."""
    return f"{ENTRY_PREFIX}{size}"


def model_batch_vars(model) -> list[str] | None:
    """The batch vars of an optc `Model`: the names of its inputs' symbolic dims when each is the leading dim of
    every input it appears in; else None (no symbolic dim, another symbolic dim, an input of unknown rank)."""
    names: set[str] = set()
    for value in model.graph.inputs:
        if value.const is not None:
            continue
        shape = value.shape
        if shape is None:
            return None
        for axis, dim in enumerate(shape):
            if isinstance(dim, int):
                continue
            if axis != 0 or not isinstance(dim, str) or not dim:
                return None
            names.add(dim)
    return sorted(names) or None


def default_sizes(model) -> tuple[int, ...]:
    """The batch sizes an optc `Model` gets entries for unless asked otherwise: (1,) when it has batch vars
    (`model_batch_vars`) and does at most `MAX_MACS` multiply-accumulates per sample, else (). Value types the
    model lacks are inferred (in place)."""
    from ..rewrites.passes.infer_shapes import infer_model_types  # noqa: PLC0415
    from ..rewrites.passes.prune import node_macs  # noqa: PLC0415

    if model_batch_vars(model) is None:
        return ()
    if any(o is not None and o.shape is None for n in model.graph for o in n.outputs):
        infer_model_types(model)
    return () if sum(node_macs(n) for n in model.graph) > MAX_MACS else (1,)


def check_sizes(sizes: Sequence[int] | int, model) -> tuple[int, ...]:
    """`sizes` (one int or a sequence; Python or numpy integers) sorted, without repeats, checked: each in
    1..`MAX_SIZE`, and some only for a model with batch vars. Raises OptcError (one line) otherwise."""
    from ..errors import OptcError  # noqa: PLC0415

    if isinstance(sizes, numbers.Integral):
        sizes = (sizes,)
    out = []
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or not 1 <= int(size) <= MAX_SIZE:
            raise OptcError(f"a static batch size must be an integer from 1 to {MAX_SIZE}, got {size!r}")
        out.append(int(size))
    out = sorted(set(out))
    if out and model_batch_vars(model) is None:
        raise OptcError("static batch entries need a model whose symbolic input dims are all named leading batch dims; "
                        "this model's inputs are " + ", ".join(
                            f"{v.name} {_fmt(v.shape)}" for v in model.graph.inputs if v.const is None))
    return tuple(out)


def parse_sizes(text: str) -> tuple[int, ...]:
    """``--static-batch`` text: batch sizes separated by commas (``1,32``), or ``none``. Raises OptcError (one
    line) for anything else; the sizes' range is `check_sizes`'s."""
    from ..errors import OptcError  # noqa: PLC0415

    if text.strip().lower() == "none":
        return ()
    parts = [part.strip() for part in text.split(",")]
    if not all(re.fullmatch("[0-9]+", part, flags=re.ASCII) for part in parts):
        raise OptcError(f"--static-batch {text}: expected batch sizes separated by commas (1,32) or none")
    return tuple(int(part) for part in parts)


def _fmt(shape) -> str:
    return "[?]" if shape is None else "[" + ", ".join(str(d) if d not in (None, "") else "?" for d in shape) + "]"


def batch_vars(func) -> list[str] | None:
    """Names of the symbolic vars of a Relax function's parameters when every one is a batch var (see the
    module docstring); None when there is none, or some symbolic dim is not a batch dim."""
    from tvm import relax, tirx  # noqa: PLC0415

    names: set[str] = set()
    for param in func.params:
        ty = param.ty
        for field in ty.fields if isinstance(ty, relax.TupleType) else [ty]:
            if not isinstance(field, relax.TensorType):
                continue
            if field.shape is None or not isinstance(field.shape, relax.ShapeExpr):
                return None
            for axis, dim in enumerate(field.shape.values):
                if isinstance(dim, tirx.IntImm):
                    continue
                if axis != 0 or not isinstance(dim, tirx.Var):
                    return None
                names.add(dim.name)
    return sorted(names) or None


def static_batch_entries(sizes: Sequence[int], report: dict | None = None):
    """A module pass, run by `build.prepare` before the relax-level passes: add `entry_name` (n) for each n of
    `sizes`, ``main`` with its batch vars bound to n, when ``main``'s symbolic dims are all batch dims and it calls
    no TIR of the lowering's own (libm math, index checks, integer kernels: written for the symbolic shapes, they
    would be fused with static kernels reading the same values, which FuseTIR refuses); else the module is
    returned as it is. ``report["batch_vars"]`` receives the names bound (or None), and ``report["batch_skipped"]``
    why there are none when main's dims are batch dims but it calls such TIR."""
    import tvm  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415

    @tvm.transform.module_pass(opt_level=0, name="optc_static_batch_entries")
    def _pass(mod, _ctx):
        names = {gv.name_hint for gv in mod.get_global_vars()}
        main = mod["main"] if "main" in names else None
        found = batch_vars(main) if isinstance(main, relax.Function) and sizes \
            and not names.intersection(map(entry_name, sizes)) else None
        if found and _calls_tir(main):
            found = None
            if report is not None:
                report["batch_skipped"] = ("the lowering wrote kernels of its own for the symbolic shapes (integer, "
                                           "bf16 or libm kernels, index checks)")
        if report is not None:
            report["batch_vars"] = found
        if not found:
            return mod
        from tvm.relax.utils import copy_with_new_vars  # noqa: PLC0415

        new = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
        for size in sizes:
            name = entry_name(size)
            entry = copy_with_new_vars(main)  # its own vars: FuseTIR maps each var to one buffer (a shared x had two)
            if entry.attrs and "global_symbol" in entry.attrs:
                entry = entry.with_attr("global_symbol", name)
            new[name] = entry
            new = relax.transform.BindSymbolicVars(dict.fromkeys(found, size), name)(new)
        return new

    return _pass


def _calls_tir(func) -> bool:
    """Whether the Relax function `func` has a ``call_tir`` (to a PrimFunc the lowering wrote)."""
    import tvm  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415

    call_tir = tvm.ir.Op.get("relax.call_tir")
    found = []
    relax.analysis.post_order_visit(func.body, lambda e: found.append(e) if isinstance(e, relax.Call)
                                    and e.op.same_as(call_tir) else None)
    return bool(found)


def entry_only_kernels(mod) -> set[str]:
    """Names of the PrimFuncs that only the static batch entries call (their static copies of main's kernels):
    kernel counts and instruction summaries describe the model's kernels once. Empty without entries."""
    import tvm  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415

    names = {gv.name_hint for gv in mod.get_global_vars()}
    entries = [n for n in names if n.startswith(ENTRY_PREFIX) and isinstance(mod[n], relax.Function)]
    if not entries or "main" not in names:
        return set()

    def called(func) -> set[str]:
        out: set[str] = set()

        def visit(e):
            if isinstance(e, relax.Call):
                for arg in [e.op, *e.args]:
                    if isinstance(arg, tvm.ir.GlobalVar):
                        out.add(arg.name_hint)

        relax.analysis.post_order_visit(func.body, visit)
        return out

    return set().union(*(called(mod[n]) for n in entries)) - called(mod["main"])
