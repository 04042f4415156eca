"""Training on several processes: real ``torchrun --nproc_per_node 2`` on CPU (gloo), real sign-digits photos.

The comparison run is the single process that computes what the two processes compute together: the
same global batch (1 x 32 against 2 x 16) and so, by the linear scaling rule, the same peak LR
(--lr 3e-3 against 2 x 1.5e-3). With the backbone frozen (its BatchNorm keeps ImageNet statistics)
and efficientnet_lite0 free of dropout, the two runs see the same images with the same augmentation
in the same steps, so their losses agree to float rounding: any error in sharding, seeds, gradient
averaging or the LR rule shows, and the test top-1 comparison cannot be flaky.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import training.finetune as finetune
from benchmarks.server_process import free_port
from gesture_core import load_classifier
from tests.helpers import REPO, make_image_folder, train_interrupted_in_epoch_2
from tests.test_finetune import ARTEFACTS, tiny_config
from training.data import SeededSampler
from training.distributed import ShardedSeededSampler, continue_schedule, local_device, scaled_lr
from training.loop import build_optimizer, warmup_cosine

PER_CLASS = 40  # sign-digits photos per class copied into the test's dataset: 20 for test, 20 for training
EPOCHS = 4
RECIPE = ["--backbone", "efficientnet_lite0", "--image-size", "96", "--freeze", "backbone", "--cache-features", "off",
          "--augment", "light", "--no-flip", "--epochs", str(EPOCHS), "--val-split", "0", "--test-per-class", "20",
          "--warmup-epochs", "0.3", "--workers", "0"]  # fmt: skip
ONE_PROCESS = ["--batch-size", "32", "--lr", "3e-3"]
TWO_PROCESSES = ["--batch-size", "16", "--lr", "1.5e-3"]  # the same global batch and peak LR
TORCHRUN = Path(sys.executable).with_name("torchrun")
# Loaded by every Python process started with the watch on: an audit hook (PEP 578) that records each
# file a torchrun rank opens for writing under WATCH_ROOT, in WATCH_ROOT/../writes/rank<RANK>.log.
WRITES_WATCH = """
import os, sys
if "RANK" in os.environ and os.environ.get("WATCH_ROOT"):
    root = os.environ["WATCH_ROOT"]
    folder = os.path.join(os.path.dirname(root), "writes")
    os.makedirs(folder, exist_ok=True)
    log = open(os.path.join(folder, "rank" + os.environ["RANK"] + ".log"), "a", buffering=1)
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def under_root(path):
        return isinstance(path, (str, os.PathLike)) and os.path.abspath(path).startswith(root)

    def watch(event, args):
        if event == "open" and under_root(args[0]):
            mode, flags = args[1], args[2]
            if (mode is not None and any(c in mode for c in "wax+")) or (mode is None and flags & writing):
                log.write(os.path.abspath(args[0]) + "\\n")
        elif event == "os.rename" and under_root(args[1]):
            log.write(os.path.abspath(args[1]) + "\\n")

    sys.addaudithook(watch)
"""


# Loaded with slow_peers on: every rank but 0 takes two seconds to exit, as one with a lot to release
# may. Rank 0 failing first would then find them still running, and torchrun would end them (SIGTERM).
SLOW_EXIT = """
import atexit, os, time
if os.environ.get("RANK", "0") != "0":
    atexit.register(time.sleep, 2.0)
"""


def environment(watch: Path | None = None, *, slow_peers_in: Path | None = None) -> dict[str, str]:
    """One thread per process (on a busy 2-core machine more threads only wait for each other); with
    ``watch``, every rank's writes under that folder are recorded (see ``writes``); with
    ``slow_peers_in`` (a folder for the hook), ranks other than 0 are slow to exit."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    hooks = [(watch.parent, WRITES_WATCH)] if watch is not None else []
    hooks += [(slow_peers_in, SLOW_EXIT)] if slow_peers_in is not None else []
    if hooks:
        folder = hooks[0][0] / "hooks"
        folder.mkdir(exist_ok=True)
        (folder / "sitecustomize.py").write_text("\n".join(code for _, code in hooks))
        env.update(PYTHONPATH=f"{folder}{os.pathsep}{REPO}")
    if watch is not None:
        env.update(WATCH_ROOT=str(watch))
    return env


