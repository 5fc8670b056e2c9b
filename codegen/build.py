"""Relax IRModule -> TVM executable, with a good default schedule when there is no tuning database.

Pipeline (see SCHEDULES.md for why):

1. fast math (``fast_math.py``; off with ``fast_math=False``), bind the weights as constants, decompose
   inference-only ops, canonicalize;
2. (cpu/arm64) convert conv2d to NHWC activations / HWIO weights and fold the weight transposes; with fast math,
   3x3 stride-1 float32 convolutions become Winograd's F(2x2, 3x3) (``winograd.py``);
3. legalize to TIR, fuse (LegalizeOps, AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR);
4. apply the tuning database if one is given (MetaScheduleApplyDatabase), then schedule every
   PrimFunc still unscheduled with optc's CPU rules (``schedules.py``) or dlight's GPU rules;
5. TVM's usual lowering to the Relax VM (``tvm.compile`` with that pipeline).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from ..errors import OptcError
from . import tvm_ops
from .gather import tir_pipeline
from .targets import resolve_target, target_kind


def _tvm():
    import tvm  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415, F401

    return tvm


def _var_name(var) -> str:
    return getattr(var, "name_hint", None) or var.name


def bind_params(mod, params: Mapping[str, np.ndarray] | None, func_name: str = "main"):
    """Bind weights (by parameter name) as constants of ``func_name``; unknown names raise OptcError."""
    tvm = _tvm()
    from tvm import relax  # noqa: PLC0415

    if not params:
        return mod
    func = mod[func_name]
    binding = {}
    for var in func.params:
        name = getattr(var, "name_hint", None) or var.name
        if name in params:
            binding[var] = tvm.runtime.tensor(np.array(params[name], order="C", copy=None))
    bound = {getattr(v, "name_hint", None) or v.name for v in binding}
    unknown = sorted(set(params) - bound)
    if unknown:
        raise OptcError(f"params name no input of '{func_name}': {', '.join(unknown[:5])}")
    return relax.transform.BindParams(func_name, binding)(mod)


_FAST_MATH: contextvars.ContextVar[bool] = contextvars.ContextVar("optc_fast_math", default=True)


@contextlib.contextmanager
def fast_math_default(enabled: bool) -> Iterator[None]:
    """Make `enabled` the fast-math setting of every `prepare` / `build` that does not pass its own (so tuning,
    which prepares the module itself, sees the same kernels as the build)."""
    token = _FAST_MATH.set(bool(enabled))
    try:
        yield
    finally:
        _FAST_MATH.reset(token)


def _fast_math(value: bool | None) -> bool:
    return _FAST_MATH.get() if value is None else bool(value)


def preprocess_passes(target, layout: str | None = "auto", fast_math: bool | None = None):
    """Relax-level passes before legalization: fast math (see ``fast_math.py``; ``fast_math=False`` keeps libm's
    exp / tanh / erf and the plain softmax), inference decompositions, layout choice and, in NHWC with fast math,
    Winograd convolutions (``winograd.py``)."""
    from tvm import relax  # noqa: PLC0415

    from .attention import fused_attention_pass  # noqa: PLC0415
    from .empty_mean import empty_means_as_nan  # noqa: PLC0415
    from .fast_math import fast_math_pass  # noqa: PLC0415
    from .grouped_conv import grouped_conv_pass  # noqa: PLC0415
    from .layout_copies import layout_copies_pass  # noqa: PLC0415
    from .nan_order import nan_through_max_min_pass  # noqa: PLC0415
    from .pointwise_conv import pointwise_conv_pass  # noqa: PLC0415
    from .winograd import winograd_pass  # noqa: PLC0415
    from .zero_size import zero_size_results_as_constants  # noqa: PLC0415

    passes = [
        # before any legalization (FoldConstant's too): TVM's kernels divide by a zero extent or count
        zero_size_results_as_constants(symbolic=True),
        empty_means_as_nan(),
        fused_attention_pass(target, _fast_math(fast_math)),
        fast_math_pass(_fast_math(fast_math)),
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.FoldConstant(),
    ]
    if target_kind(target) == "cuda":
        passes.insert(0, c_identifier_params())
    if layout == "auto":
        layout = "NHWC" if target_kind(target) in ("cpu", "arm64") else None
    if layout == "NHWC":
        passes += [_convert_layout_nhwc(), layout_copies_pass(), grouped_conv_pass(target), pointwise_conv_pass(target),
                   winograd_pass(target, _fast_math(fast_math))]
    passes += [nan_through_max_min_pass(), relax.transform.DeadCodeElimination()]
    return passes


def c_identifier_params(func_name: str = "main"):
    """Rename the parameters of ``func_name`` whose names are not C identifiers (``gpu_0/data_0`` -> ``gpu_0_data_0``):
    TVM's CUDA code generator writes them into the kernels' source as they are, and nvcc / NVRTC reject it. The
    runtime passes arguments by position, so the names are free to change."""
    import re  # noqa: PLC0415

    tvm = _tvm()
    from tvm import relax  # noqa: PLC0415

    @tvm.transform.module_pass(opt_level=0, name="optc_c_identifier_params")
    def _pass(mod, _ctx):
        if func_name not in [gv.name_hint for gv in mod.get_global_vars()]:
            return mod
        func = mod[func_name]
        taken = {_var_name(p) for p in func.params}
        binding, params = {}, []
        for p in func.params:
            name = re.sub(r"\W", "_", _var_name(p))
            name = name if re.match(r"[A-Za-z_]", name) else f"p_{name}"
            if name == _var_name(p):
                params.append(p)
                continue
            while name in taken:
                name += "_"
            taken.add(name)
            new = relax.Var(name, p.ty)
            binding[p] = new
            params.append(new)
        if not binding:
            return mod
        body = func.bind_params(binding)
        mod[func_name] = relax.Function(params, body.body, func.ret_ty, func.is_pure, func.attrs)
        return mod

    return _pass


#: ConvertLayout's desired layouts on CPU: conv2d in NHWC / HWIO. conv2d_transpose is pinned to NCHW / IOHW, the only
#: layout TOPI lowers it in: left out, it follows its NHWC producer and stays an op no pass legalizes (the VM
#: codegen then fails on it). Every other op ConvertLayout moves to NHWC is legalized in any layout.
NHWC_LAYOUTS = {"relax.nn.conv2d": ["NHWC", "HWIO"], "relax.nn.conv2d_transpose": ["NCHW", "IOHW"]}


def _convert_layout_nhwc():
    """conv2d -> NHWC activations / HWIO weights (weight transposes fold away once weights are bound); see
    ``NHWC_LAYOUTS``.

    TVM's ConvertLayout fails on some graphs (tuples through Concat/Split); the module is then kept
    in its own layout, which the CPU rules still schedule (vectorized along the width axis).
    """
    tvm = _tvm()
    from tvm import relax  # noqa: PLC0415

    seq = tvm.transform.Sequential([
        relax.transform.ConvertLayout(NHWC_LAYOUTS),
        relax.transform.CanonicalizeBindings(),
        relax.transform.FoldConstant(),
    ])

    @tvm.transform.module_pass(opt_level=0, name="optc_convert_layout_nhwc")
    def _pass(mod, _ctx):
        try:
            return seq(mod)
        except Exception:  # noqa: BLE001 - keep the original layout
            return mod

    return _pass


def _declared_op_patterns():
    """Put back the fusion pattern a converter declared for its kernel (``lowering.converters.DECLARED_OP_PATTERN``:
    a table lookup is elementwise, though its indirect read makes AnnotateTIROpPattern call it opaque)."""
    tvm = _tvm()
    from ..lowering.converters import DECLARED_OP_PATTERN  # noqa: PLC0415

    @tvm.transform.module_pass(opt_level=0, name="optc_declared_op_patterns")
    def _pass(mod, _ctx):
        declared = {gv: f for gv, f in mod.functions_items()
                    if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and DECLARED_OP_PATTERN in f.attrs}
        for gv, f in declared.items():
            mod[gv] = f.with_attr("op_pattern", int(f.attrs[DECLARED_OP_PATTERN]))
        return mod

    return _pass


#: a replicating copy (Tile, Expand: the output at least this many times the input) of an input of at least
#: `REPLICATE_MIN_ELEMENTS` is a kernel of its own (`_replicating_copies_apart`)
REPLICATE_FACTOR = 2
REPLICATE_MIN_ELEMENTS = 1024
_BROADCAST, _INJECTIVE, _OPAQUE = 1, 2, 8  # TVM's kBroadcast, kInjective, kOpaque


def _replicating_copies_apart():
    """Keep a kernel that replicates a large input (GQA's K / V heads tiled to the query heads) apart from what
    produces that input: fused, the producer chain (Llama-style RoPE, a QDQ model's requantize steps) ran once per
    output element, four times per element for 2 K/V heads and 8 query heads. Marked opaque, the chain runs once
    on the input and the replication is a copy (Llama-style int8 -8%, fp32 -2%, Zen 5). Only one-input kernels
    (tile, broadcast_to) are considered; small inputs (a mask, a bias) keep fusing."""
    tvm = _tvm()
    from tvm import tirx  # noqa: PLC0415

    def numel(param) -> int | None:
        shape = getattr(param, "shape", None)
        dims = [int(d) if isinstance(d, tirx.IntImm) else None for d in shape] if shape is not None else [None]
        return None if None in dims else int(np.prod(dims, dtype=np.int64))

    @tvm.transform.module_pass(opt_level=0, name="optc_replicating_copies_apart")
    def _pass(mod, _ctx):
        for gv, f in list(mod.functions_items()):
            if not isinstance(f, tirx.PrimFunc) or f.attrs is None or \
                    int(f.attrs.get("op_pattern", -1)) not in (_BROADCAST, _INJECTIVE):
                continue
            if len(f.params) != 2:
                continue
            src, dst = numel(f.params[0]), numel(f.params[1])
            if src and dst and src >= REPLICATE_MIN_ELEMENTS and dst >= REPLICATE_FACTOR * src:
                mod[gv] = f.with_attr("op_pattern", _OPAQUE)
        return mod

    return _pass


def fusion_passes():
    """Legalize and fuse: the module that MetaSchedule tunes (same as relax's 'zero' pipeline)."""
    from tvm import relax  # noqa: PLC0415

    from . import int_min_literals, max_pool  # noqa: PLC0415
    from .concat import concat_copies_pass  # noqa: PLC0415
    from .int8_kernels import mark_7bit_weights  # noqa: PLC0415

    return [
        relax.transform.LegalizeOps(customize_legalize_map={**max_pool.legalize_map(),
                                                            **int_min_literals.legalize_map()}),
        relax.transform.AnnotateTIROpPattern(),
        _declared_op_patterns(),
        _replicating_copies_apart(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.AttachAttrLayoutFreeBuffers(),
        concat_copies_pass(),
        mark_7bit_weights(),
    ]


def schedule_passes(target, *, schedule: str = "default"):
    """Passes that give every PrimFunc a schedule (those the tuning database did not cover)."""
    from tvm.s_tir import dlight as dl  # noqa: PLC0415

    if schedule == "none":
        return []
    return [dl.ApplyDefaultSchedule(*default_rules(target))]


def scheduled_kernel_passes():
    """The passes the build runs on the scheduled kernels before TVM lowers them (``class_tests_on_bits``: NaN and
    infinity tests the vectorizer takes). The tuner's builder runs the same (``tuning._make_builder``), with the
    same TIR pipeline (``gather.tir_pipeline``), so a candidate is timed as the library will run it: without them
    a NaN-propagating max pool measured 3.5x slower than in the library, and the search replaced optc's schedule
    by a slower one (ShuffleNet's first max pool, 122 -> 1132 us tuned)."""
    from .ieee_bits import class_tests_on_bits  # noqa: PLC0415

    return [class_tests_on_bits()]


def default_rules(target, *, tunable: bool = False):
    """The dlight-style rules that schedule what no tuning record covers, first match wins; ``tunable``: the
    tuner's (schedules MetaSchedule can measure: ``schedules.cpu_rules``)."""
    from tvm.s_tir import dlight as dl  # noqa: PLC0415

    if target_kind(target) == "cuda":
        return [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]
    from . import schedules  # noqa: PLC0415

    return schedules.cpu_rules(tunable=tunable)


def prepare(mod, params=None, target="cpu", *, layout: str | None = "auto", fast_math: bool | None = None,
            batch_sizes: Sequence[int] = (), batch_report: dict | None = None):
    """Bind params and run the relax-level passes before legalization (fast math, layout, decompositions).
    ``fast_math=None``: the setting of the enclosing ``fast_math_default`` (on by default). ``batch_sizes``:
    first add a static entry for each of these batch sizes where ``main`` qualifies
    (``static_batch.static_batch_entries``, reporting into ``batch_report``), so that the passes below write the
    entries' own static TIR (fast math's softmax)."""
    tvm = _tvm()
    target = resolve_target(target)
    mod = bind_params(mod, params)
    if batch_sizes:
        from .static_batch import static_batch_entries  # noqa: PLC0415

        mod = static_batch_entries(batch_sizes, batch_report)(mod)
    with target:
        mod = tvm.transform.Sequential(preprocess_passes(target, layout, fast_math))(mod)
    return mod


def fuse(mod, target):
    """Legalize + fuse a prepared module (the module that tuning sees)."""
    tvm = _tvm()
    with target:
        return tvm.transform.Sequential(fusion_passes())(mod)


def _count_kernels(report: dict | None, key: str):
    """A pass that records how many PrimFuncs exist / are already scheduled into ``report[key]`` (and of the static
    batch entries' own copies of the kernels, when there are any, into ``report[key + "_entries"]``)."""
    tvm = _tvm()

    from ..lowering.ops.indexing import INDEX_CHECK_ATTR  # noqa: PLC0415
    from .static_batch import entry_only_kernels  # noqa: PLC0415

    @tvm.transform.module_pass(opt_level=0, name=f"optc_count_{key}")
    def _count(mod, _ctx):
        if report is not None:
            copies = entry_only_kernels(mod)  # the static batch entries' kernels: the model's kernels, counted once
            funcs = [(gv.name_hint in copies, f) for gv, f in mod.functions_items()
                     if isinstance(f, tvm.tirx.PrimFunc)
                     and not (f.attrs is not None and INDEX_CHECK_ATTR in f.attrs)]  # (marked scheduled: not tuned)
            for entries, suffix in ((False, ""), (True, "_entries")):
                group = [f for copy, f in funcs if copy == entries]
                if entries and not group:
                    continue
                scheduled = sum(1 for f in group if f.attrs is not None and f.attrs.get("tirx.is_scheduled", False))
                # kernels written scheduled by optc (a crop, a packed transpose) are not tuned ones
                handwritten = report.get("handwritten" + suffix, 0) if key == "tuned" else 0
                report[key + suffix] = scheduled - handwritten
                report["kernels" + suffix] = len(group)
        return mod

    return _count


#: LLVM intrinsic -> the dot-product instruction set a kernel calling it runs on (int8_kernels.py, amx.py)
DOT_PRODUCT_INTRINSICS = {
    "llvm.x86.tdpbusd": "AMX int8", "llvm.x86.tdpbssd": "AMX int8", "llvm.x86.tdpbf16ps": "AMX bf16",
    "llvm.x86.avx512.vpdpbusd.512": "AVX512-VNNI", "llvm.x86.avx512.vpdpbusd.256": "AVX-VNNI",
    "llvm.x86.avx512.pmaddubs.w.512": "AVX-512BW (7-bit weights)", "llvm.x86.avx2.pmadd.ub.sw": "AVX2 (7-bit weights)",
    "llvm.x86.avx512.pmaddw.d.512": "AVX-512BW", "llvm.x86.avx2.pmadd.wd": "AVX2"}
#: the same for the functions optc's kernels import as LLVM IR and call with call_extern (``bf16_dot.py``)
DOT_PRODUCT_EXTERNS = {"optc_dpbf16ps": "AVX512-BF16"}


def _count_dot_products(report: dict | None):
    """A pass that records into ``report["dot_products"]`` how many scheduled kernels run on each dot-product
    instruction set of ``DOT_PRODUCT_INTRINSICS`` (a kernel counts once, under its first such intrinsic)."""
    tvm = _tvm()
    import tvm_ffi  # noqa: PLC0415

    from .static_batch import entry_only_kernels  # noqa: PLC0415

    @tvm.transform.module_pass(opt_level=0, name="optc_count_dot_products")
    def _count(mod, _ctx):
        if report is None:
            return mod
        from tvm.target.codegen import llvm_lookup_intrinsic_id  # noqa: PLC0415

        by_id = {int(llvm_lookup_intrinsic_id(name)): isa for name, isa in DOT_PRODUCT_INTRINSICS.items()}
        counts: dict[str, int] = {}
        copies = entry_only_kernels(mod)  # the static batch entries' kernels: the model's kernels, counted once
        for gv, func in mod.functions_items():
            if not isinstance(func, tvm.tirx.PrimFunc) or gv.name_hint in copies:
                continue
            found: list[str] = []

            def visit(call, found=found):  # call_llvm_intrin's first argument: the intrinsic's LLVM id
                if found or not call.args:
                    return
                op, first = str(getattr(call.op, "name", "")), call.args[0]
                isa = None
                if op.startswith("tirx.call_llvm") and isinstance(first, tvm.tirx.IntImm):
                    isa = by_id.get(int(first.value))
                elif op == "tirx.call_extern" and isinstance(first, tvm.ir.StringImm):
                    isa = DOT_PRODUCT_EXTERNS.get(str(first.value))
                if isa is not None:
                    found.append(isa)

            tvm_ffi.structural_walk(func.body, (tvm.ir.Call, visit), order="post")
            if found:
                counts[found[0]] = counts.get(found[0], 0) + 1
        report["dot_products"] = counts
        return mod

    return _count


def _lowering_pipeline(target, database=None, schedule: str = "default", report: dict | None = None):
    tvm = _tvm()
    from tvm import relax  # noqa: PLC0415

    from . import schedules  # noqa: PLC0415
    from .noalias import single_buffer_noalias  # noqa: PLC0415
    from .zero_size import zero_size_constants_as_allocations, zero_size_results_as_constants  # noqa: PLC0415

    kind = target_kind(target)

    @tvm.transform.module_pass(opt_level=0, name="optc_lowering")
    def _pipeline(mod, _ctx):
        passes = [relax.backend.DispatchSampling(), relax.backend.DispatchSortScan()]
        passes += fusion_passes()
        passes.append(_count_kernels(report, "handwritten"))
        if database is not None:
            passes.append(relax.transform.MetaScheduleApplyDatabase())
        passes.append(_count_kernels(report, "tuned"))
        passes += schedule_passes(target, schedule=schedule)
        passes.append(_count_kernels(report, "scheduled"))
        passes.append(_count_dot_products(report))
        passes += scheduled_kernel_passes()
        passes += [
            schedules.split_packed_weights(),  # packed weights: computed once, at compile time
            relax.transform.FoldConstant(),
            zero_size_results_as_constants(),  # no kernel for a zero-size result (TVM's reshape test fails on one)
            relax.transform.RewriteDataflowReshape(),
            relax.transform.ToNonDataflow(),
            relax.transform.RemovePurityChecking(),
            relax.transform.CallTIRRewrite(),
            zero_size_constants_as_allocations(),  # after the last FoldConstant: TVM cannot load them back
            relax.transform.StaticPlanBlockMemory(),
        ]
        if kind == "cuda":
            passes.append(relax.transform.RewriteCUDAGraph())
        passes += [
            relax.transform.LowerAllocTensor(),
            relax.transform.KillAfterLastUse(),
            relax.transform.LowerRuntimeBuiltin(),
            relax.transform.ComputePrimValue(),
            relax.transform.VMShapeLower(),
            single_buffer_noalias(),  # the shape function's missing noalias cost every kernel its own
            relax.transform.AttachGlobalSymbol(),
        ]
        with target:
            if database is not None:
                with database:
                    return tvm.transform.Sequential(passes)(mod)
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def build(mod, params: Mapping[str, np.ndarray] | None = None, target="cpu", *, database=None,
          schedule: str = "default", layout: str | None = "auto", report: dict | None = None,
          fast_math: bool | None = None, batch_sizes: Sequence[int] = ()):
    """Compile a Relax IRModule to a ``tvm.relax.VMExecutable``.

    - ``params``: weights by ``main`` parameter name; bound as constants (folded into the library).
    - ``target``: preset name (``cpu``, ``cuda``, ``arm64``) or a ``tvm.target.Target``.
    - ``database``: a MetaSchedule database (see ``tuning.tune``); its records are applied first and
      the default schedule covers whatever it does not.
    - ``schedule``: ``"default"`` (optc's rules) or ``"none"`` (TVM's naive loops; for comparison).
    - ``layout``: ``"auto"`` (NHWC on CPU), ``"NHWC"`` or ``None`` (keep the model's layout).
    - ``report``: a dict that receives ``kernels`` (PrimFuncs), ``handwritten`` (written scheduled by optc's
      lowering: crops, packed transposes), ``tuned`` (scheduled from the database) and ``scheduled`` (with a
      schedule after the default rules).
    - ``fast_math``: polynomial exp / softmax / tanh / erf (``fast_math.py``, errors measured in
      benchmarks/RESULTS.md "Fast math") and Winograd 3x3 convolutions on CPU (``winograd.py``); False: libm's
      and direct convolutions. None: ``fast_math_default``'s setting (True).
    - ``batch_sizes``: add a static entry for each of these batch sizes (``static_batch.entry_name``: ``main``
      with its batch vars bound to the size, its own kernels) when ``main``'s symbolic dims are all batch dims
      (CPU targets only); ``report["batch_vars"]`` gets the vars bound (or None), ``report["batch_skipped"]``
      why none were built where that was not for the model's dims.
    """
    tvm = _tvm()
    target = resolve_target(target)
    if target.kind.name == "llvm":
        from .amx import request_permission  # noqa: PLC0415

        request_permission()  # a build for this host is often run in this process: its AMX kernels need the tiles
    if target.kind.name != "llvm" and batch_sizes:  # (CPU targets: a GPU call's fixed cost is elsewhere)
        batch_sizes = ()
        if report is not None:
            report["batch_skipped"] = "CPU targets only"
    tvm_ops.register()
    pipeline = _lowering_pipeline(target, database, schedule, report)
    tir = tir_pipeline(target)  # table lookups as AVX-512 gathers where the target has them (gather.py)
    try:
        if batch_sizes:
            entry: dict = {}
            try:
                built = tvm.compile(prepare(mod, params, target, layout=layout, fast_math=fast_math,
                                            batch_sizes=batch_sizes, batch_report=entry), target=target,
                                    relax_pipeline=pipeline, tir_pipeline=tir)
                if report is not None:
                    report["batch_vars"] = entry.get("batch_vars")
                    if "batch_skipped" in entry:
                        report["batch_skipped"] = entry["batch_skipped"]
                return built
            except Exception as exc:  # noqa: BLE001 - the entries only save time: built again without them
                if report is not None:
                    report["batch_skipped"] = f"the build with them failed ({type(exc).__name__})"
        return tvm.compile(prepare(mod, params, target, layout=layout, fast_math=fast_math), target=target,
                           relax_pipeline=pipeline, tir_pipeline=tir)
    except OptcError:
        raise
    except Exception as exc:
        raise OptcError(f"TVM build for {target_kind(target)} failed: {type(exc).__name__}: "
                        f"{_build_failure(exc)}") from exc


def _build_failure(exc: BaseException) -> str:
    """One line for a failed TVM build: the call that reached the VM code generator unlowered (an op in a form no
    pass legalizes; TVM's message ends in the call and a '# Metadata omitted' note), else the last line of TVM's
    message that is not such a note."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if "Offending call:" in lines[:-1]:
        call = lines[lines.index("Offending call:") + 1]
        return f"no pass lowered the call {call[:300]} (TVM's VM code generator cannot emit it)"
    return lines[-1] if lines else ""


def find_nvcc() -> str | None:
    """nvcc on PATH, else the one pip's ``nvidia-cuda-nvcc`` installs (``site-packages/nvidia/cu13/bin/nvcc``)."""
    import importlib.util  # noqa: PLC0415
    import os  # noqa: PLC0415
    import shutil  # noqa: PLC0415

    found = shutil.which("nvcc")
    if found:
        return found
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        for sub in ("cu13", "cu12", "cuda_nvcc"):
            path = os.path.join(root, sub, "bin", "nvcc")
            if os.access(path, os.X_OK):
                return path
    return None


def cuda_source(executable) -> str | None:
    """The CUDA C source of the kernels of a cuda build (None when the build has no CUDA module)."""
    stack = [executable.mod]
    while stack:
        module = stack.pop()
        if module.kind == "cuda":
            return str(module.inspect_source("")) or None
        stack.extend(module.imports)
    return None


def compile_cuda_kernels(executable, target, nvcc: str | None = None) -> dict:
    """Compile the kernels of a cuda build to a cubin for the target's ``arch`` with nvcc (``find_nvcc``), as a check
    that they build: without a GPU, TVM keeps only their source in the library (compiled when it loads on a GPU).

    Returns ``{"compiler", "arch", "kernels_bytes" (CUDA C), "cubin_bytes"}``. OptcError (one line) when no nvcc is
    found, or with nvcc's first error when a kernel does not compile."""
    import subprocess  # noqa: PLC0415
    import tempfile  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise OptcError("no nvcc found (PATH, or pip's nvidia-cuda-nvcc) to compile the CUDA kernels")
    code = cuda_source(executable)
    if code is None:
        raise OptcError("the build has no CUDA kernels")
    arch = str(target.attrs["arch"])
    with tempfile.TemporaryDirectory(prefix="optc-cuda-") as tmp:
        src, out = Path(tmp) / "kernels.cu", Path(tmp) / "kernels.cubin"
        src.write_text(code)
        proc = subprocess.run([nvcc, "--cubin", "-O3", "-arch", arch, "--expt-relaxed-constexpr", "-o", str(out),
                               str(src)], capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            lines = (proc.stderr + proc.stdout).splitlines()
            errors = [ln for ln in lines if "error" in ln] or lines[-1:] or [f"exit {proc.returncode}"]
            raise OptcError(f"nvcc could not compile the CUDA kernels for {arch}: {errors[0].strip()}")
        return {"compiler": nvcc, "arch": arch, "kernels_bytes": len(code.encode()), "cubin_bytes": out.stat().st_size}
