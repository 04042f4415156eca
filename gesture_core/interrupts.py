"""Ctrl-C while a command starts: ``python -m training.finetune`` imports torch and its kin for about
two seconds before ``main`` runs, where ``gesture_core.cli.command`` turns Ctrl-C into "interrupted";
Python's own answer there was a 30-line KeyboardInterrupt traceback through the imports.

Importing this module installs the handler (where a command is starting); it is standard library only.
``gesture_core/__init__`` imports it before anything heavy, and the packages with commands (training,
service, benchmarks) import it first.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_INTERRUPTED = 130  # what a shell reports for a process stopped by Ctrl-C (128 + SIGINT)
# SIGTERM: what timeout, kill, systemd and docker stop send; SIGHUP: the terminal closed (not under nohup)
STOP_SIGNALS = (signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []))
_stopped_by: int | None = None  # the stop signal a KeyboardInterrupt came from (terminate_as_interrupt)


def a_local_peer() -> bool:
    """Whether torchrun started this process beside another on the same machine (LOCAL_RANK 1, 2, ...): what
    every process of the machine would say alike (a mistake on the command line, "interrupted") is then said by
    local rank 0 alone, where each of N processes said it. Local rank 0 also speaks for a peer that fails,
    when torchrun stops the others: each said "interrupted", where the user had interrupted nothing."""
    started_by_torchrun = "TORCHELASTIC_RUN_ID" in os.environ  # another launcher's LOCAL_RANK would silence a lone process
    return started_by_torchrun and os.environ.get("LOCAL_RANK", "0").strip() not in ("", "0")


def _interrupted_while_importing(signum: int, frame: object) -> None:
    if not a_local_peer():
        os.write(2, b"\ninterrupted\n")
    os._exit(128 + signum)  # nothing is written before main runs, so there is nothing to close or keep


def quiet_interrupts_while_importing() -> None:
    """Exit with one line on Ctrl-C, SIGTERM or SIGHUP until ``main`` starts, when Python is importing the packages
    of ``python -m PACKAGE.COMMAND`` (``sys.argv[0]`` is "-m" until the command's module is found). A library import
    (a test, ``bentoml serve``, a notebook) keeps Python's handlers; a signal ignored (``nohup``) stays ignored."""
    if sys.argv[:1] != ["-m"]:
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted_while_importing)
    for signum in STOP_SIGNALS:  # a command's main makes them KeyboardInterrupts (terminate_as_interrupt)
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, _interrupted_while_importing)


def restore_python_interrupts() -> None:
    """Python's KeyboardInterrupt again, for ``main`` and the steps in it that keep their work on Ctrl-C."""
    if signal.getsignal(signal.SIGINT) is _interrupted_while_importing:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _terminate(signum: int, frame: object) -> None:
    global _stopped_by
    _stopped_by = signum
    raise KeyboardInterrupt


def terminate_as_interrupt() -> None:
    """SIGTERM (what ``timeout``, ``kill`` and job schedulers send) and SIGHUP (the terminal closed) raise
    KeyboardInterrupt, as Ctrl-C does, so each step that keeps its work on Ctrl-C keeps it then too; a run ended at
    once, with no line, no resume hint and, mid-save, a temporary file of a checkpoint's size, and the webcam demo's
    video was left unplayable. A signal ignored (``nohup``) stays ignored. For a command's process only (not a test's
    or a server's)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) in (signal.SIG_DFL, _interrupted_while_importing):
            signal.signal(signum, _terminate)


def end_quietly_on_interrupt(exit_code: int) -> None:
    """Once a command's ``main`` has returned, Ctrl-C and SIGTERM end the process at once with ``exit_code``:
    its work is done and said. In the second of teardown after it (data-loading workers joining, torch's exit
    handlers) a Ctrl-C was a KeyboardInterrupt traceback and exit code -2 after the command said "finished"."""
    if threading.current_thread() is not threading.main_thread():
        return

    def end(signum: int, frame: object) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, RuntimeError):  # closed, or a flush the signal interrupted
                pass
        os._exit(exit_code)

    for signum in (signal.SIGINT, *STOP_SIGNALS):
        if signal.getsignal(signum) != signal.SIG_IGN:
            signal.signal(signum, end)


def interrupted_exit_code() -> int:
    """What a shell would report for the signal that stopped the command: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    return EXIT_INTERRUPTED if _stopped_by is None else 128 + _stopped_by


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block ends, then act as they would have: for a file write that
    must finish or not start. torch's zip writer turned the KeyboardInterrupt raised inside its write into
    a RuntimeError, which read as a full disk. Outside the main thread (where no handler runs) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    handlers = {signum: signal.signal(signum, lambda signum, frame: caught.append(signum)) for signum in (signal.SIGINT, *STOP_SIGNALS)}
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            if handler is not None:  # None: a handler not set from Python, which cannot be set back
                signal.signal(signum, handler)
        if caught and callable(handler := handlers[caught[0]]):
            handler(caught[0], None)
        elif caught and handlers[caught[0]] == signal.SIG_DFL:
            os.kill(os.getpid(), caught[0])  # the default action: the process ends as it would have


quiet_interrupts_while_importing()
