"""An emulated aarch64 device on an x86 host: qemu user-mode running an aarch64 Python with TVM's runtime.

``ensure_sysroot()`` builds, once, a small aarch64 root from Debian's arm64 packages (Python 3.11 and the C/C++
runtime libraries, fetched with the host's own apt sources into a private apt state, extracted with
``dpkg-deb -x``) and the registry's aarch64 wheels (``apache-tvm``, ``apache-tvm-ffi``, numpy and what TVM's RPC
server imports, fetched with ``pip download`` and unpacked into the root's site-packages). TVM's compiler library
is left out: the device only runs code (``TVM_USE_RUNTIME_LIB=1``), which keeps the root near 190 MB instead of
420 MB and TVM's import under emulation near 5 s instead of 22 s.

The root holds ``optc-python``, a host shell script that runs the root's Python under qemu
(``qemu-aarch64-static`` or ``qemu-aarch64`` from PATH, ``-L ROOT``); it is the Python's ``sys.executable``,
so TVM's worker processes (which re-execute ``sys.executable``) also run emulated without binfmt_misc.
``server_argv(...)`` is the argv of TVM's RPC server (``python -m tvm.exec.rpc_server``) run that way.
"""

from __future__ import annotations

import compileall
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import OptcError, first_line

__all__ = ["ARCHES", "ensure_sysroot", "python_argv", "qemu_binary", "server_argv", "standalone_server_argv",
           "sysroot_path"]

#: emulated architectures: name -> (Debian architecture, qemu user-mode binaries tried in order, wheel platforms)
ARCHES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "aarch64": ("arm64", ("qemu-aarch64-static", "qemu-aarch64"),
                ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_24_aarch64",
                 "manylinux_2_27_aarch64", "manylinux_2_28_aarch64")),
}
PYTHON_VERSION = "3.11"
#: Debian packages (their Depends come along): the interpreter, its standard library, libstdc++ for TVM
DEBIAN_PACKAGES = (f"python{PYTHON_VERSION}-minimal", f"libpython{PYTHON_VERSION}-stdlib", "libstdc++6")
#: wheels unpacked into the root (no dependency resolution: this list is complete for TVM's runtime + RPC server)
WHEELS = ("apache-tvm==0.27.*", "apache-tvm-ffi<0.1.15", "numpy", "ml_dtypes", "typing_extensions", "psutil",
          "cloudpickle")
SITE_PACKAGES = f"usr/local/lib/python{PYTHON_VERSION}/dist-packages"
#: what the device never needs: TVM's compiler (230 MB), headers and sources, documentation
PRUNE = (f"{SITE_PACKAGES}/tvm/lib/libtvm_compiler.so", f"{SITE_PACKAGES}/tvm/3rdparty", f"{SITE_PACKAGES}/tvm/include",
         f"{SITE_PACKAGES}/tvm/src", "usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info",
         "usr/share/lintian")
LAUNCHER = "usr/bin/optc-python"  # beside the interpreter, so Python finds its prefix from it
STAMP = ".optc-sysroot.json"  # written last: a root without it (or with another spec) is rebuilt
SPEC = {"debian": DEBIAN_PACKAGES, "wheels": WHEELS, "prune": PRUNE, "python": PYTHON_VERSION, "format": 1}

_LAUNCHER_TEXT = """#!/bin/sh
# Runs this root's aarch64 Python under qemu user-mode (written by optc.remote.emulate).
root=$(cd "$(dirname "$0")/../.." && pwd)
qemu=$(command -v {qemu} 2>/dev/null) || {{ echo "optc: error: qemu user-mode not found ({qemus}); install qemu-user-static" >&2; exit 127; }}
exec "$qemu" -L "$root" -0 "$0" -E TVM_USE_RUNTIME_LIB=1 "$root/usr/bin/python{version}" -I "$@"
"""


