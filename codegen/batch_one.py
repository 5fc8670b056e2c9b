"""A batch-1 entry beside ``main`` for small models whose only symbolic dims are batch dims (`batch_one_entry`).

With a symbolic batch N, the Relax VM works out every intermediate shape at run time (a shape heap, a shape
function, a ``make_shape`` per tensor, storage allocated at computed sizes and not shared), and the kernels run
on symbolic extents: a matmul whose rows are N computes whole register tiles of 4 rows, 4x the work at N = 1.
For a tiny model that is most of a call: the digits CNN at batch 1 ran 13.8 us with a symbolic batch, 6.5 us
compiled for batch 1 (AMD EPYC Zen 4, one busy core). Batch 1 is the latency case, so such a library also gets
``BATCH_ONE``: ``main`` with every batch var bound to 1 before legalization, so it has static shapes, static
memory planning and its own static kernels. `optc.runtime.Module` calls it when every batch dim of the inputs
is 1, and ``main`` otherwise.

A symbolic var is a batch var when it appears in the inputs' shapes only as the leading dim, as itself (``N``,
not ``N * 2``). A model with any other symbolic dim (a sequence length) gets no extra entry: binding the batch
alone would leave the shape work in place. Nor does one whose lowering wrote TIR of its own (see
`batch_one_entry`), and a build that fails with the entry is built again without it (the entry only saves
time). Nor does a model of more than ``MAX_MACS`` multiply-accumulates per sample: its kernels take long
enough that the fixed cost is noise, and the entry compiles every kernel twice.
"""

from __future__ import annotations

__all__ = ["BATCH_ONE", "MAX_MACS", "batch_one_entry", "batch_vars", "entry_only_kernels", "wants_batch_one"]

#: the name of the batch-1 entry function in the library
BATCH_ONE = "main_batch1"
#: models with more multiply-accumulates per sample (Conv/Gemm/MatMul with constant weights) get no batch-1
#: entry: at 16M MACs a call takes 0.1-0.3 ms on one core, of which the symbolic shapes' few microseconds are noise
MAX_MACS = 16_000_000


def wants_batch_one(model) -> list[str] | None:
    """The batch vars of an optc `Model` to bind to 1 in a batch-1 entry: the names of its inputs' symbolic dims
    when each is the leading dim of every input it appears in, and the model does at most `MAX_MACS`
    multiply-accumulates per sample; else None. Value types the model lacks are inferred (in place)."""
    from ..rewrites.passes.infer_shapes import infer_model_types  # noqa: PLC0415
    from ..rewrites.passes.prune import node_macs  # noqa: PLC0415

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
    if not names:
        return None
    if any(o is not None and o.shape is None for n in model.graph for o in n.outputs):
        infer_model_types(model)
    if sum(node_macs(n) for n in model.graph) > MAX_MACS:
        return None
    return sorted(names)


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


def batch_one_entry(report: dict | None = None):
    """A module pass, run by `build.prepare` before the relax-level passes: add ``BATCH_ONE``, ``main`` with its batch vars bound to 1, when
    ``main``'s symbolic dims are all batch dims and it calls no TIR of the lowering's own (libm math, index
    checks, integer kernels: written for the symbolic shapes, they would be fused with static kernels reading the
    same values, which FuseTIR refuses); else the module is returned as it is. ``report["batch_one"]`` receives
    the names bound (or None)."""
    import tvm  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415

    @tvm.transform.module_pass(opt_level=0, name="optc_batch_one_entry")
    def _pass(mod, _ctx):
        names = [gv.name_hint for gv in mod.get_global_vars()]
        main = mod["main"] if "main" in names else None
        found = batch_vars(main) if isinstance(main, relax.Function) and BATCH_ONE not in names \
            and not _calls_tir(main) else None
        if report is not None:
            report["batch_one"] = found
        if not found:
            return mod
        from tvm.relax.utils import copy_with_new_vars  # noqa: PLC0415

        entry = copy_with_new_vars(main)  # its own vars: FuseTIR maps each var to one buffer (a shared x had two)
        if entry.attrs and "global_symbol" in entry.attrs:
            entry = entry.with_attr("global_symbol", BATCH_ONE)
        new = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
        new[BATCH_ONE] = entry
        return relax.transform.BindSymbolicVars(dict.fromkeys(found, 1), BATCH_ONE)(new)

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
    """Names of the PrimFuncs that only ``BATCH_ONE`` calls (its static copies of main's kernels): kernel counts
    and instruction summaries describe the model's kernels once. Empty without the entry."""
    import tvm  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415

    names = {gv.name_hint for gv in mod.get_global_vars()}
    if BATCH_ONE not in names:
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

    return called(mod[BATCH_ONE]) - called(mod["main"]) if "main" in names else set()
