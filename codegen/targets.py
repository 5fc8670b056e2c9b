"""Targets: the presets a user can name (``cpu``, ``cuda[:sm_XX]``, ``arm64``), ``--mcpu`` choices, any TVM target
as a dict / JSON / TVM's old string form (``resolve_target``); what an artifact records of its target
(``target_metadata``) and the check that this CPU can run it (``check_runs_here``); the compiler that links it
(``linker``).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil

from ..errors import OptcError, did_you_mean, first_line

PRESETS = ("cpu", "cuda", "arm64")

#: cross compilers tried, in order, for the arm64 preset (Debian/Ubuntu package g++-aarch64-linux-gnu)
ARM64_CROSS_COMPILERS = ("aarch64-linux-gnu-g++", "aarch64-linux-gnu-gcc", "aarch64-unknown-linux-gnu-g++")

#: the lowest architecture that CUDA 12/13's nvcc still compiles for; used when no GPU is present
DEFAULT_CUDA_ARCH = "sm_75"


def _tvm():
    import tvm  # noqa: PLC0415 (TVM is heavy: import it only when a target is needed)

    return tvm


@functools.cache
def host_cpu_name() -> str:
    """LLVM's name for this machine's CPU (e.g. ``znver4``, ``skylake-avx512``, ``neoverse-n1``)."""
    from tvm.target import codegen  # noqa: PLC0415

    try:
        name = codegen.llvm_get_system_cpu()
    except Exception:  # pragma: no cover - LLVM always answers on supported platforms
        return "generic"
    return name or "generic"


@functools.cache
def host_cpu_flags() -> frozenset[str]:
    """The feature flags of this machine's CPU as /proc/cpuinfo lists them (``avx2``, ``avx512_vnni``,
    ``amx_tile``, ``asimddp``, ...); empty where /proc/cpuinfo cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def host_num_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


#: LLVM's portable x86-64 micro-architecture levels (psABI): v2 adds SSE4.2/POPCNT, v3 AVX2/FMA/BMI2, v4 AVX-512
PORTABLE_CPUS = ("x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4")

#: LLVM feature -> the /proc/cpuinfo flags (any one suffices) that say this CPU executes those instructions; only
#: instruction-set features a kernel can contain are listed (LLVM's tuning flags such as ``macrofusion`` are not)
X86_FLAGS = {
    "sse3": ("pni",), "ssse3": ("ssse3",), "sse4.1": ("sse4_1",), "sse4.2": ("sse4_2",), "sse4a": ("sse4a",),
    "popcnt": ("popcnt",), "avx": ("avx",), "avx2": ("avx2",), "fma": ("fma",), "fma4": ("fma4",), "xop": ("xop",),
    "f16c": ("f16c",), "bmi": ("bmi1",), "bmi2": ("bmi2",), "lzcnt": ("abm", "lzcnt"), "movbe": ("movbe",),
    "aes": ("aes",), "pclmul": ("pclmulqdq",), "sha": ("sha_ni",), "adx": ("adx",), "gfni": ("gfni",),
    "vaes": ("vaes",), "vpclmulqdq": ("vpclmulqdq",), "avxvnni": ("avx_vnni",),
    "avx512f": ("avx512f",), "avx512cd": ("avx512cd",), "avx512bw": ("avx512bw",), "avx512dq": ("avx512dq",),
    "avx512vl": ("avx512vl",), "avx512ifma": ("avx512ifma",), "avx512vbmi": ("avx512vbmi",),
    "avx512vbmi2": ("avx512_vbmi2",), "avx512vnni": ("avx512_vnni",), "avx512bitalg": ("avx512_bitalg",),
    "avx512vpopcntdq": ("avx512_vpopcntdq",), "avx512bf16": ("avx512_bf16",), "avx512fp16": ("avx512_fp16",),
    "avx512vp2intersect": ("avx512_vp2intersect",),
    "amx-tile": ("amx_tile",), "amx-int8": ("amx_int8",), "amx-bf16": ("amx_bf16",), "amx-fp16": ("amx_fp16",),
}
#: the same for aarch64 (the ``Features`` line of /proc/cpuinfo)
AARCH64_FLAGS = {
    "neon": ("asimd",), "fp-armv8": ("fp",), "fullfp16": ("fphp", "asimdhp"), "dotprod": ("asimddp",),
    "i8mm": ("i8mm",), "bf16": ("bf16",), "sve": ("sve",), "sve2": ("sve2",), "sme": ("sme",), "aes": ("aes",),
    "sha2": ("sha2",), "crc": ("crc32",), "lse": ("atomics",), "rdm": ("asimdrdm",),
}


