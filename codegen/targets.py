"""Target presets a user can name: ``cpu``, ``cuda`` and ``arm64``.

``resolve_target(name)`` turns a preset name into a :class:`tvm.target.Target`. A ``Target`` (or a
dict/JSON target) passed through is accepted as is, so API users can give any TVM target.
"""

from __future__ import annotations

import functools
import os
import shutil

from ..errors import OptcError, first_line

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


def _cpu_target(num_cores: int | None = None):
    tvm = _tvm()
    spec = {"kind": "llvm", "mcpu": host_cpu_name(), "num-cores": num_cores or host_num_cores()}
    return tvm.target.Target(spec)


def _cuda_target(arch: str | None = None):
    tvm = _tvm()
    if arch is None:
        try:
            if tvm.cuda(0).exist:
                return tvm.target.Target.from_device(tvm.cuda(0))
        except Exception:  # no driver / no device: fall through to code generation only
            pass
        arch = DEFAULT_CUDA_ARCH
    return tvm.target.Target({"kind": "cuda", "arch": arch}, host=_cpu_target())


def _arm64_target():
    tvm = _tvm()
    return tvm.target.Target(
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 4}
    )


def resolve_target(name, **options):
    """Return the :class:`tvm.target.Target` for a preset name (``cpu``, ``cuda``, ``arm64``).

    ``options``: ``num_cores`` (cpu), ``arch`` (cuda, e.g. ``"sm_86"``). A ``tvm.target.Target`` or a
    target dict is returned as a Target unchanged. Unknown names raise :class:`OptcError`.
    """
    tvm = _tvm()
    if isinstance(name, tvm.target.Target):
        return name
    if isinstance(name, dict):
        try:
            return tvm.target.Target(name)
        except Exception as exc:
            raise OptcError(f"invalid target {name!r}: {first_line(exc)}") from exc
    key = str(name).strip().lower()
    if key == "cpu" or key == "llvm":
        return _cpu_target(options.get("num_cores"))
    if key == "cuda":
        return _cuda_target(options.get("arch"))
    if key in ("arm64", "aarch64"):
        return _arm64_target()
    raise OptcError(f"unsupported target '{name}' (choose from {', '.join(PRESETS)})")


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
        f"(tried {', '.join(ARM64_CROSS_COMPILERS)}; install g++-aarch64-linux-gnu)"
    )
