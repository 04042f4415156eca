"""Builders for synthetic test data: real files on disk, made by the tests themselves."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Distinct colours per class, so even a tiny model can separate synthetic classes.
PALETTE = [(220, 40, 40), (40, 200, 60), (40, 80, 220), (230, 200, 40), (180, 60, 200), (40, 200, 200)]


def synthetic_image(label: int, seed: int, size: int = 64) -> np.ndarray:
    """RGB uint8: a class-coloured disc on noise, so images of one class differ but stay separable."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    centre = tuple(int(c) for c in rng.integers(size // 3, 2 * size // 3, 2))
    cv2.circle(img, centre, size // 4, PALETTE[label % len(PALETTE)], -1)
    return img


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


def make_image_folder(root: Path, classes=("fist", "palm", "peace"), per_class: int = 12, size: int = 64, ext: str = ".png") -> Path:
    """ROOT/<class>/<i>.png, synthetic but real image files."""
    for label, name in enumerate(classes):
        for i in range(per_class):
            write_rgb(root / name / f"{i:03d}{ext}", synthetic_image(label, seed=label * 1000 + i, size=size))
    return root


def count_calls(monkeypatch, owner, name: str) -> list[tuple[tuple, dict]]:
    """Replace ``owner.name`` by a pass-through that records each call's (args, kwargs)."""
    real, calls = getattr(owner, name), []

    def recorded(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, recorded)
    return calls


def train_interrupted_in_epoch_2(cfg, monkeypatch) -> int:
    """``training.finetune.train(cfg)`` with a Ctrl-C during its second epoch; returns the exit code."""
    return train_interrupted_in_epoch(cfg, monkeypatch, 2)


def train_interrupted_in_epoch(cfg, monkeypatch, epoch: int) -> int:
    """``training.finetune.train(cfg)`` with a Ctrl-C during epoch ``epoch``; returns the exit code."""
    import training.finetune as finetune

    real_epoch, calls = finetune.train_one_epoch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(finetune, "train_one_epoch", interrupted)
        try:
            finetune.train(cfg)
        except SystemExit as stop:
            return stop.code
    raise AssertionError("training finished without being interrupted")


def heic_photo_start() -> bytes:
    """The first boxes of an iPhone's HEIC photo (ISO-BMFF: ftyp, brand heic, then meta): nothing here
    decodes HEIC, so they are all a test needs of one."""
    ftyp = b"ftyp" + b"heic" + bytes(4) + b"mif1" + b"heic"
    meta = b"meta" + bytes(4) + (8).to_bytes(4, "big") + b"hdlr"
    return len(ftyp + b"    ").to_bytes(4, "big") + ftyp + len(meta + b"    ").to_bytes(4, "big") + meta


def trained_further(run: Path) -> None:
    """Make ``run`` look trained past its report and then interrupted: history.csv, written with last.pt
    every epoch, gets one more epoch than metrics.json reports."""
    history = run / "history.csv"
    lines = history.read_text().splitlines()
    last = lines[-1].split(",")
    history.write_text("\n".join([*lines, ",".join([str(int(last[0]) + 1), *last[1:]])]) + "\n")


@contextlib.contextmanager
def a_run_training_in(folder: Path) -> Iterator[None]:
    """Another process holding ``folder``'s run lock (training.run_lock), as a run training there does,
    named "pid 4242 on trainer"."""
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
                               "f.write('pid 4242 on trainer\\n'); f.flush(); print('held', flush=True); time.sleep(60)", str(folder / ".lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()