def _machine() -> str:
    import platform  # noqa: PLC0415

    machine = platform.machine().lower()
    return "aarch64" if machine in ("aarch64", "arm64") else machine


def _flag_map(arch: str) -> dict[str, tuple[str, ...]]:
    return {"x86_64": X86_FLAGS, "aarch64": AARCH64_FLAGS}.get(arch, {})


def _triple_arch(triple: str) -> str:
    arch = triple.split("-", 1)[0].lower()
    return {"arm64": "aarch64", "amd64": "x86_64"}.get(arch, arch)


def llvm_features(target) -> list[str]:
    """The features LLVM enables for an llvm ``target`` (its mcpu's plus/minus its mattr), sorted strings such as
    ``avx2``, ``sse4.2``, ``avx512vnni``, ``neon``, ``dotprod``: the instructions its code may contain."""
    from tvm.target import codegen  # noqa: PLC0415

    return sorted(str(f) for f in codegen.llvm_get_cpu_features(target))


def _cpu_names(triple: str) -> list[str]:
    from tvm.target import codegen  # noqa: PLC0415

    return [str(n) for n in codegen.llvm_get_cpu_archlist(_tvm().target.Target({"kind": "llvm", "mtriple": triple}))]


def check_mcpu(cpu: str, triple: str | None = None) -> None:
    """OptcError (one line, with a did-you-mean) unless LLVM knows ``cpu`` for ``triple`` (default: this host's)."""
    from tvm.target import codegen  # noqa: PLC0415

    triple = triple or str(codegen.llvm_get_system_triple())
    if not cpu or not codegen.llvm_is_valid_cpu(cpu, triple):
        names = _cpu_names(triple) + (["native"] if _triple_arch(triple) == _machine() else [])
        raise OptcError(f"unknown --mcpu '{cpu}' for {_triple_arch(triple)}{did_you_mean(cpu, names)} "
                        "(any LLVM CPU name, a portable x86-64[-v2|-v3|-v4], or native)")


def native_cpu() -> tuple[str, list[str]]:
    """This host's CPU as LLVM names it, and the ``mattr`` that corrects LLVM's feature list with /proc/cpuinfo:
    ``-feat`` for what the named CPU has but this one lacks (a VM that hides AVX-512), ``+feat`` for what it has but
    LLVM's name misses (Sapphire Rapids named ``rocketlake``: ``+amx-tile``, ...). No correction without cpuinfo."""
    name = host_cpu_name()
    flags = host_cpu_flags()
    if not flags:
        return name, []
    named = set(llvm_features(_tvm().target.Target({"kind": "llvm", "mcpu": name})))
    mattr = []
    for feat, host_flags in sorted(_flag_map(_machine()).items()):
        has = any(f in flags for f in host_flags)
        if feat in named and not has:
            mattr.append(f"-{feat}")
        elif has and feat not in named:
            mattr.append(f"+{feat}")
    return name, mattr


def _llvm_spec(mcpu: str | None, triple: str | None = None) -> dict:
    """``{"mcpu": ..., "mattr": [...]}`` for an --mcpu choice (None or ``native``: this host, checked above)."""
    if mcpu is None or mcpu == "native":
        if triple is not None and _triple_arch(triple) != _machine():
            raise OptcError(f"--mcpu native names this {_machine()} machine's CPU, not an {_triple_arch(triple)} one: "
                            "give an LLVM CPU name (e.g. neoverse-n1)")
        name, mattr = native_cpu()
        return {"mcpu": name, **({"mattr": mattr} if mattr else {})}
    check_mcpu(mcpu, triple)
    return {"mcpu": mcpu}


def _cpu_target(num_cores: int | None = None, mcpu: str | None = None):
    spec = {"kind": "llvm", **_llvm_spec(mcpu), "num-cores": num_cores or host_num_cores()}
    return _tvm().target.Target(spec)