def _arch(arch: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    if arch not in ARCHES:
        raise OptcError(f"cannot emulate '{arch}': supported architectures are {', '.join(ARCHES)}")
    return ARCHES[arch]


def qemu_binary(arch: str = "aarch64") -> str:
    """Path of the qemu user-mode emulator for `arch`; OptcError (one line) when none is installed."""
    for name in _arch(arch)[1]:
        path = shutil.which(name)
        if path:
            return path
    raise OptcError(f"cannot emulate {arch}: qemu user-mode not found (tried {', '.join(_arch(arch)[1])}); "
                    "install qemu-user-static")


def sysroot_path(arch: str = "aarch64", cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the root for `arch` lives: ``cache_dir/sysroot-ARCH``; by default under $OPTC_CACHE_DIR, else
    $XDG_CACHE_HOME/optc, else ~/.cache/optc."""
    _arch(arch)
    if cache_dir is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        cache_dir = os.environ.get("OPTC_CACHE_DIR") or os.path.join(base, "optc")
    return Path(cache_dir).expanduser().resolve() / f"sysroot-{arch}"


def _complete(root: Path) -> bool:
    try:
        return json.loads((root / STAMP).read_text()).get("spec") == json.loads(json.dumps(SPEC))
    except (OSError, ValueError, AttributeError):
        return False


def ensure_sysroot(arch: str = "aarch64", cache_dir: str | os.PathLike | None = None, progress: bool = False) -> Path:
    """The aarch64 root, built on first use and reused after (see the module docstring); returns its path.

    Building downloads about 130 MB (Debian's arm64 packages with the host's apt, wheels with this Python's pip)
    and takes 20-60 s. It happens in a temporary directory beside the root, renamed into place when complete; a
    lock file serializes concurrent callers. `progress` prints one line per step on stderr.

    Raises OptcError (one line) for an unsupported `arch`, a missing qemu, apt-get/dpkg-deb or pip, or a failed
    download (the tool's own last line is quoted).
    """
    qemu_binary(arch)
    root = sysroot_path(arch, cache_dir)
    if _complete(root):
        return root
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptcError(f"cannot create the cache directory '{root.parent}': {exc.strerror or exc}") from None
    with _locked(root.with_name(root.name + ".lock")):
        if _complete(root):  # another process built it while this one waited
            return root
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
        try:
            _build(arch, tmp, root, progress)
            old = root.with_name(f".{root.name}.old")
            if root.exists():
                shutil.rmtree(old, ignore_errors=True)
                root.rename(old)
            tmp.rename(root)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"optc: sysroot: {message}", file=sys.stderr, flush=True)


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if not path:
        raise OptcError(f"cannot build the emulated sysroot: '{name}' not found (it needs a Debian-based host "
                        f"with {package})")
    return path


def _run(argv: list[str], what: str) -> None:
    """Run a download/extract step; OptcError with the tool's last output line when it fails."""
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as exc:
        raise OptcError(f"cannot build the emulated sysroot: {what} failed: {exc.strerror or exc}") from None
    if r.returncode != 0:
        lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith(("E:", "ERROR:", "dpkg-deb: error"))]
        detail = first_line(RuntimeError((errors or lines or [f"exit {r.returncode}"])[-1]))
        raise OptcError(f"cannot build the emulated sysroot: {what} failed: {detail}")


def _build(arch: str, tmp: Path, final: Path, progress: bool) -> None:
    deb_arch, _, platforms = ARCHES[arch]
    work, root = tmp / "_work", tmp
    debs = work / "cache" / "archives"
    (work / "state" / "lists" / "partial").mkdir(parents=True)
    (debs / "partial").mkdir(parents=True)
    (work / "status").touch()
    apt = [_tool("apt-get", "apt"), "-q", "-o", f"Dir::State={work / 'state'}", "-o", f"Dir::State::status={work / 'status'}",
           "-o", f"Dir::Cache={work / 'cache'}", "-o", f"APT::Architecture={deb_arch}",
           "-o", f"APT::Architectures={deb_arch}", "-o", "Debug::NoLocking=1"]
    _say(progress, f"fetching Debian's {deb_arch} package lists")
    _run(apt + ["update"], f"apt-get update ({deb_arch})")
    _say(progress, f"downloading {', '.join(DEBIAN_PACKAGES)} and their dependencies")
    _run(apt + ["install", "--download-only", "-y", "--no-install-recommends", *DEBIAN_PACKAGES],
         f"downloading Debian {deb_arch} packages")
    dpkg_deb = _tool("dpkg-deb", "dpkg")
    for deb in sorted(debs.glob("*.deb")):
        _run([dpkg_deb, "-x", str(deb), str(root)], f"extracting {deb.name}")
    _say(progress, f"downloading {len(WHEELS)} {arch} wheels")
    wheels = work / "wheels"
    platform_flags = [f for p in platforms for f in ("--platform", p)]
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", *platform_flags,
          "--python-version", PYTHON_VERSION, "--implementation", "cp", "-d", str(wheels), *WHEELS],
         f"pip download of the {arch} wheels")
    site = root / SITE_PACKAGES
    site.mkdir(parents=True, exist_ok=True)
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as z:
            z.extractall(site)
    _say(progress, "pruning and precompiling")
    shutil.rmtree(work)
    for rel in PRUNE:
        p = root / rel
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    _relative_links(root)
    _precompile(root, final)
    launcher = root / LAUNCHER
    qemus = ARCHES[arch][1]
    launcher.write_text(_LAUNCHER_TEXT.format(qemu=" || command -v ".join(qemus), qemus=", ".join(qemus),
                                              version=PYTHON_VERSION))
    launcher.chmod(0o755)
    (root / STAMP).write_text(json.dumps({"arch": arch, "spec": SPEC}, indent=2) + "\n")


def _relative_links(root: Path) -> None:
    """Make absolute symlinks point into the root: the host kernel resolves them, not qemu's -L prefix."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                target = os.readlink(p)
                if target.startswith("/"):
                    p.unlink()
                    p.symlink_to(os.path.relpath(root / target.lstrip("/"), p.parent))


def _precompile(root: Path, final: Path) -> None:
    """Byte-compile the standard library and site-packages with this host's Python when it is the same
    version (emulated compilation costs the server's first start 10 s more); paths recorded as the final root."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" != PYTHON_VERSION:
        return
    for rel in (f"usr/lib/python{PYTHON_VERSION}", SITE_PACKAGES):
        compileall.compile_dir(str(root / rel), quiet=2, workers=1, stripdir=str(root),
                               prependdir=str(final), optimize=-1)


def python_argv(arch: str = "aarch64", *, sysroot: str | os.PathLike | None = None) -> list[str]:
    """argv prefix that runs the emulated Python (append ``-c CODE`` or ``-m MODULE ...``). The root must
    exist (``ensure_sysroot``); OptcError (one line) otherwise, or when qemu is missing."""
    qemu_binary(arch)
    root = Path(sysroot) if sysroot is not None else sysroot_path(arch)
    if not _complete(root):
        raise OptcError(f"no emulated {arch} sysroot at '{root}': build it first with "
                        "optc.remote.emulate.ensure_sysroot()")
    return [str(root / LAUNCHER)]


def server_argv(tracker_host: str, tracker_port: int, key: str, *, host: str = "127.0.0.1", port: int = 9090,
                port_end: int = 9199, arch: str = "aarch64", sysroot: str | os.PathLike | None = None) -> list[str]:
    """argv of TVM's RPC server (``python -m tvm.exec.rpc_server``) running emulated, listening on
    `host`:[`port`, `port_end`) and registered with the tracker at `tracker_host`:`tracker_port` under `key`."""
    if not key:
        raise OptcError("an RPC server registered with a tracker needs a key (e.g. arm64)")
    return python_argv(arch, sysroot=sysroot) + [
        "-m", "tvm.exec.rpc_server", "--tracker", f"{tracker_host}:{int(tracker_port)}", "--key", key,
        "--host", host, "--port", str(int(port)), "--port-end", str(int(port_end))]


def standalone_server_argv(*, host: str = "127.0.0.1", port: int = 9090, port_end: int = 9199,
                           arch: str = "aarch64", sysroot: str | os.PathLike | None = None) -> list[str]:
    """argv of the emulated RPC server without a tracker: clients connect to `host`:`port` directly
    (``tvm.rpc.connect``); it binds the first free port in [`port`, `port_end`) and logs it."""
    return python_argv(arch, sysroot=sysroot) + [
        "-m", "tvm.exec.rpc_server", "--host", host, "--port", str(int(port)), "--port-end", str(int(port_end))]