def writes(watch: Path, rank: int) -> set[str]:
    """The files rank ``rank`` opened for writing (or renamed into place) under ``watch``. A folder opened for
    writing is not counted: that is an unnamed temporary file (O_TMPFILE), which leaves nothing behind, as the
    check that a default run folder can be written makes (gesture_core.cli.write_problem)."""
    log = watch.parent / "writes" / f"rank{rank}.log"
    paths = log.read_text().splitlines() if log.exists() else []
    return {os.path.relpath(line, watch) for line in paths if not os.path.isdir(line)}


def torchrun(args: list[str], *, cwd: Path, logs: Path, watch: Path | None = None, slow_peers: bool = False) -> subprocess.Popen:
    """``torchrun --standalone --nproc_per_node 2 -m training.finetune ARGS``, each rank's output in its own files under ``logs``."""
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "--log-dir", str(logs), "--redirects", "3",
               "-m", "training.finetune", *args]  # fmt: skip
    return subprocess.Popen(command, cwd=cwd, env=environment(watch, slow_peers_in=logs.parent if slow_peers else None),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(process: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def rank_output(logs: Path, rank: int) -> str:
    """Everything rank ``rank`` wrote to stdout and stderr, over every torchrun launch logged under ``logs``."""
    return "".join(p.read_text() for p in sorted(logs.glob(f"*/attempt_*/{rank}/std*.log")))


def history(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "history.csv").open()))


def kill_after_epoch(process: subprocess.Popen, run: Path, epoch: int, timeout: float = 300) -> None:
    """SIGTERM to torchrun (which ends its ranks) as soon as ``epoch`` is in the run's history."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if (run / "history.csv").exists() and any(line.startswith(f"{epoch},") for line in (run / "history.csv").read_text().splitlines()):
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=60)
            return
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"epoch {epoch} never finished: {process.communicate()[0][-3000:]}")


@pytest.fixture(scope="module")
def digits_subset(sign_digits, tmp_path_factory) -> Path:
    """The first PER_CLASS photos of each sign-digits class (real files, copied)."""
    root = tmp_path_factory.mktemp("subset") / "digits"
    for folder in sorted(p for p in sign_digits.iterdir() if p.is_dir()):
        (root / folder.name).mkdir(parents=True)
        for photo in sorted(folder.iterdir())[:PER_CLASS]:
            shutil.copy(photo, root / folder.name / photo.name)
    return root


def test_shards_interleave_one_order_with_its_augmentation_seeds():
    single = list(SeededSampler(10, seed=3))
    shards = [ShardedSeededSampler(10, seed=3, rank=r, world_size=3) for r in range(3)]
    items = [list(s) for s in shards]
    assert [len(i) for i in items] == [4, 4, 4] == [len(s) for s in shards]  # every rank takes the same number of steps
    interleaved = [items[r][k] for k in range(4) for r in range(3)]
    assert interleaved == single + single[:2]  # one order, padded by its first items; the same seed per sample
    assert shards[0].global_order() == interleaved
    shards[1].set_epoch(1)
    assert list(shards[1]) != items[1]  # a new order every epoch


def test_drawn_is_what_every_ranks_loader_draws_when_it_drops_its_partial_batch():
    """``drawn`` replays the loaders' epochs (to report a corrupt file that none of them tried); a DataLoader
    batches its sampler with a BatchSampler."""
    from torch.utils.data import BatchSampler

    for world_size, batch_size in ((1, 4), (2, 4), (3, 20)):
        shards = [ShardedSeededSampler(19, seed=5, rank=r, world_size=world_size) for r in range(world_size)]
        loaded = set()
        for epoch in (0, 2):
            for shard in shards:
                shard.set_epoch(epoch)
                loaded.update(i for batch in BatchSampler(shard, batch_size, drop_last=shard.drops_last(batch_size)) for i, _ in batch)
        assert loaded == shards[0].drawn([0, 2], batch_size)
        assert (loaded < set(range(19))) == shards[0].drops_last(batch_size)  # a rank's share under one batch is kept whole


def test_more_processes_than_gpus_is_a_usage_error_naming_the_gpu_count(monkeypatch):
    """torchrun --nproc_per_node 2 on a one-GPU machine: rank 1 would ask for cuda:1 ("invalid device
    ordinal" traceback), and NCCL refuses two ranks on one GPU. (The real launch was checked on an H200.)"""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=r"started 2 processes on this machine, which has 1 GPU\(s\).*--nproc_per_node 1"):
        local_device("cuda")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert local_device("auto") == torch.device("cuda", 0)