def gpu_arch() -> str | None:
    """The ``sm_XX`` of this machine's first CUDA GPU, None without one (or without a driver)."""
    tvm = _tvm()
    try:
        if tvm.cuda(0).exist:
            return str(tvm.target.Target.from_device(tvm.cuda(0)).attrs["arch"])
    except Exception:  # noqa: BLE001 - no driver / no device
        pass
    return None


def _cuda_target(arch: str | None = None):
    tvm = _tvm()
    if arch is not None and not re.fullmatch(r"sm_\d{2,3}[a-z]?", arch):
        raise OptcError(f"unknown CUDA architecture '{arch}' (e.g. cuda:sm_75, cuda:sm_86, cuda:sm_90a)")
    arch = arch or gpu_arch() or DEFAULT_CUDA_ARCH
    return tvm.target.Target({"kind": "cuda", "arch": arch}, host=_cpu_target())


def _arm64_target(mcpu: str | None = None):
    triple = "aarch64-linux-gnu"
    spec = {"kind": "llvm", "mtriple": triple, "mattr": ["+neon"], "num-cores": 4}
    if mcpu is not None:
        spec.update(_llvm_spec(mcpu, triple))
        spec["mattr"] = ["+neon", *spec.get("mattr", [])]
    return _tvm().target.Target(spec)


def _parse_value(kind: str, key: str, value: str | None):
    """One ``-key=value`` of TVM's old string form as the JSON value the option's type wants."""
    types = dict(_tvm().target.TargetKind.options_from_name(kind))
    if key not in types:
        raise OptcError(f"target '{kind}' has no option '-{key}'{did_you_mean(key, types)}")
    kind_of = str(types[key])
    if value is None:
        if kind_of != "bool":
            raise OptcError(f"target option '-{key}' needs a value (-{key}=...)")
        return True
    if kind_of.startswith("Array"):
        return [v for v in value.split(",") if v]
    if kind_of == "int":
        try:
            return int(value)
        except ValueError:
            raise OptcError(f"target option '-{key}={value}': not an integer") from None
    if kind_of == "bool":
        if value.lower() not in ("1", "0", "true", "false"):
            raise OptcError(f"target option '-{key}={value}': not true or false")
        return value.lower() in ("1", "true")
    return value


def parse_target_string(text: str) -> dict:
    """TVM's old string form, ``"llvm -mcpu=skylake -mattr=+avx2,+fma"`` -> ``{"kind": "llvm", "mcpu": "skylake",
    "mattr": ["+avx2", "+fma"]}`` (TVM 0.27 takes only dicts). OptcError for an unknown kind or option."""
    kind, *options = text.split()
    if kind not in _tvm().target.Target.list_kinds():
        raise OptcError(f"unsupported target kind '{kind}'{did_you_mean(kind, _tvm().target.Target.list_kinds())}")
    spec: dict = {"kind": kind}
    for opt in options:
        if not opt.startswith("-") or opt == "-":
            raise OptcError(f"target option '{opt}' must look like -key=value")
        key, eq, value = opt.lstrip("-").partition("=")
        spec[key] = _parse_value(kind, key, value if eq else None)
    return spec


def _dict_target(spec: dict, mcpu: str | None):
    tvm = _tvm()
    spec = dict(spec)
    if mcpu is not None:
        if spec.get("kind") != "llvm":
            raise OptcError(f"--mcpu applies to llvm targets, not '{spec.get('kind')}'")
        if "mcpu" in spec and str(spec["mcpu"]) != mcpu:
            raise OptcError(f"--mcpu {mcpu} contradicts the target's own mcpu '{spec['mcpu']}': give the CPU once")
        spec["mcpu"] = mcpu
    if spec.get("kind") == "llvm" and "mcpu" in spec:
        triple = spec.get("mtriple")
        llvm = _llvm_spec(str(spec["mcpu"]), str(triple) if triple else None)
        spec["mcpu"] = llvm["mcpu"]
        if llvm.get("mattr"):
            spec["mattr"] = [*spec.get("mattr", []), *llvm["mattr"]]
    try:
        return tvm.target.Target(spec)
    except Exception as exc:  # noqa: BLE001 - TVM's ValueError lists every known option: keep its first sentence
        raise OptcError(f"invalid target {json.dumps(spec, default=str)}: {first_line(exc).split('. ')[0]}") from exc


