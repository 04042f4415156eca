"""One training process per run folder.

Two runs given one ``--out`` a moment apart both passed the check for a run already there (neither had
written ``best.pt`` yet) and wrote each other's checkpoints: the second finished, the first died on
weights that no longer fit, its work lost. A ``--resume`` of a run still training trained beside it in
the same folder. The run folder's ``.lock`` file is held with ``flock`` while a run trains in it, so
the operating system lets it go when the process ends, however it ends (a kill -9 leaves no stale
lock to clear by hand). Where ``flock`` does not exist (Windows), runs are not locked.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TextIO

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".lock"
ADVICE = "wait for it to end, or pass another --out"
_held: dict[Path, TextIO] = {}  # run folder -> its open, locked .lock file, while this process trains there


def hold_run_folder(out: Path) -> None:
    """Lock ``out`` for this process (again: nothing), or a ValueError naming the process that holds it."""
    key = out.resolve()
    if fcntl is None or key in _held:
        return
    handle = (out / LOCK_FILE).open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another process holds it
        raise in_use(out, handle) from None
    except OSError:  # a file system without locks (some network mounts): the run goes on unlocked, as on Windows
        handle.close()
        return
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    _held[key] = handle


def check_not_in_use(out: Path, advice: str = ADVICE) -> None:
    """The ValueError of ``hold_run_folder`` when another process trains in ``out``, without holding it: at
    start-up, before anything else is said of the folder. A second run at a run's --out a moment later was
    told the folder "holds an interrupted run: continue it with --resume", and that resume was refused
    only after its start-up lines."""
    if fcntl is None or out.resolve() in _held or not (out / LOCK_FILE).is_file():
        return
    with (out / LOCK_FILE).open(encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)  # refused while a run holds it exclusively
        except BlockingIOError:
            raise in_use(out, handle, advice) from None
        except OSError:  # no locks on this file system: runs go unlocked
            return


def in_use(out: Path, handle: TextIO, advice: str = ADVICE) -> ValueError:
    handle.seek(0)
    owner = handle.read().strip() or "another process"
    handle.close()
    return ValueError(f"{out} is in use by a training run ({owner}): {advice}")


def release_run_folders() -> None:
    """Let go of every run folder this process holds (at the end of a run; the process's end does it too)."""
    while _held:
        _held.popitem()[1].close()