def test_a_rank_that_fails_before_joining_says_why(image_folder, tmp_path, monkeypatch, capsys):
    """Rank 0 waits to join and is stopped by torchrun, so the failing rank's line is the only one the
    user gets (it said nothing on the H200 until this was fixed)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    assert finetune.main(["--data", str(image_folder), "--device", "cuda", "--out", str(tmp_path / "run")]) == 2
    assert "error: torchrun started 2 processes on this machine, which has 1 GPU(s)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_schedule_moves_to_another_world_size():
    """A checkpoint of N processes continues in M with M's peak LR and steps per epoch."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))

    def schedule(world: int, steps_per_epoch: int):
        from gesture_core.backbones import get_backbone

        optimizer = build_optimizer(model, get_backbone("resnet18"), opt="adamw", lr=scaled_lr(1e-3, world), backbone_lr_mult=0.1, weight_decay=0.0, momentum=0.9)
        return optimizer, warmup_cosine(optimizer, total_steps=4 * steps_per_epoch, warmup_steps=steps_per_epoch)

    two, two_scheduler = schedule(2, 5)
    for _ in range(2 * 5):  # two epochs of 5 steps under 2 processes
        two.step()
        two_scheduler.step()
    one, one_scheduler = schedule(1, 10)
    peaks = [g["initial_lr"] for g in one.param_groups]
    one.load_state_dict(two.state_dict())
    one_scheduler.load_state_dict(two_scheduler.state_dict())
    continue_schedule(one, one_scheduler, peak_lrs=peaks, step=2 * 10)
    fresh, fresh_scheduler = schedule(1, 10)
    for _ in range(2 * 10):
        fresh.step()
        fresh_scheduler.step()
    assert [g["lr"] for g in one.param_groups] == pytest.approx([g["lr"] for g in fresh.param_groups], rel=1e-12)
    one_scheduler.step()
    fresh_scheduler.step()
    assert [g["lr"] for g in one.param_groups] == pytest.approx([g["lr"] for g in fresh.param_groups], rel=1e-12)