def resolve_target(name, **options):
    """Return the :class:`tvm.target.Target` for ``name``:

    - a preset: ``cpu`` (this host, or ``mcpu``), ``cuda`` / ``cuda:sm_86`` (arch from the GPU when there is one,
      else ``sm_75``), ``arm64`` (aarch64 Linux, NEON);
    - any TVM target as a dict, as JSON text (``'{"kind": "llvm", "mcpu": "znver4"}'``) or in TVM's old string form
      (``"llvm -mcpu=skylake"``), or a ``tvm.target.Target`` (returned unchanged).

    ``options``: ``num_cores`` (cpu), ``arch`` (cuda, e.g. ``"sm_86"``), ``mcpu`` (an LLVM CPU name, ``x86-64-v3``
    and the other portable levels, or ``native``; cpu, arm64 and llvm dicts). ``native`` is LLVM's name of this CPU
    with its features corrected from /proc/cpuinfo (``native_cpu``). Raises OptcError (one line) for an unknown
    name, kind, option, CPU (with a did-you-mean) or CUDA architecture.
    """
    tvm = _tvm()
    mcpu = options.get("mcpu")
    if isinstance(name, tvm.target.Target):
        if mcpu is not None:
            raise OptcError("give mcpu inside the Target, not beside it")
        return name
    if isinstance(name, dict):
        return _dict_target(name, mcpu)
    text = str(name).strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except ValueError as exc:
            raise OptcError(f"--target is not valid JSON: {exc}") from None
        if not isinstance(spec, dict):
            raise OptcError("a JSON --target must be an object such as {\"kind\": \"llvm\", \"mcpu\": \"znver4\"}")
        return _dict_target(spec, mcpu)
    if " " in text:
        return _dict_target(parse_target_string(text), mcpu)
    key = text.lower()
    if key in ("cpu", "llvm"):
        return _cpu_target(options.get("num_cores"), mcpu)
    if key == "cuda" or key.startswith("cuda:"):
        if mcpu is not None:
            raise OptcError("--mcpu applies to cpu and arm64 targets; for cuda name the GPU: --target cuda:sm_86")
        return _cuda_target(key.partition(":")[2] or options.get("arch"))
    if key in ("arm64", "aarch64"):
        return _arm64_target(mcpu)
    if key in tvm.target.Target.list_kinds():
        return _dict_target({"kind": key}, mcpu)
    raise OptcError(f"unsupported target '{name}' (choose from cpu, cuda, cuda:sm_XX, arm64, or a TVM target as "
                    "JSON such as '{\"kind\": \"llvm\", \"mcpu\": \"znver4\"}')")


def describe_target(target, name=None) -> str:
    """A short phrase for summaries: ``cpu (znver3)``, ``arm64 (neoverse-n1)``, ``cuda (sm_86)``,
    ``cuda (sm_75: no GPU found, default)`` when ``name`` was a plain ``cuda`` on a machine without a GPU."""
    kind = target_kind(target)
    if kind == "cuda":
        arch = str(target.attrs["arch"])
        if isinstance(name, str) and name.strip().lower() == "cuda":
            return f"cuda ({arch}: detected)" if gpu_arch() else f"cuda ({arch}: no GPU found, default)"
        return f"cuda ({arch})"
    if target.kind.name == "llvm":
        return f"{kind} ({target.attrs.get('mcpu') or 'generic'})"
    return target.kind.name


def target_metadata(target) -> dict:
    """What an artifact records of its target, as JSON values: ``kind`` (TVM's), ``mtriple``, ``mcpu``, ``mattr``
    and ``features`` (sorted LLVM feature names the code may use) for llvm; ``arch`` and the same for its ``host``
    for cuda."""
    info: dict = {"kind": target.kind.name}
    if target.kind.name == "llvm":
        from tvm.target import codegen  # noqa: PLC0415

        info["mtriple"] = str(target.attrs.get("mtriple") or codegen.llvm_get_system_triple())
        info["mcpu"] = str(target.attrs.get("mcpu") or "generic")
        info["mattr"] = [str(a) for a in target.attrs.get("mattr", [])]
        info["features"] = llvm_features(target)
    elif target.kind.name == "cuda":
        info["arch"] = str(target.attrs["arch"])
    if target.host is not None and target.host.kind.name == "llvm" and target.kind.name != "llvm":
        info["host"] = target_metadata(target.host)
    return info


