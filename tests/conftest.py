"""Shared fixtures. Real data comes from ../shared/data and is skipped only where it is absent."""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _share_the_cores() -> None:
    """Each process of a parallel run (pytest -n N) gets its share of the cores for PyTorch's threads
    (OMP_NUM_THREADS, which the servers and commands it starts inherit), as torchrun, too, lowers its
    processes' threads. With PyTorch's default of one thread per core, ``pytest -n 2`` on 2 cores ran four
    threads on two, and two fine-tunes at once took about seven times as long as with one thread each
    (docs/training.md, "On a shared machine"). A variable the developer set wins. (The engines' tests
    raise it again where a path needs several threads: tests/test_engines.py.)"""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)  # none on macOS
    if workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // workers)))


_share_the_cores()  # before torch is imported, which reads the variable once
# BentoML's documented home variable, set before anything imports bentoml: models imported in-process
# by the tests land in a throw-away store, never in the developer's ~/bentoml.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="bentoml-home-tests-")
atexit.register(shutil.rmtree, os.environ["BENTOML_HOME"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402
from filelock import FileLock  # noqa: E402

from gesture_core import build_model, get_backbone, save_checkpoint  # noqa: E402
from tests.helpers import REPO, SHARED_DATA, make_image_folder  # noqa: E402

# Fast, real fine-tune of efficientnet_lite0 on sign-digits, shared by the tests that need a
# model that actually recognises gestures (accuracy, service parity, webcam smoothing). In fp32
# (amp "off"), so that it is nearly the same model on every CPU of the pool: `--amp auto` trains in
# bf16 where the CPU has it, and bf16 arithmetic differs from one CPU to the next (on an Intel Xeon
# with AMX the bf16 model's test split had no image that the threshold alone rejected, which the
# rejection tests need, and the webcam test's clip got 9 of 12 "7" frames right where it asks for 10).
SIGN_DIGITS_RECIPE = dict(epochs=3, image_size=128, lr=3e-3, backbone_lr_mult=0.3, warmup_epochs=0.5, flip=False, workers=2, seed=0, amp="off")


# A full disk shows up as dozens of unrelated errors (a CI run once ended that way, most likely for lack of
# room), so a run says how much room its temporary files had: at the start in the header, and the least it
# had between tests in the summary at the end, which CI's log keeps.
LOW_DISK_GB = 3.5  # a test process keeps at most about 1.5 GB of temporary files at once, and `pytest -n 2` runs two
_least_free: dict[str, object] = {"gb": float("inf"), "after": "the start"}


def _free_gb(config: pytest.Config) -> tuple[Path, float]:
    folder = Path(config.option.basetemp or tempfile.gettempdir()).resolve()
    while not folder.exists():  # --basetemp may name a folder not made yet
        folder = folder.parent
    stat = os.statvfs(folder)  # what shutil.disk_usage reads: tests that fake a full disk patch that, and it read 0.1 GB here
    return folder, stat.f_bavail * stat.f_frsize / 1e9


def pytest_report_header(config: pytest.Config) -> str:
    folder, free = _free_gb(config)
    _least_free.update(gb=free, after="the start")
    warning = f" (WARNING: under {LOW_DISK_GB:g} GB; training tests may fail for lack of room)" if free < LOW_DISK_GB else ""
    return f"temporary files: {folder}, {free:.1f} GB free{warning}"


def pytest_runtest_teardown(item: pytest.Item) -> None:
    # before the test's tmp_path is removed, so its own files count
    _, free = _free_gb(item.config)
    if free < _least_free["gb"]:
        _least_free.update(gb=free, after=item.nodeid)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workeroutput"):  # a process of a parallel run (pytest -n): the least it saw goes to the main one
        session.config.workeroutput["least_free"] = dict(_least_free)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """pytest-xdist's hook, in the main process of a parallel run, as each of its processes ends."""
    seen = getattr(node, "workeroutput", {}).get("least_free")
    if seen and seen["gb"] < _least_free["gb"]:
        _least_free.update(seen)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    folder, _ = _free_gb(config)
    gb, after = _least_free["gb"], _least_free["after"]
    if gb == float("inf"):
        return
    low = gb < LOW_DISK_GB
    terminalreporter.write_line(f"temporary files: the least free space in {folder} was {gb:.1f} GB, after {after}"
                                + (f"; under {LOW_DISK_GB:g} GB, errors may be for lack of room" if low else ""), red=low)


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not present (real data lives in ../shared/data)")
    return path


# Every cache folder the code (or a library under it) reads or writes: ONNX/OpenVINO exports and
# training's feature cache (GESTURE_CACHE_DIR), torchvision's weight downloads (TORCH_HOME), and the
# XDG cache that matplotlib, huggingface_hub and others fall back to.
USER_CACHE_VARIABLES = ("GESTURE_CACHE_DIR", "TORCH_HOME", "XDG_CACHE_HOME")


@pytest.fixture(scope="session", autouse=True)
def private_cache_folders(tmp_path_factory):
    """No test reads or writes the user's cache folders: a stale export there could hide a regression,
    and a test run must not leave files behind. One fresh folder per session (subprocesses inherit it);
    tests that exercise a cache on its own point GESTURE_CACHE_DIR at their own tmp_path."""
    root = tmp_path_factory.mktemp("caches")
    with pytest.MonkeyPatch.context() as patch:
        for name in USER_CACHE_VARIABLES:
            patch.setenv(name, str(root / name.lower()))
        yield root


@pytest.fixture(scope="session")
def sign_digits() -> Path:
    return _shared("sign-digits")


@pytest.fixture(scope="session")
def flowers() -> Path:
    return _shared("flowers")


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data")


@pytest.fixture(scope="session")
def random_head_checkpoint(tmp_path_factory) -> Path:
    """efficientnet_lite0 with real ImageNet weights and an untrained 10-class head: loads fast, real size."""
    torch.manual_seed(0)
    backbone = get_backbone("efficientnet_lite0")
    model = build_model("efficientnet_lite0", 10, "imagenet")
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, model=model, backbone=backbone.name, classes=[str(i) for i in range(10)],
                    data_config=backbone.data_config.with_input_size(128), train_config={"seed": 0},
                    metrics={"test": {"top1": 0.1}})
    return path


@pytest.fixture(scope="session")
def sign_digits_run(sign_digits, request) -> Path:
    """A run folder (best.pt, metrics.json, …) from a short real fine-tune on sign-digits.

    Kept in pytest's cache between local sessions (keyed by the recipe) so developers do not retrain
    for every test file; CI starts from a clean clone and always trains. GESTURE_RETRAIN=1 forces it.
    The processes of a parallel run (pytest -n) share it: the first trains it, the others wait for it.
    """
    from dataclasses import asdict

    from training.config import TrainConfig
    from training.finetune import train

    # keyed by every setting the run trains with, defaults included: a changed default retrains
    settings = {k: v for k, v in asdict(TrainConfig(backbone="efficientnet_lite0", **SIGN_DIGITS_RECIPE)).items() if k not in ("data", "out")}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    out = Path(request.config.cache.mkdir(f"sign-digits-run-{key}"))
    this_run = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))  # one value for every process of this pytest run
    with FileLock(out.with_suffix(".lock")):
        trained_by = out.with_suffix(".trained-by")  # beside the run folder, whose files some tests list
        retrain = os.environ.get("GESTURE_RETRAIN") and not (trained_by.is_file() and trained_by.read_text() == this_run)
        if (out / "metrics.json").exists() and (out / "best.pt").exists() and not retrain:
            return out
        shutil.rmtree(out)
        cfg = TrainConfig(backbone="efficientnet_lite0", data=str(sign_digits), out=str(out), **SIGN_DIGITS_RECIPE)
        train(cfg)
        trained_by.write_text(this_run)
        return out