@pytest.mark.slow
def test_two_processes_train_like_one_write_once_and_resume_after_a_kill(digits_subset, tmp_path):
    alone = subprocess.run([sys.executable, "-m", "training.finetune", "--data", str(digits_subset), *RECIPE, *ONE_PROCESS,
                            "--out", str(tmp_path / "one")], cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert json.loads((tmp_path / "one" / "config.json").read_text())["world_size"] == 1

    work, logs = tmp_path / "work", tmp_path / "logs"
    work.mkdir()
    run = work / "runs" / "digits-efficientnet_lite0"  # the default run folder: one, not one per rank
    kill_after_epoch(torchrun(["--data", str(digits_subset), *RECIPE, *TWO_PROCESSES], cwd=work, logs=logs, watch=work), run, epoch=2)
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2 and not (run / "metrics.json").exists()
    output = finished(torchrun(["--resume", str(run / "last.pt")], cwd=work, logs=logs, watch=work))

    assert [p.name for p in (work / "runs").iterdir()] == [run.name]
    artefacts = ARTEFACTS + (["test_mistakes.png"] if json.loads((run / "metrics.json").read_text())["test_mistakes"] else [])
    assert sorted(p.name for p in run.iterdir()) == sorted([*artefacts, ".lock"])  # rank 0 held the folder (training.run_lock)
    assert writes(work, 1) == set()  # only rank 0 wrote files
    assert {str(Path(p).parent) for p in writes(work, 0)} == {str(run.relative_to(work))}
    assert {f"{run.relative_to(work)}/{name}" for name in artefacts} <= writes(work, 0)
    assert rank_output(logs, 1) == ""  # rank 1 prints nothing (it had no error)
    rank0 = rank_output(logs, 0)
    assert "world size 2 (gloo): global batch 2 x 16 = 32" in rank0 and "resuming" in rank0 and "test set" in rank0, output[-3000:]
    assert json.loads((run / "config.json").read_text())["world_size"] == 2

    one, two = history(tmp_path / "one"), history(run)
    assert [int(r["epoch"]) for r in two] == list(range(1, EPOCHS + 1))
    for a, b in zip(one, two, strict=True):  # same samples, seeds and steps: the same losses (float rounding aside)
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), abs=2e-3)
        assert float(b["lr"]) == pytest.approx(float(a["lr"]), rel=1e-9)
    top1_one = json.loads((tmp_path / "one" / "metrics.json").read_text())["test"]["top1"]
    top1_two = json.loads((run / "metrics.json").read_text())["test"]["top1"]
    assert top1_one > 0.4  # well above chance (10 classes): a comparison that means something
    assert abs(top1_two - top1_one) <= 0.02

    checkpoint = torch.load(run / "best.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in checkpoint["model"])
    classifier = load_classifier(run / "best.pt", device="cpu", engine="torch")
    split = json.loads((run / "split.json").read_text())
    photos = [Path(split["root"]) / path for path, _ in split["test"][:40]]
    labels = [classifier.classes[label] for _, label in split["test"][:40]]
    predicted = [classifier.predict(str(p)).label for p in photos]
    assert sum(p == t for p, t in zip(predicted, labels, strict=True)) / len(photos) > 0.4

    # the two-process checkpoint continues in one process: here, its final test again
    alone_again = tmp_path / "in-one"
    shutil.copytree(run, alone_again)
    (alone_again / "metrics.json").unlink()
    cfg, resume = finetune.parse_config(["--resume", str(alone_again / "last.pt")])
    finetune.train(cfg, resume)
    assert json.loads((alone_again / "metrics.json").read_text())["test"]["top1"] == top1_two


def two_machines(tmp_path: Path, args: list[str], *, data: Path | None = None, env: dict[str, str] | None = None) -> list[subprocess.Popen]:
    """docs/distributed.md's two-machine command, as two torchrun agents (one process each) on
    127.0.0.1 that share nothing but the rendezvous address: each has its own working folder, home and
    feature cache, as two machines would. With ``data``, the first machine alone has it, as ./data."""
    port, agents = free_port(), []
    for node in (0, 1):
        machine = tmp_path / f"machine{node}"
        (machine / "home").mkdir(parents=True)
        if data is not None and node == 0:
            shutil.copytree(data, machine / "data")
        machine_env = {**environment(), "HOME": str(machine / "home"), "GESTURE_CACHE_DIR": str(machine / "cache"), **(env or {})}
        command = [str(TORCHRUN), "--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d",
                   "--rdzv-endpoint", f"127.0.0.1:{port}", "--log-dir", str(machine / "logs"), "--redirects", "3",
                   "-m", "training.finetune", *args]  # fmt: skip
        agents.append(subprocess.Popen(command, cwd=machine, env=machine_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return agents


@pytest.mark.slow
def test_two_machines_meet_at_a_rendezvous_and_one_writes_the_run(digits_subset, tmp_path):
    """Frozen epochs train on cached features, which rank 0 writes and the other ranks read, or
    compute where they cannot see rank 0's disk."""
    for agent in two_machines(tmp_path, ["--data", str(digits_subset), *RECIPE, "--epochs", "2", "--cache-features", "on", *ONE_PROCESS]):
        finished(agent)

    ran = [tmp_path / f"machine{node}" for node in (0, 1) if (tmp_path / f"machine{node}" / "runs").exists()]
    assert len(ran) == 1, "one run folder, written by rank 0's machine only"  # the rendezvous numbers the ranks
    run = ran[0] / "runs" / "digits-efficientnet_lite0"
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    assert [int(r["epoch"]) for r in history(run)] == [1, 2]
    assert json.loads((run / "metrics.json").read_text())["test"]["top1"] > 0.4  # well above chance (10 classes)
    printed = {machine.name: rank_output(machine / "logs", 0) for machine in (tmp_path / "machine0", tmp_path / "machine1")}  # local rank 0 on each
    assert "world size 2 (gloo): global batch 2 x 32 = 64" in printed[ran[0].name]
    for node in (0, 1):  # rank 0 cached the frozen backbone's features; the other machine, not finding them, its own
        assert list((tmp_path / f"machine{node}" / "cache" / "features").glob("*.pt")), node
    assert [text for name, text in printed.items() if name != ran[0].name] == [""]  # the other machine's rank prints nothing


@pytest.mark.slow
def test_a_machine_without_the_images_stops_every_machine_at_once(digits_subset, tmp_path):
    """The second machine lacks the dataset. Its missing images were taken for corrupt ones and
    skipped: the job trained on the first machine's shard alone and ended well. Whichever machine
    the rendezvous makes rank 0, both now stop before training, each saying why, and write nothing."""
    agents = two_machines(tmp_path, ["--data", "data", *RECIPE, *ONE_PROCESS], data=digits_subset)
    printed = []
    for agent in agents:
        output, _ = agent.communicate(timeout=300)
        assert agent.returncode != 0, output[-3000:]
        printed.append(output)
    for machine, output in zip((tmp_path / "machine0", tmp_path / "machine1"), printed, strict=True):
        said = rank_output(machine / "logs", 0)
        assert "error: " in said and "Traceback" not in said, output[-3000:]
        assert not (machine / "runs").exists()
    said = rank_output(tmp_path / "machine0" / "logs", 0) + rank_output(tmp_path / "machine1" / "logs", 0)
    assert "the images must be at the same path on each" in said or "--data data: not a folder" in said, said


@pytest.mark.slow
def test_a_machine_without_the_resume_file_ends_the_wait_with_one_line(digits_subset, tmp_path):
    """The run folder is on the first machine only. The second stops at its command line, before the
    processes meet; the first waits for it until the process group's timeout, then says why in one
    line, where it ended with a traceback of torch's store. Rank 0 runs with the variables torchrun
    gives it (and rank 1 never comes): under two real torchrun agents, when the second agent leaves
    before the first has started its rank, the first agent waits out torchrun's own join timeout
    instead, and which of the two happens depends on the machines' load (docs/distributed.md)."""
    run = tmp_path / "machine0" / "runs" / "r"
    alone = subprocess.run([sys.executable, "-m", "training.finetune", "--data", str(digits_subset), *RECIPE, "--epochs", "1",
                            "--out", str(run)], env=environment(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-3000:]
    (tmp_path / "machine1").mkdir()
    ranks = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "GESTURE_DIST_TIMEOUT_S": "10"}
    # --epochs 2: the run finished its one epoch, and a finished run is resumed only to train further
    stopped, waited = (subprocess.run([sys.executable, "-m", "training.finetune", "--resume", "runs/r", "--epochs", "2"], cwd=tmp_path / f"machine{rank}",
                                      env={**environment(), **ranks, "RANK": str(rank), "LOCAL_RANK": "0", "GROUP_RANK": str(rank)},
                                      capture_output=True, text=True, timeout=300) for rank in (1, 0))  # fmt: skip
    assert stopped.returncode == 2 and "argument --resume: runs/r: no such file" in stopped.stderr, stopped.stderr[-3000:]
    assert waited.returncode != 0 and "Traceback" not in waited.stderr, waited.stderr[-3000:]
    assert "error: not every process joined within 10 s" in waited.stderr and "GESTURE_DIST_TIMEOUT_S" in waited.stderr, waited.stderr[-3000:]
    assert not (tmp_path / "machine1" / "runs").exists()


TINY = ["--backbone", "lenet5", "--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size", "4", "--workers", "0"]


def ranks_by_hand(tmp_path: Path, args_of_rank: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Two machines whose ranks are known: each rank started as torchrun starts it (its variables), in its
    machine's own folder, with its own command line, both at once."""
    ranks = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "GESTURE_DIST_TIMEOUT_S": "60"}
    started = []
    for rank, args in enumerate(args_of_rank):
        (tmp_path / f"machine{rank}").mkdir(exist_ok=True)
        env = {**environment(), **ranks, "RANK": str(rank), "LOCAL_RANK": "0", "GROUP_RANK": str(rank)}
        started.append(subprocess.Popen([sys.executable, "-m", "training.finetune", *args], cwd=tmp_path / f"machine{rank}", env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=300), *p.communicate(timeout=300)) for p in started]


@pytest.mark.slow
def test_machines_whose_commands_differ_stop_before_training_naming_the_settings(tmp_path):
    """--epochs 2 against 1 waited at a collective for the timeout (30 minutes), then a traceback; --seed
    trained on without a word, each rank's shard drawn from its own order."""
    data = make_image_folder(tmp_path / "gestures", per_class=8, size=32)
    zero, one = ranks_by_hand(tmp_path, [["--data", str(data), *TINY], ["--data", str(data), *TINY, "--epochs", "2", "--seed", "3"]])
    differ = "its command differs from rank 0's: --epochs 2 (rank 0: 1), --seed 3 (rank 0: 0); give every machine the same command"
    assert one.returncode == 2 and one.stderr.strip().splitlines() == [f"error: {differ} (only --out and --workers may differ)"], one.stderr
    assert zero.returncode == 2 and differ in zero.stderr and "error: rank 1 on " in zero.stderr and "Traceback" not in zero.stderr, zero.stderr
    assert not list(tmp_path.glob("machine*/runs"))


@pytest.mark.slow
def test_only_rank_0s_machine_checks_the_out_folder_it_writes(tmp_path):
    """The second machine's ./runs/job held a file: it refused the job, and the first machine waited out the
    timeout. Only rank 0's machine writes the run folder, so another machine's folder of that name is not used."""
    data = make_image_folder(tmp_path / "gestures", per_class=8, size=32)
    (tmp_path / "machine1" / "runs" / "job").mkdir(parents=True)
    (tmp_path / "machine1" / "runs" / "job" / "notes.txt").write_text("mine")
    for done in ranks_by_hand(tmp_path, [["--data", str(data), *TINY, "--out", "runs/job"]] * 2):
        assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "machine0" / "runs" / "job" / "best.pt").is_file()
    assert [p.name for p in (tmp_path / "machine1" / "runs" / "job").iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_a_resume_under_two_processes_skips_the_images_deleted_since_as_one_process_does(tmp_path, monkeypatch):
    """Rank 1 checked every image of split.json, those rank 0 itself could not open and skipped too: the job
    stopped with "on several machines, the images must be at the same path on each", on one machine."""
    data = make_image_folder(tmp_path / "gestures", per_class=10, size=32)
    assert finetune.main(["--data", str(data), *TINY, "--out", str(tmp_path / "run")]) == 0
    train = json.loads((tmp_path / "run" / "split.json").read_text())["train"]
    for relative, _ in train[:3]:
        (data / relative).unlink()
    finished(torchrun(["--resume", str(tmp_path / "run" / "last.pt"), "--epochs", "2"], cwd=tmp_path, logs=tmp_path / "logs"))
    assert [r["epoch"] for r in history(tmp_path / "run")] == ["1", "2"]
    assert "cannot be opened any more (3 of" in rank_output(tmp_path / "logs", 0) and rank_output(tmp_path / "logs", 1) == ""


@pytest.mark.slow
def test_a_mistake_on_the_command_line_is_said_once_per_machine(tmp_path):
    """Each of torchrun's processes parsed the command and printed the same line."""
    process = torchrun(["--data", str(tmp_path), "--batch-size", "0"], cwd=tmp_path, logs=tmp_path / "logs")
    output, _ = process.communicate(timeout=180)
    assert process.returncode != 0
    assert rank_output(tmp_path / "logs", 0) == "error: argument --batch-size: must be >= 1, got 0\n" and rank_output(tmp_path / "logs", 1) == "", output


@pytest.mark.parametrize("mistake", [["--data", ".", "--batch-size", "0"], ["--resume", "last.pt"]])
def test_a_torchrun_peer_waits_for_local_rank_0_to_say_a_shared_mistake(tmp_path, monkeypatch, capsys, mistake):
    """Rank 1 ended at once on the mistake, silent, and was the job's first failure: torchrun stopped rank 0 while
    it was still importing, and the user read "interrupted" with no reason (the test above, now and then). A peer
    now waits for torchrun to stop it, silent then too; one still running after the wait says the mistake itself."""
    import gesture_core.cli as cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("LOCAL_RANK", "1")
    waits = []

    def stopped_by_torchrun(seconds: float) -> None:  # torchrun's SIGTERM, as @command's handler raises it
        waits.append(seconds)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(cli, "time", SimpleNamespace(sleep=stopped_by_torchrun))
        assert finetune.main(mistake) == 130
    assert waits == [cli.LOCAL_RANK_0_WAIT_S] and capsys.readouterr().err == ""

    monkeypatch.setattr(cli, "LOCAL_RANK_0_WAIT_S", 0.2)  # rank 0 did not fail alike: the peer says it after the wait
    start = time.monotonic()
    with pytest.raises(SystemExit) if "--data" in mistake else contextlib.nullcontext() as parser_exit:  # argparse exits
        assert finetune.main(mistake) == 2
    assert parser_exit is None or parser_exit.value.code == 2
    assert time.monotonic() - start >= 0.2 and capsys.readouterr().err.startswith("error: ")


@pytest.mark.slow
def test_a_one_process_checkpoint_resumes_under_two(tmp_path, monkeypatch):
    """Staged run: the head alone in one process, interrupted; the unfrozen epoch under torchrun (DDP over the whole model)."""
    data = make_image_folder(tmp_path / "gestures", per_class=10, size=48)
    cfg = tiny_config(data, tmp_path / "run", epochs=3, head_epochs=1, batch_size=4)  # 18 training images
    assert train_interrupted_in_epoch_2(cfg, monkeypatch) == 130
    one_process_lr = float(history(tmp_path / "run")[0]["lr"])
    finished(torchrun(["--resume", str(tmp_path / "run" / "last.pt")], cwd=tmp_path, logs=tmp_path / "logs"))
    rows = history(tmp_path / "run")
    assert [(r["epoch"], r["frozen_backbone"]) for r in rows] == [("1", "True"), ("2", "False"), ("3", "False")]
    assert float(rows[0]["lr"]) == one_process_lr
    # under 2 processes: 2 steps per epoch (9 images per rank, batches of 4), 1 of warm-up, peak 2 x 3e-3;
    # after epoch 2, step 4 of 6: the schedule continues at the epoch reached, not at one process's step 4
    assert float(rows[1]["lr"]) == pytest.approx(scaled_lr(3e-3, 2) * 0.5 * (1 + math.cos(math.pi * 3 / 5)), rel=1e-9)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["world_size"] == 2
    assert load_classifier(tmp_path / "run" / "best.pt", device="cpu", engine="torch").classes == ["fist", "palm", "peace"]


@pytest.mark.slow
def test_cached_features_train_the_head_under_two_processes_as_in_one(tmp_path, monkeypatch):
    """Linear probe on the feature cache (--augment none): rank 0 extracts and caches, the other rank
    loads; every rank trains the head on the global batches, as one process with that batch does."""
    monkeypatch.setenv("GESTURE_CACHE_DIR", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "gestures", per_class=10, size=48)
    probe = ["--backbone", "mobilenet_v3_large", "--weights", "none", "--image-size", "32", "--freeze", "backbone",
             "--augment", "none", "--epochs", "2", "--val-split", "0.2", "--test-split", "0.2", "--workers", "0", "--seed", "1"]  # fmt: skip
    finished(torchrun(["--data", str(data), *probe, "--batch-size", "4", "--lr", "3e-3", "--out", str(tmp_path / "two")], cwd=tmp_path, logs=tmp_path / "logs"))
    assert "features train: 18 photos" in rank_output(tmp_path / "logs", 0) and rank_output(tmp_path / "logs", 1) == ""
    cached = sorted(p.name for p in (tmp_path / "cache" / "features").iterdir())
    # train and val (the test goes through best.pt's Classifier, not the cache); no partial file
    assert len(cached) == 2 and all(name.endswith(".pt") and not name.startswith(".") for name in cached)
    assert finetune.main(["--data", str(data), *probe, "--batch-size", "8", "--lr", "6e-3", "--out", str(tmp_path / "one")]) == 0
    assert sorted(p.name for p in (tmp_path / "cache" / "features").iterdir()) == cached  # one process found them all
    for a, b in zip(history(tmp_path / "one"), history(tmp_path / "two"), strict=True):
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), abs=1e-5)
        assert a["val_top1"] == b["val_top1"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message, only_rank_0_fails, slow_peers",
    [
        (["--data", "{tmp}/missing"], "error: --data", True, False),  # found by rank 0; rank 1, waiting for it, stops cleanly
        (["--data", "{tmp}/missing"], "error: --data", True, True),  # ... even when rank 1 takes longer to exit than rank 0
        (["--data", "{tmp}", "--sync-bn", "--out", "{tmp}/run"], "error: --sync-bn needs CUDA", False, False),  # found by every rank
    ],
    ids=["rank-0-error", "rank-0-error-slow-peer", "every-rank-error"],
)
def test_an_error_ends_the_job_with_that_error_and_writes_nothing(tmp_path, args, message, only_rank_0_fails, slow_peers):
    args = [a.format(tmp=tmp_path) for a in args]
    process = torchrun([*args, "--weights", "none"], cwd=tmp_path, logs=tmp_path / "logs", slow_peers=slow_peers)
    output, _ = process.communicate(timeout=180)  # a hang would time out here
    assert process.returncode != 0
    assert message in rank_output(tmp_path / "logs", 0) and "Traceback" not in rank_output(tmp_path / "logs", 0)
    assert rank_output(tmp_path / "logs", 1) == ""
    assert "rank      : 0" in output and "exitcode  : 2" in output  # torchrun's failure summary names rank 0
    assert ("<NO_OTHER_FAILURES>" in output) == only_rank_0_fails, output  # not rank 1 ended by torchrun while it stopped
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_training_benchmark_reports_each_process_and_the_total(tmp_path, flowers):
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "benchmarks.train", "--data", str(flowers), "--backbone", "lenet5",
               "--batch", "8", "--skip", "loader", "frozen", "--quick", "--json"]  # fmt: skip
    # only a guard against a hang: it takes about 40 s alone on a 2-core Zen 3 without AVX-512
    done = subprocess.run(command, cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]  # rank 0's rows only
    assert len(rows) == 3
    for row in rows:
        assert row["processes"] == 2 and row["batch"] == 8 and len(row["img_per_s_by_process"]) == 2
        assert min(row["img_per_s_by_process"]) > 0
        assert row["img_per_s"] == pytest.approx(sum(row["img_per_s_by_process"]), abs=0.05)
        assert row["img_per_s_per_process"] == pytest.approx(row["img_per_s"] / 2, abs=0.05)


@pytest.mark.parametrize("count", [10, 11, 12, 2])
def test_every_process_evaluates_its_share_and_together_every_image_once(count, monkeypatch):
    """Validation is sharded across the processes and gathered: a shard that dropped the remainder left the last
    images unvalidated without a test failing (a mutation)."""
    from training import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    shares = []
    for rank in range(3):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        shares.append(distributed.shard(list(range(count))))
    assert sorted(i for share in shares for i in share) == list(range(count))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