def check_runs_here(metadata: dict, path="the library") -> None:
    """Refuse (OptcError, one line) an artifact built for another CPU architecture or for instructions this CPU
    lacks, from its metadata's ``target_info``. Conservative: only instruction-set features with a known
    /proc/cpuinfo flag are compared, and nothing is refused when the metadata (older artifacts) or cpuinfo is
    missing."""
    info = metadata.get("target_info")
    if not isinstance(info, dict):
        return
    cpu = info.get("host", info)
    if not isinstance(cpu, dict) or "mtriple" not in cpu:
        return
    arch = _triple_arch(str(cpu["mtriple"]))
    if arch in ("x86_64", "aarch64") and arch != _machine():
        raise OptcError(f"'{path}' was built for {arch} ({cpu['mtriple']}); this machine is {_machine()}")
    flags = host_cpu_flags()
    if not flags:
        return
    table = _flag_map(arch)
    missing = [f for f in cpu.get("features", []) if f in table and not any(h in flags for h in table[f])]
    if missing:
        hint = "--mcpu native, or a portable level such as --mcpu x86-64-v2" if arch == "x86_64" else "--mcpu native"
        raise OptcError(f"'{path}' was built for mcpu={cpu.get('mcpu')} with instructions this CPU lacks: "
                        f"{', '.join(missing)}; rebuild it with {hint}")


def check_measurable(target, remote: bool = False) -> None:
    """Before tuning: OptcError (one line) when ``target``'s kernels cannot be measured on this machine (cuda
    without a GPU, arm64 on x86) and no remote device (``remote``, an RPC tracker) measures them."""
    if not remote and is_cross_target(target):
        where = "no CUDA GPU here" if target_kind(target) == "cuda" else f"this machine is {_machine()}"
        raise OptcError(f"cannot tune for {describe_target(target)}: {where}; measure on a device with "
                        "--rpc HOST:PORT:KEY, or compile without --tune")


def linker(target, cc: str | None = None) -> str | None:
    """The compiler that links the library: ``cc`` (a name on PATH or a path; OptcError when it does not exist), else
    the arm64 cross compiler for arm64 on another machine (``cross_compiler``), else None (TVM's default, g++);
    OptcError for an llvm target of another architecture (``mtriple``) without ``cc``, which g++ cannot link.
    Called before the build, so a missing compiler costs nothing."""
    if cc is not None:
        found = shutil.which(cc)
        if not found:
            raise OptcError(f"--cc '{cc}': no such compiler (not an executable on PATH or a path)")
        return found
    if target.kind.name == "llvm" and target_kind(target) == "cpu" and target.attrs.get("mtriple"):
        triple = str(target.attrs["mtriple"])
        if _triple_arch(triple) != _machine():
            raise OptcError(f"cannot link a library for {_triple_arch(triple)} ({triple}) with this {_machine()} "
                            "machine's g++: give --cc COMPILER (a cross compiler), or write the objects with --emit tar")
    return cross_compiler(target)


def target_kind(target) -> str:
    """``cpu``, ``cuda`` or ``arm64`` for a resolved target (``other`` for anything else)."""
    kind = target.kind.name
    if kind == "llvm":
        triple = str(target.attrs.get("mtriple", ""))
        return "arm64" if triple.startswith(("aarch64", "arm64")) else "cpu"
    if kind == "cuda":
        return "cuda"
    return "other"


def is_cross_target(target) -> bool:
    """True when code for ``target`` cannot run on this machine (cuda without a GPU, arm64 on x86)."""
    import platform  # noqa: PLC0415

    kind = target_kind(target)
    if kind == "arm64":
        return platform.machine() not in ("aarch64", "arm64")
    if kind == "cuda":
        try:
            return not _tvm().cuda(0).exist
        except Exception:
            return True
    return False


def cross_compiler(target) -> str | None:
    """The C++ compiler that links a library for ``target``; None means the host default (g++).

    Raises OptcError when the arm64 cross compiler is missing.
    """
    if target_kind(target) != "arm64" or not is_cross_target(target):
        return None
    for cc in ARM64_CROSS_COMPILERS:
        path = shutil.which(cc)
        if path:
            return path
    raise OptcError(
        "cannot export for arm64: no aarch64 cross compiler found "
        f"(tried {', '.join(ARM64_CROSS_COMPILERS)}; install g++-aarch64-linux-gnu or give --cc COMPILER)"
    )
