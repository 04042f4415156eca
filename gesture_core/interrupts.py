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

EXIT_INTERRUPTED = 130  # what a shell reports for a process stopped by Ctrl-C (128 + SIGINT)


def _interrupted_while_importing(signum: int, frame: object) -> None:
    os.write(2, b"\ninterrupted\n")
    os._exit(EXIT_INTERRUPTED)  # nothing is written before main runs, so there is nothing to close or keep


def quiet_interrupts_while_importing() -> None:
    """Exit with one line on Ctrl-C until ``main`` starts, when Python is importing the packages of
    ``python -m PACKAGE.COMMAND`` (``sys.argv[0]`` is "-m" until the command's module is found). A library
    import (a test, ``bentoml serve``, a notebook) keeps Python's handler."""
    if sys.argv[:1] == ["-m"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted_while_importing)


def restore_python_interrupts() -> None:
    """Python's KeyboardInterrupt again, for ``main`` and the steps in it that keep their work on Ctrl-C."""
    if signal.getsignal(signal.SIGINT) is _interrupted_while_importing:
        signal.signal(signal.SIGINT, signal.default_int_handler)


quiet_interrupts_while_importing()