@pytest.fixture(scope="session")
def hand_models(private_cache_folders) -> Path:
    """The real ``python -m training.prepare hand-models`` into the session's GESTURE_CACHE_DIR, which
    the servers and commands the tests start inherit."""
    from gesture_core.hands import hand_models_dir
    from training import prepare

    assert prepare.main(["hand-models"]) == 0
    return hand_models_dir()


@pytest.fixture(autouse=True)
def default_sigchld():
    """Every test starts with SIGCHLD at its default. torch's DataLoader installs a Python SIGCHLD
    handler in the process that iterates it with worker processes (the tests train in-process), and
    leaves it there. Later in the same process, after the in-process hand-crop service and webcam
    tests (LiteRT, BentoML and OpenCV threads), delivering SIGCHLD to that handler when any
    subprocess exited crashed pytest with a kernel SIGSEGV (gdb: si_code SI_KERNEL, the main thread
    in read() or the eval loop). In the product the two never share a process: training runs the
    DataLoader, the service and the webcam do not."""
    import signal

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    yield


def calibrated_copy(sign_digits_run: Path, run: Path, *flags: str) -> Path:
    """The sign-digits run copied to ``run``, recalibrated with the digit 0 as its "no gesture" class
    (and ``flags``), and evaluated on its test split."""
    for name in ("best.pt", "split.json", "metrics.json"):
        shutil.copy(sign_digits_run / name, run / name)
    for command in (["training.calibrate", "--checkpoint", str(run / "best.pt"), "--reject-class", "0", *flags],
                    ["training.evaluate", "--checkpoint", str(run / "best.pt"), "--out", str(run / "eval")]):
        done = subprocess.run([sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    return run


@pytest.fixture(scope="session")
def scored_copies(sign_digits_run, tmp_path_factory):
    """``copy_scored_by(score)``: the sign-digits run recalibrated with digit 0 as "no gesture" and
    thresholded on ``score`` (--reject-score), one copy per score, made on first use and shared by
    every module that serves, evaluates or draws them. The processes of a parallel run share them, as they
    share ``sign_digits_run``: a copy costs two subprocesses (about 25 s of a core), and the rejection, service
    and browser tests that need the same copy often run in different processes."""
    session = tmp_path_factory.getbasetemp()
    shared = session.parent if os.environ.get("PYTEST_XDIST_WORKER") else session  # pytest-N, above each popen-gwN

    def copy_scored_by(score: str) -> Path:
        run = shared / f"scored-by-{score}"
        with FileLock(run.with_suffix(".lock")):
            if not run.is_dir():  # renamed into place whole: a copy that failed half-way is made again
                partial = run.with_name(f"{run.name}.partial")
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir()
                # recall 0.97 rather than the default 0.99: the threshold then rejects about 3% of the gestures,
                # so the test split has images that only the threshold rejects on any CPU's model (at 0.99,
                # about 4 of 389 were expected, and some CPUs' models had none for one score or another)
                calibrated_copy(sign_digits_run, partial, "--reject-score", score, "--reject-target-recall", "0.97")
                partial.rename(run)
        return run

    return copy_scored_by
