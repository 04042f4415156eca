"""What C and C++ libraries print and raise. What they print goes to the process's file descriptors 1 and 2,
past sys.stdout and sys.stderr, so only the descriptor itself can be redirected; what they raise is quoted
in brief (standard library only)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def in_brief(err: BaseException, limit: int = 300) -> str:
    """A library's error on one line of at most ``limit`` characters, for a message of ours that quotes it: C++
    libraries' run over many lines, and the first alone may say nothing (OpenVINO's names the source file that raised)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


@contextmanager
def native_stream_to(fd: int, sink_fd: int) -> Iterator[None]:
    """The file descriptor ``fd`` (1: stdout, 2: stderr) written to ``sink_fd`` while the block runs."""
    (sys.stdout if fd == 1 else sys.stderr).flush()  # Python's own buffered lines go where they were meant to
    saved = os.dup(fd)
    os.dup2(sink_fd, fd)
    try:
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


@contextmanager
def native_stdout_discarded() -> Iterator[None]:
    """Whatever a native library prints to stdout while the block runs is dropped."""
    with open(os.devnull, "wb") as sink, native_stream_to(1, sink.fileno()):
        yield
