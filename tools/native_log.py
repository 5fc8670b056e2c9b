"""Keep the log lines that TVM's C++ code writes to the process's stderr away from the user.

TVM logs through C++ streams on file descriptor 2 (`[05:48:19] /project/src/relax/ir/block_builder.cc:67:
Warning: BlockBuilder destroyed with remaining blocks!`), which Python's `sys.stderr` cannot intercept. While
`quiet_native_log()` is active, fd 2 is a pipe read by a thread that drops such log lines and passes every
other line through; Python's own stderr (optc's messages, progress bars) writes to the real stderr directly.
`OPTC_DEBUG=1` turns the filter off.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading
from collections.abc import Iterator

# "[hh:mm:ss] path/file.cc:123: " then an optional level word: TVM's LOG(INFO/WARNING) and DLOG format
_TVM_LOG_LINE = re.compile(rb"^\[\d{2}:\d{2}:\d{2}\] \S+\.(cc|h|cpp):\d+: ")


def _forward(read_fd: int, write_fd: int) -> None:
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        for line in io.BufferedReader(pipe):
            if not _TVM_LOG_LINE.match(line):
                os.write(write_fd, line)


@contextlib.contextmanager
def quiet_native_log() -> Iterator[None]:
    """Drop TVM's native log lines from fd 2 for the duration of the block (no-op under OPTC_DEBUG)."""
    if os.environ.get("OPTC_DEBUG"):
        yield
        return
    sys.stderr.flush()
    real = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    python_stderr = sys.stderr
    try:
        on_fd2 = python_stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # redirected in Python (a test's capture, a StringIO)
        on_fd2 = False
    if on_fd2:
        sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(real), "wb", buffering=0), encoding=python_stderr.encoding,
                                      errors="backslashreplace", write_through=True)
    thread = threading.Thread(target=_forward, args=(read_fd, real), daemon=True)
    thread.start()
    try:
        yield
    finally:
        if on_fd2:
            sys.stderr.flush()
            sys.stderr.close()
        sys.stderr = python_stderr
        os.dup2(real, 2)  # closes the pipe's last writer: the thread reads to the end and stops
        thread.join(timeout=5)
        os.close(real)


@contextlib.contextmanager
def stdout_to_stderr(active: bool):
    """While active, anything written to stdout (by Python or by a native library) goes to stderr, so that
    `--json` leaves exactly one JSON document on stdout."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
