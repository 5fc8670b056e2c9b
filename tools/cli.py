"""The `optc` command line. Each subcommand lives in its own module with `register(subparsers)`."""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from ..errors import OptcError
from . import (
    auto_cmd,
    bench_cmd,
    compare_cmd,
    compile_cmd,
    convert_cmd,
    debug_cmd,
    evaluate_cmd,
    inspect_cmd,
    optimize_cmd,
    passes_cmd,
    profile_cmd,
    prune_cmd,
    quantize_cmd,
    rpc_cmd,
    run_cmd,
    show_cmd,
    verify_cmd,
)
from .native_log import quiet_native_log

COMMANDS = [inspect_cmd, show_cmd, convert_cmd]
COMMANDS += [optimize_cmd, passes_cmd, verify_cmd, quantize_cmd, evaluate_cmd]
COMMANDS += [compile_cmd, run_cmd, bench_cmd]
COMMANDS += [auto_cmd]
COMMANDS += [compare_cmd, debug_cmd]
COMMANDS += [profile_cmd, prune_cmd]
COMMANDS += [rpc_cmd]


class _Parser(argparse.ArgumentParser):
    """argparse with optc's error format: one line on stderr, exit code 2 (not the usage block). No abbreviated
    options: `--symmetric` was taken as `--symmetric-activations` and refused with that option's error."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"optc: error: {message} (see '{self.prog} --help')\n")


class _Version(argparse.Action):
    """`--version`: `version_text()` as is (argparse's own version action would re-wrap its lines)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())  # on stdout, as argparse's own version action
        parser.exit(0)


def version_text() -> str:
    """One line per component, e.g. "onnxruntime 1.31.1", read from the installed distributions'
    metadata (nothing is imported: TVM takes seconds to import); "not installed" when one is missing."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    lines = [f"optc {__version__}"]
    for label, dist in (("onnx", "onnx"), ("onnxruntime", "onnxruntime"), ("tvm", "apache-tvm"),
                        ("tvm-ffi", "apache-tvm-ffi")):
        try:
            lines.append(f"{label} {version(dist)}")
        except PackageNotFoundError:
            lines.append(f"{label} not installed")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="optc",
        description="optc: a model-optimizing compiler. Imports ONNX into optc's IR, optimizes it, and emits "
        "ONNX or TVM-compiled libraries.",
    )
    parser.add_argument("--version", action=_Version, nargs=0, default=argparse.SUPPRESS,
                        help="print the versions of optc, onnx, onnxruntime, TVM and tvm-ffi, and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand; user errors print one line on stderr and exit with code 2."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line usage error (exit 2): a code, not an exception
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with quiet_native_log():
            return int(args.func(args) or 0)
    except OptcError as exc:
        if os.environ.get("OPTC_DEBUG"):  # the underlying cause of a refusal or error, then its one line
            traceback.print_exception(exc)
        print(f"optc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("optc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `optc ... --json | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as exc:  # an optc bug, not a user error: still one line unless debugging
        if os.environ.get("OPTC_DEBUG"):
            raise
        print(f"optc: internal error: {type(exc).__name__}: {exc} (set OPTC_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
