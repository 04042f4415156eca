"""A user's mistake on any command is one `error:` line and exit code 2, never a traceback; a crash
or a full disk during a save loses nothing and leaves no litter."""

from __future__ import annotations

import argparse
import errno
import functools
import importlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import training.evaluate as evaluate
import training.finetune as finetune
from benchmarks.server_process import REPO
from gesture_core import checkpoint as checkpoint_module
from gesture_core.backbones import build_model
from gesture_core.checkpoint import remove_partial_saves
from gesture_core.cli import command, python_command
from tests.helpers import a_run_training_in, make_image_folder
from tests.test_finetune import tiny_config
from training.calibrate import main as calibrate_main
from training.evaluate import main as evaluate_main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "gestures", per_class=6, size=40)


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory):
    """A finished one-epoch run: best.pt, last.pt, split.json."""
    return finetune.train(tiny_config(dataset, tmp_path_factory.mktemp("runs") / "run", epochs=1))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def edited_checkpoint(source, target, **changes):
    ckpt = torch.load(source, weights_only=True)
    ckpt.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del ckpt[key]
    torch.save(ckpt, target)
    return target


def test_resume_from_a_truncated_file(run, tmp_path):
    """Through `python -m`, as a user runs it: stderr is the one line, nothing before or after it."""
    cut = tmp_path / "last.pt"
    cut.write_bytes((run / "last.pt").read_bytes()[:5000])
    done = subprocess.run([sys.executable, "-m", "training.finetune", "--resume", str(cut)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "is not a readable checkpoint: truncated" in done.stderr


def test_resume_from_best_pt_points_to_last_pt(run, capsys):
    assert finetune.main(["--resume", str(run / "best.pt")]) == 2
    err = one_error_line(capsys)
    assert "no training state to resume from" in err and f"--resume {run / 'last.pt'}" in err


def test_a_run_folder_stands_for_its_checkpoint(run, tmp_path):
    from gesture_core.cli import checkpoint_arg

    assert checkpoint_arg("best.pt")(str(run)) == run / "best.pt"
    assert checkpoint_arg("last.pt")(str(run)) == run / "last.pt"
    assert checkpoint_arg("best.pt")(str(run / "last.pt")) == run / "last.pt"  # a file is taken as it is
    with pytest.raises(argparse.ArgumentTypeError, match=r"is a folder without best.pt: pass a checkpoint file, or a run folder written by"):
        checkpoint_arg("best.pt")(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")  # what a run writes first: it stopped before its first epoch's checkpoints
    with pytest.raises(argparse.ArgumentTypeError, match=r"is a run stopped before its first epoch ended, so it has no last.pt: start"):
        checkpoint_arg("last.pt")(str(tmp_path))
    with pytest.raises(argparse.ArgumentTypeError, match="no such file"):
        checkpoint_arg("best.pt")(str(tmp_path / "nope.pt"))
    os.mkfifo(tmp_path / "pipe.pt")
    with pytest.raises(argparse.ArgumentTypeError, match=r"pipe.pt is a named pipe \(FIFO\), not a file"):
        checkpoint_arg("best.pt")(str(tmp_path / "pipe.pt"))
    (tmp_path / "loop.pt").symlink_to(tmp_path / "loop.pt")  # both were "no such file", there for ls to show
    with pytest.raises(argparse.ArgumentTypeError, match=r"loop.pt: a link that leads to no file \(Too many levels of symbolic links\)"):
        checkpoint_arg("best.pt")(str(tmp_path / "loop.pt"))


def test_an_image_flag_says_what_stands_where_the_image_should_be(tmp_path):
    from training.cli import existing_file

    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "moved.jpg")
    for name, says in (("pipe.jpg", "pipe.jpg is a named pipe (FIFO), not an image file"), ("missing.jpg", "missing.jpg: no such image file"),
                       ("gone.jpg", "gone.jpg: a link that leads to no image file (No such file or directory)")):
        with pytest.raises(argparse.ArgumentTypeError) as refused:
            existing_file(str(tmp_path / name))
        assert str(refused.value) == f"{tmp_path}/{says}"


def test_evaluate_on_a_folder_of_recordings_reads_their_frames_and_says_when_none_decodes(run, tmp_path, monkeypatch, capsys):
    """It was "no images to evaluate in videos; ... save their frames as images first": evaluate --data
    takes what finetune --data takes, a dataset of videos too (training.prepare.prepare_videos)."""
    import cv2

    monkeypatch.chdir(tmp_path)
    for name in torch.load(run / "best.pt", weights_only=True)["classes"][:2]:
        (tmp_path / "videos" / name).mkdir(parents=True)
        writer = cv2.VideoWriter(str(tmp_path / "videos" / name / "take1.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (64, 64))
        for i in range(10):
            writer.write(np.full((64, 64, 3), 20 * i, np.uint8))
        writer.release()
        (tmp_path / "broken" / name).mkdir(parents=True)
        (tmp_path / "broken" / name / "take1.mp4").write_bytes(b"\0\0\0\x18ftypmp42")
    assert evaluate_main(["--checkpoint", str(run), "--data", str(tmp_path / "videos"), "--out", str(tmp_path / "report")]) == 0
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["source"] == str(tmp_path / "datasets" / "videos-frames")
    assert len((tmp_path / "report" / "predictions.csv").read_text().splitlines()) == 1 + 4  # frames 0 and 5 of each
    (tmp_path / "waves").mkdir()  # a gesture never learned, recorded: no class folder needed
    writer = cv2.VideoWriter(str(tmp_path / "waves" / "wave.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (64, 64))
    for i in range(15):
        writer.write(np.full((64, 64, 3), 200 - 10 * i, np.uint8))
    writer.release()
    assert evaluate_main(["--checkpoint", str(run), "--data", str(tmp_path / "videos"), "--unknown", str(tmp_path / "waves"),
                          "--out", str(tmp_path / "open")]) == 0
    unknown = json.loads((tmp_path / "open" / "metrics.json").read_text())["open_set"]["unknown"]
    assert unknown["folder"] == str(tmp_path / "waves") and unknown["images"] == 3  # frames 0, 5 and 10
    capsys.readouterr()
    assert evaluate_main(["--checkpoint", str(run), "--data", str(tmp_path / "broken")]) == 2
    started, error = capsys.readouterr().err.splitlines()
    assert "saving every 5th frame of 2 video(s) into datasets/broken-frames" in started
    assert error.startswith("error: ") and "broken: not one frame of its 2 video(s) decodes" in error
    assert not (tmp_path / "datasets" / "broken-frames").exists()


def test_an_evaluation_stopped_halfway_leaves_no_report_of_two_evaluations(run, tmp_path, monkeypatch, capsys):
    """A Ctrl-C before metrics.json left the earlier report's metrics.json (of the test split) beside the new
    predictions.csv (of the val split), read as one report."""
    out = tmp_path / "eval"
    assert evaluate_main(["--checkpoint", str(run), "--workers", "0", "--out", str(out)]) == 0
    said = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith(("  top-1", "no gesture:"))]
    assert said == ["top-1", "no"]  # the figures first, as training prints them: the open-set line came above their table

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "write_report", stopped)
    assert evaluate_main(["--checkpoint", str(run), "--split", "val", "--workers", "0", "--out", str(out)]) == 130
    assert (out / "predictions.csv").exists() and not (out / "metrics.json").exists()
    assert not (out / "confusion_matrix.png").exists()  # the test split's, from the first evaluation


def test_evaluate_a_checkpoint_whose_shapes_do_not_match(run, tmp_path, capsys):
    wrong = edited_checkpoint(run / "best.pt", tmp_path / "best.pt", classes=["a", "b", "c", "d", "e"])  # a 3-class head
    assert evaluate_main(["--checkpoint", str(wrong), "--data", str(run)]) == 2
    assert "shape mismatch" in one_error_line(capsys)


def test_an_input_size_below_what_the_backbone_takes_is_refused_before_anything_is_written(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--data", str(dataset), "--backbone", "alexnet", "--weights", "none", "--image-size", "48", "--out", str(out)]
    assert finetune.main(argv) == 2
    assert "--image-size 48 px is too small for alexnet: its layers take at least 63 px" in one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("flags, reason", [
    (["--reject-class", "bogus"], "--reject-class 'bogus': not a class of this data"),
    (["--weights", "NOTES"], "NOTES"),
])  # fmt: skip
def test_a_run_that_cannot_start_leaves_no_folder(dataset, tmp_path, capsys, flags, reason):
    """Each left a run folder holding split.json (and config.json) for a run that never started."""
    notes = tmp_path / "notes.pt"
    notes.write_text("not a state dict")
    out = tmp_path / "run"
    argv = ["--data", str(dataset), "--backbone", "mobilenet_v3_large", "--weights", "none", "--epochs", "1", "--out", str(out)]
    assert finetune.main(argv + [str(notes) if f == "NOTES" else f for f in flags]) == 2
    assert reason.replace("NOTES", str(notes)) in one_error_line(capsys)
    assert not out.exists()


def test_evaluate_at_an_input_size_the_backbone_cannot_take(run, tmp_path, capsys):
    inception = edited_checkpoint(run / "best.pt", tmp_path / "best.pt", backbone="inception_v3",  # refused before its weights are read
                                  data_config=data_config_of(run, input_size=80, resize_size=92))
    assert evaluate_main(["--checkpoint", str(inception), "--data", str(run), "--image-size", "64"]) == 2
    assert "input size 64 px is too small for inception_v3: its layers take at least 75 px" in one_error_line(capsys)


def import_cli(checkpoint, home) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "1", "GESTURE_ENGINE": "torch"}
    return subprocess.run([sys.executable, "-m", "service.import_model", str(checkpoint)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("change", "reason"), [
    ({"model": None, "data_config": None}, "lacks data_config, model"),
    ({"classes": ["a", "b", "c", "d", "e"]}, "shape mismatch"),  # a wrong class count
])
def test_import_refuses_a_checkpoint_the_service_could_not_load(run, tmp_path, change, reason):
    bad = edited_checkpoint(run / "best.pt", tmp_path / "bad.pt", **change)
    done = import_cli(bad, tmp_path / "home")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert reason in done.stderr
    assert not list((tmp_path / "home").glob("models/*/*")), "a refused checkpoint was stored"


def test_full_disk_during_a_save_says_what_is_kept(dataset, tmp_path, monkeypatch, capsys):
    real_save, saves = torch.save, []

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) > 2:  # epoch 1 wrote best.pt and last.pt; epoch 2 finds the disk full
            f.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_until_the_disk_is_full)
    out = tmp_path / "run"
    argv = ["--data", str(dataset), "--out", str(out), "--backbone", "mobilenet_v3_large", "--weights", "none",
            "--epochs", "2", "--image-size", "32", "--workers", "0", "--batch-size", "8"]
    assert finetune.main(argv) == 2
    err = one_error_line(capsys)
    assert "No space left on device" in err and "is kept unchanged and the partial file was removed" in err
    assert f"--resume {out / 'last.pt'}" in err
    monkeypatch.undo()
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    assert not list(out.glob(".*.tmp"))


def test_a_run_cleans_up_partial_saves_of_an_interrupted_one(run, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    (folder / "metrics.json").unlink()  # interrupted before its report: a finished run is not resumed
    litter = [folder / ".last.pt.k2j_x9aq.tmp", folder / ".best.pt.0f3hs8d1.tmp"]
    for path in litter:
        path.write_bytes(b"\0" * 1000)  # what a kill -9 during torch.save leaves
    keep = [folder / "notes.tmp", folder / ".hidden.pt"]
    for path in keep:
        path.write_text("not ours")
    assert finetune.main(["--resume", str(folder)]) == 0  # the run folder: its last.pt
    assert "removed 2 partial checkpoint file(s) left by an interrupted save" in capsys.readouterr().out
    assert not any(path.exists() for path in litter) and all(path.exists() for path in keep)
    assert remove_partial_saves(folder) == []


def test_a_new_run_never_overwrites_one_at_its_out(run, dataset, tmp_path, capsys):
    """An --out that holds a trained model or an interrupted run: a new run replaced its checkpoints,
    exit 0, not a word said."""
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    argv = ["--data", str(dataset), "--out", str(folder), "--backbone", "mobilenet_v3_large", "--weights", "none", "--epochs", "1"]
    assert finetune.main(argv) == 2
    assert f"--out {folder} holds a trained model (best.pt): pass another --out" in one_error_line(capsys)
    (folder / "metrics.json").unlink()  # an interrupted run: best.pt is there from its first epoch on, and it was called trained
    assert finetune.main(argv) == 2
    assert f"holds an interrupted run: continue it with --resume {folder}, or pass another --out" in one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == {k: v for k, v in before.items() if k != "metrics.json"}


def test_a_new_run_is_not_scattered_among_other_files(dataset, tmp_path, capsys):
    """--out . or --out ~/Desktop: the run wrote best.pt, config.json and its plots among the files
    there. A folder of other files is refused before anything is written; a new, empty or hidden-files-only
    folder is taken."""
    folder = tmp_path / "desktop"
    (folder / "photos").mkdir(parents=True)
    for name in ("notes.txt", "todo.md", "config.json"):
        (folder / name).write_text("mine")
    argv = ["--data", str(dataset), "--out", str(folder), "--backbone", "mobilenet_v3_large", "--weights", "none", "--epochs", "1",
            "--image-size", "32", "--workers", "0"]
    assert finetune.main(argv) == 2
    assert (f"--out {folder} holds files that are not a training run's (config.json, notes.txt, photos/ and 1 more): "
            f"pass a new or empty folder, such as {folder / 'run'}") in one_error_line(capsys)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "notes.txt", "photos", "todo.md"]
    assert (folder / "config.json").read_text() == "mine"
    assert finetune.main([*argv[:3], str(dataset), *argv[4:]]) == 2  # --out DATA: DATA/run was suggested, then refused as inside --data
    assert f"pass a new or empty folder, such as runs/{dataset.name}-mobilenet_v3_large" in one_error_line(capsys)
    empty = tmp_path / "empty"
    (empty / ".DS_Store").parent.mkdir()
    (empty / ".DS_Store").write_bytes(b"")
    assert finetune.main([*argv[:3], str(empty), *argv[4:]]) == 0
    assert (empty / "best.pt").is_file()


def test_a_run_stopped_between_its_first_best_pt_and_last_pt_can_start_again(run, dataset, tmp_path, capsys):
    """Killed after the first epoch's best.pt and before its last.pt: --resume had no last.pt, and a new
    run at that --out was refused as "a trained model", so only deleting the folder by hand went on."""
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    for name in ("last.pt", "metrics.json"):
        (folder / name).unlink()
    (folder / ".last.pt.k9.tmp").write_bytes(b"")  # the save the kill cut short
    argv = ["--data", str(dataset), "--out", str(folder), "--backbone", "mobilenet_v3_large", "--weights", "none", "--epochs", "1",
            "--image-size", "32", "--workers", "0"]
    assert finetune.main(argv) == 0
    assert (folder / "last.pt").is_file() and (folder / "metrics.json").is_file() and not list(folder.glob(".last.pt.*"))


def test_a_run_whose_images_moved_is_refused_before_anything_is_rewritten(run, tmp_path, capsys):
    """evaluate and calibrate on a run whose split.json points where the images no longer are: each
    image was skipped as a failed decode, evaluate reported "(no images evaluated)" and calibrate
    replaced the run's calibration with an uncalibrated one; both exited 0."""
    from training.calibrate import main as calibrate_main

    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    split = json.loads((folder / "split.json").read_text())
    (folder / "split.json").write_text(json.dumps({**split, "root": str(tmp_path / "moved-away")}))
    checkpoint = (folder / "best.pt").read_bytes()
    assert evaluate_main(["--checkpoint", str(folder), "--workers", "0", "--out", str(tmp_path / "eval")]) == 2
    assert "none of the" in (err := one_error_line(capsys)) and "test images" in err and "pass --data FOLDER" in err
    assert calibrate_main(["--checkpoint", str(folder), "--workers", "0"]) == 2
    assert f"validation images {folder / 'split.json'} lists can be opened" in one_error_line(capsys)
    assert (folder / "best.pt").read_bytes() == checkpoint and not (tmp_path / "eval").exists()

    (folder / "split.json").write_text("{not json")
    assert evaluate_main(["--checkpoint", str(folder), "--workers", "0"]) == 2
    assert f"{folder / 'split.json'} is not a split file written by training.finetune" in one_error_line(capsys)
    for label in (-1, 99):  # -1 was left out unsaid; 99 was numpy's "cannot reshape array of size 298 into shape (3,3)"
        (folder / "split.json").write_text(json.dumps({**split, "test": [[split["test"][0][0], label], *split["test"][1:]]}))
        assert evaluate_main(["--checkpoint", str(folder), "--workers", "0"]) == 2
        assert f"(ValueError: test lists {split['root']}/{split['test'][0][0]} with label {label}, not one of the 3 classes' 0-2)" in one_error_line(capsys)


def test_evaluate_a_run_without_test_images_says_why_and_what_to_pass(run, tmp_path, capsys):
    """A run trained with --test-split 0: "error: no images to evaluate in test" said neither."""
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    split = json.loads((folder / "split.json").read_text())
    (folder / "split.json").write_text(json.dumps({**split, "test": []}))
    assert evaluate_main(["--checkpoint", str(folder), "--workers", "0"]) == 2
    assert one_error_line(capsys) == (f"error: the run's test split is empty ({folder / 'split.json'}; trained with --test-split 0?): "
                                      f"pass --split val ({len(split['val'])} images) or --data FOLDER")


def test_evaluate_refuses_a_saved_split_and_a_folder_together(run, capsys):
    """--split val with --data was ignored: the whole folder was evaluated, exit 0."""
    with pytest.raises(SystemExit) as stop:
        evaluate_main(["--checkpoint", str(run), "--split", "val", "--data", str(run)])
    assert stop.value.code == 2
    assert "--split val picks one of the run's saved splits, and --data evaluates a folder instead: pass one of them" in capsys.readouterr().err


def test_evaluate_where_no_image_decodes_any_more(run, tmp_path, capsys):
    """The run's test images are all there, and all corrupt now: it reported "(no images evaluated)", exit 0."""
    folder, images = tmp_path / "run", tmp_path / "images"
    shutil.copytree(run, folder)
    split = json.loads((folder / "split.json").read_text())
    shutil.copytree(split["root"], images)
    (folder / "split.json").write_text(json.dumps({**split, "root": str(images)}))
    for path, _ in split["test"]:
        (images / path).write_bytes(b"\xff\xd8\xff\xe0 not a jpeg any more" * 20)
    assert evaluate_main(["--checkpoint", str(folder), "--workers", "0", "--out", str(tmp_path / "eval")]) == 2
    assert f"none of the {len(split['test'])} images of test could be decoded (e.g. " in one_error_line(capsys)
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("command, flags, reason", [
    ("service.webcam.demo", ["--jsonl", "FILE/log.jsonl"], "argument --jsonl: FILE/log.jsonl: FILE is a file, not a folder"),
    ("service.webcam.demo", ["--jsonl", "FOLDER"], "argument --jsonl: FOLDER is a folder: pass a file name"),
    ("service.webcam.demo", ["--snapshot-dir", "FILE"], "argument --snapshot-dir: FILE is a file: pass a folder"),
    ("service.webcam.demo", ["--output", "FOLDER/out.xyz"], "argument --output: FOLDER/out.xyz: the file name must end in .mp4 or .avi"),
    ("training.check", ["--json", "FOLDER", "FOLDER"], "argument --json: FOLDER is a folder: pass a file name"),
    ("training.check", ["--workers", "-3", "FOLDER"], "argument --workers"),
    ("training.export", ["--out", "FOLDER", "--format", "onnx", "--checkpoint", "RUN"], "argument --out: FOLDER is a folder: pass a file name"),
    ("training.visualize", ["--image", "FOLDER", "--checkpoint", "RUN"], "argument --image: FOLDER is a folder: pass an image file"),
    ("training.prepare", ["flowers", "--root", "FILE"], "argument --root: FILE is a file: pass a folder"),  # its offline hint named FILE/.downloads/
    # Each replaced a file the command had not written: a run's checkpoint by a JSON report or a
    # TorchScript file, a photo by JSON lines.
    ("training.check", ["--json", "CKPT", "FOLDER"], "argument --json: CKPT is a checkpoint (written by torch.save): writing here would replace it"),
    ("training.export", ["--out", "CKPT", "--format", "torchscript", "--checkpoint", "RUN"], "argument --out: CKPT is a checkpoint (written by torch.save)"),
    ("service.webcam.demo", ["--jsonl", "PHOTO"], "argument --jsonl: PHOTO exists and is not a .jsonl or .ndjson or .json or .txt or .log file: "
                                                  "writing here would replace it"),
    # A run's own JSON files, a .json like any report: check --json RUN/split.json left evaluate and --resume failing on it.
    ("training.check", ["--json", "RUN/split.json", "FOLDER"], "argument --json: RUN/split.json is a training run's split.json: writing here would replace it"),
    ("training.check", ["--json", "RUN/metrics.json", "FOLDER"], "argument --json: RUN/metrics.json is a training run's metrics.json"),
    ("service.webcam.demo", ["--jsonl", "RUN/config.json"], "argument --jsonl: RUN/config.json is a training run's config.json"),
])  # fmt: skip
def test_an_output_or_input_path_of_the_wrong_kind_is_refused_before_the_work(run, tmp_path, capsys, command, flags, reason):
    """Each was found when the first result was written (after the work, in the operating system's
    words: "[Errno 17] File exists"), was silently clamped, or was called missing while it was a folder."""
    import importlib

    import cv2

    (tmp_path / "file").write_text("a file")
    (tmp_path / "folder").mkdir()
    shutil.copy(run / "best.pt", tmp_path / "ck.pt")
    cv2.imwrite(str(tmp_path / "photo.png"), np.full((32, 32, 3), 90, np.uint8))
    names = {"FILE": str(tmp_path / "file"), "FOLDER": str(tmp_path / "folder"), "RUN": str(run), "CKPT": str(tmp_path / "ck.pt"), "PHOTO": str(tmp_path / "photo.png")}
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    expand = lambda text: functools.reduce(lambda t, kv: t.replace(*kv), names.items(), text)  # noqa: E731
    with pytest.raises(SystemExit) as exited:
        importlib.import_module(command).main([expand(f) for f in flags])
    assert exited.value.code == 2
    assert expand(reason) in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_a_file_system_error_is_one_line_with_the_path(dataset, tmp_path, capsys, monkeypatch):
    """An OSError (here: a full disk as the run folder is made) goes through the same handler."""
    def full(folder):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))

    monkeypatch.setattr(finetune, "hold_run_folder", full)
    argv = ["--data", str(dataset), "--out", str(tmp_path / "run"), "--backbone", "mobilenet_v3_large", "--weights", "none"]
    assert finetune.main(argv) == 2
    assert one_error_line(capsys) == f"error: {tmp_path / 'run'}: No space left on device"


def test_a_commands_warnings_are_one_line_each_without_the_code_behind_them(dataset, tmp_path):
    """A 6-image-per-class folder warns twice: calibration has too few validation images for its target,
    and a 2-image class has no test image. Each is one `warning:` line, not Python's file:line and source."""
    data = shutil.copytree(dataset, tmp_path / "data")
    first = sorted(data.iterdir())[0]
    (data / "tiny").mkdir()
    for path in sorted(first.iterdir())[:2]:
        shutil.copy(path, data / "tiny" / path.name)
    done = subprocess.run([sys.executable, "-m", "training.finetune", "--data", str(data), "--out", str(tmp_path / "run"),
                           "--backbone", "mobilenet_v3_large", "--weights", "none", "--epochs", "1", "--image-size", "32",
                           "--workers", "0"], cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    warned = [line for line in output.splitlines() if "warning:" in line.lower()]
    assert any("validation gesture images are too few" in line for line in warned), output
    assert any("too few images to hold one out for the test: tiny (2)" in line for line in warned), output
    assert all(line.startswith("warning: ") for line in warned), warned
    assert "Warning:" not in output and ".py:" not in output


def test_resume_after_the_images_moved_stops_before_it_replaces_the_model(tmp_path, capsys):
    """Every image was skipped as a failed decode: an epoch of nothing, and best.pt replaced, exit 0."""
    data = make_image_folder(tmp_path / "gestures", per_class=6, size=40)
    run = finetune.train(tiny_config(data, tmp_path / "run", epochs=1))
    best = (run / "best.pt").read_bytes()
    data.rename(tmp_path / "moved")
    assert finetune.main(["--resume", str(run), "--epochs", "2"]) == 2
    err = one_error_line(capsys)
    assert "none of the" in err and f"put them back under {data} to continue this run" in err
    assert (run / "best.pt").read_bytes() == best


def test_resume_refuses_the_flags_it_would_ignore(run, capsys):
    with pytest.raises(SystemExit) as stop:
        finetune.main(["--resume", str(run), "--data", "elsewhere", "--backbone", "resnet18"])
    assert stop.value.code == 2
    assert "--resume continues the run as it was configured; it takes only --epochs, --workers, --device, --patience, not --backbone, --data" in capsys.readouterr().err


def test_a_run_folder_inside_the_data_is_refused(dataset, tmp_path, monkeypatch, capsys):
    """The next run on that folder read the run's plots as a class of their own."""
    argv = ["--data", str(dataset), "--backbone", "mobilenet_v3_large", "--weights", "none", "--epochs", "1"]
    assert finetune.main([*argv, "--out", str(dataset / "run")]) == 2
    assert f"the run folder {dataset / 'run'} is inside --data {dataset}" in one_error_line(capsys)
    monkeypatch.chdir(dataset)  # the default --out, runs/NAME, is under the current folder
    assert finetune.main(["--data", ".", *argv[2:]]) == 2
    assert "pass an --out outside it (the default is runs/ in the current folder)" in one_error_line(capsys)
    assert sorted(p.name for p in dataset.iterdir()) == ["fist", "palm", "peace"]


def test_an_output_that_would_destroy_an_input_or_a_run_is_refused(run, tmp_path, capsys):
    """export --out RUN/best.pt wrote TorchScript over the checkpoint, evaluate --out RUN replaced the
    run's metrics.json and plots, and the webcam's --output over its --source video truncated it."""
    import cv2
    import numpy as np

    from service.webcam.demo import main as webcam_main
    from training.export import main as export_main

    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    for checkpoint in ("best.pt", "last.pt"):
        with pytest.raises(SystemExit) as exited:
            export_main(["--checkpoint", str(folder), "--format", "torchscript", "--out", str(folder / checkpoint)])
        assert exited.value.code == 2
        assert f"argument --out: {folder / checkpoint} is a checkpoint (written by torch.save)" in capsys.readouterr().err
    assert evaluate_main(["--checkpoint", str(folder), "--out", str(folder)]) == 2
    assert f"--out {folder} would replace a training run's files in {folder}" in one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (64, 64))
    for i in range(5):
        writer.write(np.full((64, 64, 3), 40 * i, np.uint8))
    writer.release()
    recorded = video.read_bytes()
    assert webcam_main(["--checkpoint", str(folder), "--source", str(video), "--headless", "--output", str(video)]) == 2
    assert f"--output {video} is the --source it reads" in one_error_line(capsys)
    assert video.read_bytes() == recorded


def test_calibrate_and_export_refuse_a_runs_last_pt(run, tmp_path, capsys):
    """It calibrated the latest epoch and wrote that into the run's metrics.json and open_set.png, the best model's report."""
    from training.calibrate import main as calibrate_main

    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert calibrate_main(["--checkpoint", str(folder / "last.pt")]) == 2
    assert f"pass the run's best.pt, e.g. {python_command()} -m training.calibrate --checkpoint {folder}" in one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    from training.export import main as export_main  # it shipped the latest epoch, uncalibrated, as model.onnx

    assert export_main(["--checkpoint", str(folder / "last.pt"), "--format", "onnx"]) == 2
    assert f"pass the run's best.pt, e.g. {python_command()} -m training.export --checkpoint {folder}" in one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("module", ["training.finetune", "training.evaluate", "training.compare", "training.visualize", "service.webcam.capture"])
def test_an_out_folder_that_is_a_file_is_refused_at_once(module, tmp_path, capsys):
    """It was "error: X: File exists", after the data was scanned (or the model trained)."""
    import importlib

    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).build_parser().parse_args(["--out", str(taken)])
    assert stop.value.code == 2
    assert f"argument --out: {taken} is a file: pass a folder" in capsys.readouterr().err
    assert taken.read_text() == "mine"


def test_evaluating_last_pt_keeps_best_pts_evaluation(run, tmp_path):
    """Both wrote RUN/eval-test: evaluating the last epoch replaced the model's own evaluation."""
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    assert evaluate_main(["--checkpoint", str(folder / "best.pt")]) == 0
    kept = (folder / "eval-test" / "metrics.json").read_bytes()
    assert evaluate_main(["--checkpoint", str(folder / "last.pt")]) == 0
    assert (folder / "eval-test" / "metrics.json").read_bytes() == kept
    assert json.loads((folder / "eval-test-last" / "metrics.json").read_text())["checkpoint"] == str(folder / "last.pt")


def test_an_onnx_export_given_as_a_checkpoint_is_named(tmp_path, capsys):
    exported = tmp_path / "model.onnx"
    exported.write_bytes(b"\x08\x07onnx")
    with pytest.raises(SystemExit):
        evaluate_main(["--checkpoint", str(exported)])
    assert f"{exported} is an ONNX export (training.export writes them for other runtimes): pass the run's checkpoint" in capsys.readouterr().err


def test_a_torchscript_export_given_as_a_checkpoint_is_named(tmp_path, capsys):
    """It is a .pt file too: torch's refusal was quoted as "truncated, corrupt, or not written by torch.save"."""
    exported = tmp_path / "model.torchscript.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), exported)
    assert evaluate_main(["--checkpoint", str(exported)]) == 2
    assert one_error_line(capsys) == (f"error: {exported} is not a readable checkpoint: it is a TorchScript export (training.export "
                                      "--format torchscript writes them for other runtimes), a compiled model without the run's "
                                      "settings: pass the run's checkpoint (RUN/best.pt) or the run folder RUN")


def test_a_report_written_inside_the_dataset_is_refused(run, dataset, tmp_path, capsys):
    """check --json into a class folder replaced a photo with its JSON; evaluate's and visualize's
    PNGs in a class folder were the next run's photos of that class."""
    from training.check import main as check_main
    from training.visualize import main as visualize_main

    photo = next((dataset / "fist").iterdir())
    before = {p: p.read_bytes() for p in dataset.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as stop:
        check_main([str(dataset), "--json", str(dataset / "fist" / "report.json")])  # over a photo: refused before, as any non-JSON file
    assert stop.value.code == 2 and f"--json {dataset / 'fist' / 'report.json'} is inside the dataset {dataset}" in capsys.readouterr().err
    assert evaluate_main(["--checkpoint", str(run), "--out", str(dataset / "fist")]) == 2  # the run's own dataset
    assert f"--out {dataset / 'fist'} is inside the dataset {dataset}, where training would read what it writes" in one_error_line(capsys)
    other = make_image_folder(tmp_path / "other", per_class=2, size=40)
    assert evaluate_main(["--checkpoint", str(run), "--data", str(other), "--out", str(other / "reports")]) == 2
    assert f"is inside the dataset {other}" in one_error_line(capsys)
    assert visualize_main(["--checkpoint", str(run), "--image", str(photo), "--out", str(dataset / "palm")]) == 2
    assert f"--out {dataset / 'palm'} is inside the dataset {dataset}" in one_error_line(capsys)
    assert {p: p.read_bytes() for p in dataset.rglob("*") if p.is_file()} == before


def test_visualize_writes_beside_a_photo_on_its_own(run, tmp_path):
    """A lone photo's folder is no dataset: visualize --image ~/photo.jpg --out ~/vis was refused as 'inside the
    dataset', as was a run folder below that folder."""
    from training.visualize import main as visualize_main

    photo = next((make_image_folder(tmp_path / "data", classes=("3",), per_class=1, size=40) / "3").iterdir())
    lone = tmp_path / "home" / "photo.png"
    lone.parent.mkdir()
    lone.write_bytes(photo.read_bytes())
    assert visualize_main(["--checkpoint", str(run), "--image", str(lone), "--out", str(lone.parent / "vis")]) == 0
    assert sorted(p.name for p in (lone.parent / "vis").iterdir()) == ["feature_maps.png", "gradcam.png"]


def test_a_report_written_into_any_folder_of_photos_or_the_unknown_folder_is_refused(run, tmp_path, capsys):
    """Not only the model's own dataset: visualize --out OTHER/3 wrote two PNGs into class 3 of another dataset
    (check then counted them and said "OK to train"), and evaluate --out UNKNOWN/report made the next --unknown
    UNKNOWN read its plots as unknown gestures."""
    from training.compare import main as compare_main
    from training.visualize import main as visualize_main

    other = make_image_folder(tmp_path / "other", classes=("3", "4"), per_class=3, size=40)
    unknown = make_image_folder(tmp_path / "unknown", classes=("x",), per_class=3, size=40) / "x"
    photo = next((other / "3").iterdir())
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert visualize_main(["--checkpoint", str(run), "--image", str(photo), "--out", str(other / "4")]) == 2
    assert f"--out {other / '4'}: {other / '4'} holds photos (" in one_error_line(capsys)
    assert visualize_main(["--checkpoint", str(run), "--image", str(photo), "--out", str(other / "3" / "maps")]) == 2
    assert f"--out {other / '3' / 'maps'} is inside the dataset {other / '3'}" in one_error_line(capsys)
    assert evaluate_main(["--checkpoint", str(run), "--unknown", str(unknown), "--out", str(unknown / "report")]) == 2
    assert f"--out {unknown / 'report'} is inside the dataset {unknown}" in one_error_line(capsys)
    assert evaluate_main(["--checkpoint", str(run), "--out", str(other / "4" / "report")]) == 2
    assert f"{other / '4'} holds photos (" in one_error_line(capsys)
    with pytest.raises(SystemExit) as stop:
        compare_main(["--data", str(run.parent), "--out", str(other / "3"), "--backbones", "lenet5"])
    assert stop.value.code == 2 and f"{other / '3'} holds photos" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    report = tmp_path / "viz"  # the command's own images in its own folder: a second run writes over them
    for _ in range(2):
        assert visualize_main(["--checkpoint", str(run), "--image", str(photo), "--out", str(report)]) == 0
    assert list(run.glob("*.png")), "the run folder holds training's plots"
    assert visualize_main(["--checkpoint", str(run), "--image", str(photo), "--out", str(run / "maps-again")]) == 0


def data_config_of(run, **changes):
    return {**torch.load(run / "best.pt", weights_only=True)["data_config"], **changes}


def rejection_of(run, **changes):
    return {**torch.load(run / "best.pt", weights_only=True)["rejection"], **changes}


@pytest.mark.parametrize(("change", "reason"), [
    (lambda run: {"version": "2"}, "'version' must be an integer, got '2'"),
    (lambda run: {"rejection": "x"}, "unusable rejection (TypeError: it must be a mapping of the rule's values, got str)"),
    (lambda run: {"rejection": {"threshold": "x"}}, "unusable rejection (KeyError: 'reject_classes')"),
    (lambda run: {"classes": ["fist", "fist", "peace"]}, "'classes' names fist more than once"),
    (lambda run: {"classes": ["fist", "pal\x1b[2Jm", "peace"]}, "'classes' 'pal\\x1b[2Jm' hold a control character"),
    (lambda run: {"classes": ["fist", "lat\udce9in", "peace"]}, "'classes' 'lat\\udce9in' hold bytes that are not UTF-8"),
    (lambda run: {"classes": ["fist", "x\u202etsif", "peace"]}, "'classes' 'x\\u202etsif' hold a mark that reverses the direction"),
    (lambda run: {"data_config": data_config_of(run, input_size=-5)}, "unusable data_config (ValueError: input size -5 px: at least 1)"),
    (lambda run: {"data_config": data_config_of(run, std=[0.0, 0.0, 0.0])}, "std numbers in 0.001-1, got"),
    (lambda run: {"data_config": data_config_of(run, std=[1e-50] * 3)}, "std numbers in 0.001-1, got"),  # 0 as float32
    (lambda run: {"data_config": data_config_of(run, mean=[1.2, 0.5, 0.5])}, "mean must be numbers in 0-1"),  # letterbox's OverflowError
    (lambda run: {"data_config": data_config_of(run, resize_size=8)}, "resize size 8 px is below the input size"),
    (lambda run: {"data_config": data_config_of(run, resize_size=100_000)}, "resize size 100000 px: at most 2048"),  # OpenCV's 40 GB
    (lambda run: {"data_config": data_config_of(run, input_size=1, resize_size=1)}, "input size 1 px is too small for mobilenet_v3_large"),
    (lambda run: {"data_config": data_config_of(run, mean=torch.zeros(1).expand(10**9))}, "mean must be a list of one value per channel, got Tensor"),
    (lambda run: {"backbone": 5}, "'backbone' must be a backbone's name, got 5"),
    (lambda run: {"model": "weights"}, "'model' must be a state dict (parameter names to tensors), got str"),
    (lambda run: {"train_config": "x"}, "'train_config' must be a mapping of settings, got str"),
    (lambda run: {"metrics": ["x"]}, "'metrics' must be a mapping of settings, got list"),
    (lambda run: {"classes": [f"c{i}" for i in range(100_001)]}, "'classes' holds 100,001 names: at most 100,000"),  # minutes to check
    (lambda run: {"classes": ["fist", "x" * 300, "peace"]}, "'classes' holds a name of more than 255 bytes"),
    (lambda run: {"classes": ["\u00e9", "e\u0301", "peace"]}, "'classes' names \u00e9 more than once (Unicode's composed"),
    (lambda run: {"classes": ["fist", "fist\u200b", "peace"]}, "'classes' 'fist\\u200b' hold a character that shows as nothing"),
    (lambda run: {"classes": ["fist", " ", "peace"]}, "'classes' ' ' hold nothing but spaces"),
    (lambda run: {"rejection": rejection_of(run, reject_classes="palm")}, "reject_classes must be a list of the model's classes, got 'palm'"),
    (lambda run: {"rejection": rejection_of(run, reject_classes=["nosuch"])}, "('nosuch' is none)"),
    (lambda run: {"rejection": rejection_of(run, temperature=float("inf"))}, "temperature must be a finite number, got inf"),
    (lambda run: {"rejection": rejection_of(run, threshold="0.5")}, "threshold must be a finite number, got '0.5'"),
    (lambda run: {"rejection": rejection_of(run, calibrated="False")}, "calibrated must be True or False, got 'False'"),
    (lambda run: {"rejection": rejection_of(run, reference=torch.zeros(1).expand(10**9))}, "reference must be a list of numbers, got Tensor"),
    (lambda run: {"rejection": rejection_of(run, feature_means=[[1.0, 0.0], [1.0]])}, "feature_means must be one mean of the same length per class"),
    (lambda run: {"rejection": rejection_of(run, score="feature_cosine", feature_means=[[1.0, 0.0]] * 3)},
     "a test image does not run through the model (operands could not be broadcast"),  # every request a 500
    (lambda run: {"rejection": rejection_of(run, score="energy", reference=[])}, "a test image does not run through the model (the energy score needs"),
    (lambda run: {"model": {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in torch.load(run / "best.pt", weights_only=True)["model"].items()}},
     "the model answers a test image with 3 probabilities (not finite)"),  # evaluated as 33% with exit 0
])  # fmt: skip
def test_a_checkpoint_with_fields_of_the_wrong_kind_is_one_line_naming_the_field(run, tmp_path, capsys, change, reason):
    """Each was a traceback (TypeError, KeyError, a kernel-size RuntimeError in export), a model evaluated at NaN
    (std 0), a file of a few bytes that made the loader iterate 10**9 values, or a model whose every request then
    failed, which import_model stored for serving; evaluate loads a checkpoint as import_model and the service do."""
    bad = edited_checkpoint(run / "best.pt", tmp_path / "best.pt", **change(run))
    assert evaluate_main(["--checkpoint", str(bad), "--data", str(run)]) == 2
    assert reason in one_error_line(capsys)


def test_names_that_a_spreadsheet_reads_as_formulas_are_written_as_text_in_predictions_csv(run, tmp_path, capsys):
    """A class folder "=cmd|' /C calc'!A0" became a formula cell when predictions.csv was opened in a spreadsheet."""
    import csv

    classes = ["=cmd|' ", "+palm", "@peace"]
    bad = edited_checkpoint(run / "best.pt", tmp_path / "best.pt", classes=classes, rejection=None)
    data = make_image_folder(tmp_path / "-data", classes=classes, per_class=2, size=48)
    assert evaluate_main(["--checkpoint", str(bad), "--data", str(data), "--out", str(tmp_path / "report")]) == 0
    with (tmp_path / "report" / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert {row["true"] for row in rows} == {"'=cmd|' ", "'+palm", "'@peace"} and all(row["path"].startswith("/") for row in rows)
    assert all(row[key][0] not in "=+-@" for row in rows for key in ("label", "top_class") if row[key])


@pytest.mark.parametrize(("command", "argv", "reason"), [
    ("training.export", ["--format", "onnx", "--opset", "999"], "argument --opset: must be in [13, 20], got 999"),  # a traceback
    ("training.evaluate", ["--workers", "99999"], "argument --workers: must be in [0, "),  # killed for memory
    ("training.calibrate", ["--workers", "99999"], "argument --workers: must be in [0, "),
    # 0 was taken, and the model's working threshold replaced with one that turned away 99% of its gestures
    ("training.calibrate", ["--reject-target-recall", "0"], "argument --reject-target-recall: must be in [0.5, 1.0], got 0.0"),
    ("training.export", ["--tolerance", "1e30"], "argument --tolerance: must be in [0.0, 1.0], got 1e+30"),  # a check that cannot fail
])  # fmt: skip
def test_numbers_beyond_what_the_tool_can_use_are_usage_errors(run, command, argv, reason, capsys):
    import importlib

    with pytest.raises(SystemExit) as stop:
        importlib.import_module(command).main(["--checkpoint", str(run), *argv])
    assert stop.value.code == 2 and reason in capsys.readouterr().err


def test_evaluate_on_only_broken_images_says_why_they_were_skipped(run, tmp_path, capsys):
    for name in ("fist", "palm"):
        (tmp_path / "broken" / name).mkdir(parents=True)
        (tmp_path / "broken" / name / "0.png").write_text("not a picture")
    assert evaluate_main(["--checkpoint", str(run), "--data", str(tmp_path / "broken")]) == 2
    assert "no images to evaluate in broken: 2 image file(s) skipped, e.g. " in one_error_line(capsys)


def test_checkpoints_get_the_mode_the_umask_allows_not_mkstemps_0600(tmp_path):
    """A best.pt readable by its owner alone could not be loaded by a service running as another user."""
    from gesture_core.checkpoint import atomic_torch_save

    old = os.umask(0o022)
    try:
        assert atomic_torch_save({"x": 1}, tmp_path / "best.pt").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        assert atomic_torch_save({"x": 1}, tmp_path / "private.pt").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_the_engines_onnx_cache_and_hand_crops_get_the_mode_the_umask_allows(tmp_path):
    """The ONNX export cached for the service's engine was mkstemp's 0600: a service run as another user than
    the one who warmed the cache could not read it."""
    from gesture_core import build_model
    from gesture_core.engines import write_onnx
    from training.hand_crops import write_text_atomic

    old = os.umask(0o022)
    try:
        assert write_onnx(build_model("lenet5", 3, "none").eval(), (3, 32, 32), tmp_path / "m.onnx").stat().st_mode & 0o777 == 0o644
        assert write_text_atomic(tmp_path / "hands.json", "{}").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hands.json", "m.onnx"]  # no temporary file left


def test_resume_after_split_json_was_edited_names_the_split_not_the_checkpoint(run, tmp_path, capsys):
    """A class removed from split.json was reported as last.pt's "size mismatch" for the head; the refusal
    came after config.json had been rewritten with the resume's settings."""
    import shutil

    folder = shutil.copytree(run, tmp_path / "run")
    split = json.loads((folder / "split.json").read_text())
    kept = split["classes"][:-1]
    edited = {**split, "classes": kept, **{part: [item for item in split[part] if item[1] < len(kept)] for part in ("train", "val", "test")}}
    (folder / "split.json").write_text(json.dumps(edited))
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    assert finetune.main(["--resume", str(folder), "--epochs", "9"]) == 2
    err = one_error_line(capsys)
    assert f"{folder / 'split.json'} lists the classes {', '.join(kept)}, but {folder / 'last.pt'} was trained on {', '.join(split['classes'])}" in err
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before
    reordered = split["classes"][::-1]  # as many classes, in another order: every label would name another class
    (folder / "split.json").write_text(json.dumps({**split, "classes": reordered}))
    assert finetune.main(["--resume", str(folder), "--epochs", "9"]) == 2
    assert f"lists the classes {', '.join(reordered)}, but" in one_error_line(capsys)


@pytest.mark.parametrize("flag", [["--test-split", "0.5"], ["--test-per-class", "2"]])
def test_test_split_flags_for_a_presplit_folder_are_refused_not_ignored(tmp_path, capsys, flag):
    """Its test/ folder is the test set: the flags were dropped without a word, and the split came out as without them."""
    root = tmp_path / "presplit"
    make_image_folder(root / "train", per_class=4, size=32)
    make_image_folder(root / "test", per_class=2, size=32)
    with pytest.raises(SystemExit) as stop:
        finetune.main(["--data", str(root), "--out", str(tmp_path / "run"), *flag])
    assert stop.value.code == 2
    assert f"{flag[0]} does not apply to {root}: its test/ folder is the test set (a pre-split layout); drop it" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --- evaluate and calibrate on inputs a user gets wrong or cannot see: report folders of two data folders
# named alike, a pre-split dataset, the run's own images passed as new or unknown ones, and validation
# images that are missing, corrupt or absent.


def evaluated(report_folder) -> int:
    return json.loads((report_folder / "metrics.json").read_text())["test"]["n"]


def test_reports_of_two_folders_named_alike_are_both_kept(run, tmp_path, capsys):
    """--data x1/test, then --data x2/test: both wrote RUN/eval-test, and the second replaced the first."""
    folder = shutil.copytree(run, tmp_path / "run")
    x1, x2 = (make_image_folder(tmp_path / name / "test", per_class=n, size=40) for name, n in (("x1", 2), ("x2", 3)))
    assert evaluate_main(["--checkpoint", str(folder), "--data", str(x1), "--workers", "0"]) == 0
    assert evaluated(folder / "eval-test") == 6
    assert evaluate_main(["--checkpoint", str(folder), "--data", str(x2), "--workers", "0"]) == 0
    assert evaluated(folder / "eval-test") == 6 and evaluated(folder / "eval-test-2") == 9
    assert f"{folder / 'eval-test'} holds the report of {x1.resolve()}: this one goes to {folder / 'eval-test-2'}/" in capsys.readouterr().out

    assert evaluate_main(["--checkpoint", str(folder), "--data", str(x1), "--workers", "0"]) == 0  # the same data: its own report
    assert evaluate_main(["--checkpoint", str(folder), "--workers", "0"]) == 0  # the run's test split is other data too
    assert sorted(p.name for p in folder.glob("eval-*")) == ["eval-test", "eval-test-2", "eval-test-3"]
    assert (evaluated(folder / "eval-test"), evaluated(folder / "eval-test-2")) == (6, 9)


def test_calibrate_says_which_validation_images_it_skipped_and_counts_those_it_used(run, dataset, tmp_path, capsys):
    """One validation image deleted, one replaced by garbage: it printed "val features: 3 photos", named
    neither, and calibrated on the one left."""
    folder, data = shutil.copytree(run, tmp_path / "run"), shutil.copytree(dataset, tmp_path / "data")
    split = json.loads((folder / "split.json").read_text())
    (folder / "split.json").write_text(json.dumps({**split, "root": str(data)}))
    val = [data / path for path, _ in split["val"]]
    assert len(val) >= 3
    val[0].unlink()
    val[1].write_bytes(b"not a photo")
    with pytest.warns(UserWarning, match=rf"2 of the {len(val)} validation images skipped, e\.g\. {val[0]}: unreadable"):
        assert calibrate_main(["--checkpoint", str(folder), "--workers", "0"]) == 0
    assert f"val features: {len(val) - 2} photos" in capsys.readouterr().out


def test_calibrate_removes_what_a_killed_calibration_left_and_waits_for_a_run_training_there(run, tmp_path, capsys):
    """A calibration killed mid-save left a hidden temporary file of a checkpoint's size in the finished run for good."""
    folder = shutil.copytree(run, tmp_path / "run")
    (folder / ".best.pt.k2j_x9aq.tmp").write_bytes(b"\0" * 1000)
    (folder / ".last.pt.k2j_x9aq.tmp").write_bytes(b"\0" * 1000)  # another file's: left alone
    assert calibrate_main(["--checkpoint", str(folder), "--workers", "0"]) == 0
    assert "removed 1 partial checkpoint file(s) left by an interrupted save: .best.pt.k2j_x9aq.tmp" in capsys.readouterr().out
    assert sorted(p.name for p in folder.glob(".*.tmp")) == [".last.pt.k2j_x9aq.tmp"]
    (folder / ".lock").unlink()
    with a_run_training_in(folder):  # which would write over its best.pt
        before = (folder / "best.pt").read_bytes()
        assert calibrate_main(["--checkpoint", str(folder), "--workers", "0"]) == 2
        assert one_error_line(capsys) == f"error: {folder} is in use by a training run (pid 4242 on trainer): wait for it to end: it calibrates the best.pt it writes"
        assert (folder / "best.pt").read_bytes() == before


def test_evaluate_waits_for_a_run_training_in_the_checkpoints_folder(run, tmp_path, capsys):
    """It scored the best.pt of the first epochs and left that report in the run's folder, beside the
    finished run's own figures, with no word."""
    folder = shutil.copytree(run, tmp_path / "run")
    (folder / ".lock").unlink()
    with a_run_training_in(folder):
        assert evaluate_main(["--checkpoint", str(folder / "best.pt"), "--workers", "0"]) == 2
        assert one_error_line(capsys) == (f"error: {folder} is in use by a training run (pid 4242 on trainer): wait for it to end: "
                                          "its best.pt is replaced whenever an epoch does better")
    assert not list(folder.glob("eval-*"))
    assert evaluate_main(["--checkpoint", str(folder / "best.pt"), "--workers", "0"]) == 0  # once it has ended


def test_calibrate_refuses_a_run_without_validation_images(dataset, tmp_path, capsys):
    """--val-split 0: it printed "uncalibrated: no validation images", then "calibrated RUN/best.pt", exit 0."""
    run = finetune.train(tiny_config(dataset, tmp_path / "run", epochs=1, val_split=0.0, test_split=0.0))
    best = (run / "best.pt").read_bytes()
    assert calibrate_main(["--checkpoint", str(run), "--workers", "0"]) == 2
    err = one_error_line(capsys)
    assert f"{run / 'split.json'} lists no validation images: nothing to calibrate on" in err and "--val-split" in err
    assert (run / "best.pt").read_bytes() == best


def test_evaluate_refuses_learned_gestures_as_unknown_ones(run, dataset, tmp_path, capsys):
    """The training folder as --unknown was reported as never-learned gestures "answered 'no gesture'"."""
    argv = ["--checkpoint", str(run), "--workers", "0", "--out", str(tmp_path / "eval")]
    assert evaluate_main([*argv, "--unknown", str(dataset)]) == 2
    assert f"--unknown: {dataset} has folder(s) named after gestures the model learned: fist, palm, peace" in one_error_line(capsys)
    assert evaluate_main([*argv, "--unknown", str(dataset / "fist")]) == 2  # the images directly: named by split.json
    assert f"6 of the 6 images in {dataset / 'fist'} are the run's own images" in one_error_line(capsys)
    assert not (tmp_path / "eval").exists()
    # another size: at 40 px, make_image_folder's first two classes are the very bytes of the dataset's fist and palm
    unknown = make_image_folder(tmp_path / "unknown", classes=("wave", "ok"), per_class=2, size=44)
    assert evaluate_main([*argv, "--unknown", str(unknown)]) == 0


def test_evaluate_a_presplit_dataset_scores_its_test_folder(run, tmp_path, capsys):
    """DATA/{train,test}: "has classes the model does not know: test, train"."""
    data = tmp_path / "presplit"
    make_image_folder(data / "train", per_class=2, size=40)
    make_image_folder(data / "test", per_class=3, size=40)
    assert evaluate_main(["--checkpoint", str(run), "--data", str(data), "--workers", "0", "--out", str(tmp_path / "eval")]) == 0
    assert f"--data {data} is a pre-split dataset (train/, test/): evaluating its test split, {data / 'test'}" in capsys.readouterr().out
    assert evaluated(tmp_path / "eval") == 9


def test_evaluate_on_the_training_folder_warns_that_the_score_is_inflated(run, dataset, tmp_path):
    trained = len(json.loads((run / "split.json").read_text())["train"])
    with pytest.warns(UserWarning, match=rf"{trained} of the 18 images evaluated are the run's training images"):
        assert evaluate_main(["--checkpoint", str(run), "--data", str(dataset), "--workers", "0", "--out", str(tmp_path / "eval")]) == 0


def test_evaluate_of_the_runs_dataset_moved_counts_its_training_images_by_their_place(run, dataset, tmp_path):
    """The run's dataset moved: evaluate's error advised --data FOLDER, and the moved folder was scored, its training
    and validation images with the rest, without a word (the split's paths lead nowhere, so nothing matched)."""
    moved = tmp_path / "run"
    shutil.copytree(run, moved)
    split = json.loads((moved / "split.json").read_text())
    split["root"] = str(tmp_path / "gone")  # where the dataset was: --data is where it is now
    (moved / "split.json").write_text(json.dumps(split))
    with pytest.warns(UserWarning) as warned:
        assert evaluate_main(["--checkpoint", str(moved), "--data", str(dataset), "--workers", "0", "--out", str(tmp_path / "eval")]) == 0
    gone = f"found by their place in the run's dataset folder, {tmp_path / 'gone'}, gone since"
    said = [str(w.message) for w in warned]
    assert any(m.startswith(f"{len(split['train'])} of the 18 images evaluated are the run's training images") and gone in m for m in said), said
    assert any(m.startswith(f"{len(split['val'])} of the 18 images evaluated are the run's validation images") for m in said), said


def test_evaluate_counts_links_to_and_copies_of_the_runs_images_as_seen(run, tmp_path, capsys):
    """Only the paths were compared: a folder of links to training images, or of their copies, was scored as new
    images without a word, and validation images (which chose the epoch and the threshold) never counted."""
    split = json.loads((run / "split.json").read_text())
    folder = tmp_path / "looks-new"
    for i, entry in enumerate(split["train"][:3] + split["val"][:2]):
        source = Path(split["root"]) / entry[0]
        target = folder / split["classes"][entry[1]] / f"new-{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source) if i % 2 else shutil.copy(source, target)
    with pytest.warns(UserWarning) as warned:
        assert evaluate_main(["--checkpoint", str(run), "--data", str(folder), "--workers", "0", "--out", str(tmp_path / "eval")]) == 0
    said = [str(w.message) for w in warned]
    assert any(m.startswith("3 of the 5 images evaluated are the run's training images, or copies of them") for m in said), said
    assert any(m.startswith("2 of the 5 images evaluated are the run's validation images, or copies of them") for m in said), said


def test_evaluate_refuses_copies_of_the_runs_images_as_unknown_gestures(run, tmp_path, capsys):
    """--unknown compared paths alone: the run's test photos copied into a folder of another name passed as never learned."""
    split = json.loads((run / "split.json").read_text())
    folder = tmp_path / "unknown" / "wave"
    folder.mkdir(parents=True)
    for i, entry in enumerate(split["test"][:2]):
        shutil.copy(Path(split["root"]) / entry[0], folder / f"wave-{i}.png")
    argv = ["--checkpoint", str(run), "--workers", "0", "--out", str(tmp_path / "eval"), "--unknown", str(tmp_path / "unknown")]
    assert evaluate_main(argv) == 2
    assert "2 of the 2 images in" in (line := one_error_line(capsys)) and "are the run's own images of the classes it learned, or copies" in line


@pytest.mark.parametrize("split, seen", [("val", "chose the best epoch and calibrated"), ("train", "the images the model trained on")])
def test_evaluate_of_a_split_the_run_has_seen_says_so_and_names_it(run, split, seen, tmp_path, capsys):
    """--split val was reported as "test: gesture recall ...", on the images its threshold was fitted to."""
    with pytest.warns(UserWarning, match=f"--split {split}: .*{seen}"):
        assert evaluate_main(["--checkpoint", str(run), "--split", split, "--workers", "0", "--out", str(tmp_path / "eval")]) == 0
    assert f"\n  {split}: gesture recall" in capsys.readouterr().out


@pytest.mark.parametrize("module, flag, argv", [
    ("training.finetune", "--data", ["--data", ""]),
    ("training.compare", "--data", ["--data", " ", "--backbones", "resnet18"]),
    ("training.evaluate", "--data", ["--data", "", "--checkpoint", "RUN"]),  # before --checkpoint, whose own check comes first else
    ("training.evaluate", "--unknown", ["--unknown", "", "--checkpoint", "RUN"]),
    ("training.export", "--images", ["--images", "photos", "", "--checkpoint", "RUN"]),
    ("training.check", "DIR", [""]),
    ("training.prepare", "--archive", ["flowers", "--archive", ""]),
    ("training.visualize", "--image", ["--image", "", "--checkpoint", "RUN"]),
])
def test_an_empty_path_is_refused_not_read_as_the_current_folder(module, flag, argv, capsys):
    """Path("") is the current folder: --data "" (an unset variable in a script) trained on the
    folders of the current one ("class folder(s) with no usable images: benchmarks, datasets, ..."),
    export --images "" checked parity on the images there, and evaluate --unknown "" counted them."""
    import importlib

    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(argv)
    assert exit_.value.code == 2
    assert f"argument {flag}: empty path: pass " in capsys.readouterr().err


def test_evaluate_out_holding_a_users_own_report_files_is_refused(run, tmp_path, capsys):
    """evaluate --out replaced a folder's own metrics.json and predictions.csv; an earlier evaluation's report it replaces."""
    theirs = tmp_path / "notes"
    theirs.mkdir()
    (theirs / "metrics.json").write_text('{"mine": 1}')
    (theirs / "predictions.csv").write_text("a,b\n")
    assert evaluate_main(["--checkpoint", str(run), "--out", str(theirs)]) == 2
    assert f"--out {theirs} holds metrics.json, predictions.csv, not from training.evaluate" in one_error_line(capsys)
    assert (theirs / "metrics.json").read_text() == '{"mine": 1}' and (theirs / "predictions.csv").read_text() == "a,b\n"
    ours = tmp_path / "report"
    assert evaluate_main(["--checkpoint", str(run), "--out", str(ours)]) == 0
    assert evaluate_main(["--checkpoint", str(run), "--out", str(ours)]) == 0  # its own report: replaced


def test_an_export_that_fails_its_parity_check_keeps_the_previous_file(run, tmp_path, monkeypatch, capsys):
    """The failed export was written over the earlier, good model.onnx."""
    from training import export as export_module

    out = tmp_path / "model.onnx"
    assert export_module.main(["--checkpoint", str(run), "--out", str(out)]) == 0
    good = out.read_bytes()
    real = export_module.check_parity
    monkeypatch.setattr(export_module, "check_parity", lambda *args, **kwargs: real(*args, **{**kwargs, "tolerance": -1.0}))
    assert export_module.main(["--checkpoint", str(run), "--out", str(out)]) == 1
    assert f"{out} was not written (the previous file is kept): the export failed its parity check" in capsys.readouterr().err
    assert out.read_bytes() == good and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_full_disk_under_torchs_own_writer_says_what_is_kept(tmp_path):
    """torch.save and torch.jit.save report a full disk as a RuntimeError from their C++: a traceback."""
    from gesture_core.checkpoint import CheckpointSaveError, atomic_output

    target = tmp_path / "model.pt"
    target.write_bytes(b"previous")
    with pytest.raises(CheckpointSaveError) as failed, atomic_output(target):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 21760 vs 21712")
    assert str(failed.value) == (f"cannot write {target}: the write stopped short (unexpected pos 21760 vs 21712): is the disk full?; "
                                 "the previous model.pt is kept unchanged and the partial file was removed")
    assert target.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_a_model_onnx_cannot_express_is_one_line_naming_torchscript(dataset, tmp_path, capfd):
    """lenet5 trained off its 32 px: ONNX has no adaptive pooling of that shape, and export printed the exporter's
    traceback, then its whole graph through C++ to the process's stdout (capfd sees the file descriptors)."""
    from training.export import main as export_main

    run = finetune.train(tiny_config(dataset, tmp_path / "run", epochs=1, backbone="lenet5", image_size=40))
    capfd.readouterr()
    assert export_main(["--checkpoint", str(run), "--out", str(tmp_path / "m.onnx")]) == 2
    output = capfd.readouterr()
    assert "graph" not in output.out and output.out.strip() == ""
    assert len(err := output.err.strip().splitlines()) == 1 and err[0].startswith("error: "), err
    assert "lenet5 at 40 px cannot be exported to ONNX (" in err[0] and err[0].endswith("): use --format torchscript")


COMMANDS = {"training.finetune": "--resume", "training.evaluate": "--checkpoint", "training.calibrate": "--checkpoint",
            "training.check": "--json", "training.compare": "--out", "training.export": "--checkpoint", "training.inspect": None,
            "training.prepare": "--root", "training.visualize": "--checkpoint", "service.import_model": None, "service.webcam.demo": "--checkpoint",
            "service.webcam.capture": "--out", "benchmarks.serve": "--checkpoint", "benchmarks.hostile": "--checkpoint",
            "benchmarks.serve_latency": "--checkpoint"}


@pytest.mark.parametrize("module", COMMANDS)
def test_a_mistake_on_the_command_line_is_one_error_line_not_the_usage_block(module, capsys):
    """argparse printed its whole usage first (33 lines for finetune) above the one line that says what is wrong."""
    import importlib

    main = importlib.import_module(module).main
    mistakes = {"--no-such-flag": "error: "}  # unrecognized, or first a required argument missing
    if path_flag := COMMANDS[module]:
        mistakes[path_flag] = f"error: argument {path_flag}: empty path"
    for flag, reason in mistakes.items():
        with pytest.raises(SystemExit) as stop:
            main([flag, ""] if flag == path_flag else [flag])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1 and err.startswith(reason) and "usage:" not in err, err
        if flag == "--no-such-flag":
            assert err.rstrip().endswith(f"; `{python_command()} -m {module.removesuffix('.demo')} --help` lists every option"), err


@pytest.mark.parametrize(("module", "given", "meant"), [("training.finetune", "--epoch", "--epochs"), ("training.finetune", "--imgsz", "--image-size"),
                                                        ("training.evaluate", "--checkpoin", "--checkpoint"), ("service.webcam.demo", "--thresh", "--threshold"),
                                                        # not "--every or --every-th": a help text's words are no flag
                                                        ("service.webcam.capture", "--evry", "--every")])
def test_a_flag_is_spelt_whole_and_a_misspelt_one_is_answered_with_the_closest(module, given, meant, capsys):
    """argparse took --epoch 3 as --epochs 3: a script's shortened flag would stop working, or change meaning, the day
    a flag sharing its start is added. It is refused, and the answer names the flag meant, also where a misspelt
    required flag is reported as missing."""
    import importlib

    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main([given, "3"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1, err
    assert f"unrecognized arguments: {given} 3 (did you mean {meant}?)" in err or f"({given}: did you mean {meant}?)" in err, err


def test_an_output_through_a_folder_not_made_yet_is_taken_as_where_it_lands(tmp_path):
    """run/new/.. is run once new/ is made: finetune --out run/new/.. wrote over the run there, as every
    check asked about a path the operating system called missing."""
    from gesture_core.cli import output_arg

    (tmp_path / "run").mkdir()
    assert output_arg("folder")(str(tmp_path / "run" / "new" / "..")) == (tmp_path / "run").resolve()
    assert output_arg("file", (".json",))(str(tmp_path / "r.json")) == tmp_path / "r.json"  # as typed, where nothing is in between


def test_a_dash_for_standard_output_is_refused_not_made_a_file(tmp_path, monkeypatch):
    """--jsonl - wrote a file named "-" in the current folder."""
    from gesture_core.cli import output_arg

    monkeypatch.chdir(tmp_path)
    with pytest.raises(argparse.ArgumentTypeError, match=r"^- \(standard output\) is not taken here: pass a file name$"):
        output_arg("file", replaces=(".jsonl",))("-")
    assert not (tmp_path / "-").exists()


def test_a_home_folder_path_is_expanded_where_no_shell_did(monkeypatch, tmp_path):
    """--out=~/run made a folder named "~" in the current one."""
    from gesture_core.cli import checkpoint_arg, output_arg

    monkeypatch.setenv("HOME", str(tmp_path))
    assert output_arg("folder")("~/run") == tmp_path / "run"
    (tmp_path / "ck.pt").write_bytes(b"x")
    assert checkpoint_arg("best.pt")("~/ck.pt") == tmp_path / "ck.pt"


def test_the_webcam_and_visualize_say_when_they_show_a_runs_last_pt(run, dataset, tmp_path):
    """Both took last.pt as the model, without a word that its "no gesture" threshold is uncalibrated."""
    import warnings

    from service.webcam.demo import main as webcam_main
    from training.visualize import main as visualize_main

    photo = next((dataset / "fist").iterdir())
    warning = (f"{run / 'last.pt'} is a run's training state (last.pt: epoch 1, the latest, not the best), and its "
               f"\"no gesture\" threshold is not calibrated: the run's model is {run / 'best.pt'}")
    for main, argv in ((webcam_main, ["--source", str(photo), "--headless", "--max-frames", "1"]),
                       (visualize_main, ["--image", str(photo), "--out", str(tmp_path / "vis")])):
        for checkpoint, said in ((run / "last.pt", [warning]), (run, [])):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                assert main(["--checkpoint", str(checkpoint), *argv]) == 0
            assert [str(w.message) for w in caught if "training state" in str(w.message)] == said


def interrupted_while_importing_torch(module: str, signum: int = signal.SIGINT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m MODULE /no/such/folder``, sent Ctrl-C (SIGINT) or ``signum`` once torch's library is loaded, while its
    import goes on (with ``env`` added to the environment)."""
    # As from a terminal: the signal at its default, whatever this test process was left with (a process started with
    # SIGINT ignored, as nohup and `cmd &` in a script do, never sees Ctrl-C, and Python then installs no handler for it).
    process = subprocess.Popen([sys.executable, "-m", module, "/no/such/folder"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, **(env or {})}, preexec_fn=lambda: signal.signal(signum, signal.SIG_DFL))
    maps = f"/proc/{process.pid}/maps"
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        with open(maps) as mapped:
            if "libtorch_cpu" in mapped.read():
                break
        time.sleep(0.002)
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc/PID/maps to know that torch is being imported")
@pytest.mark.parametrize("module", ["training.check", "service.webcam.capture", "benchmarks.hostile"])
def test_ctrl_c_while_a_command_imports_torch_is_one_line_and_exit_130(module):
    """A Ctrl-C in the seconds before main ran printed Python's KeyboardInterrupt traceback through the imports."""
    done = interrupted_while_importing_torch(module)
    assert (done.returncode, done.stderr.strip()) == (130, "interrupted"), done.stderr[-2000:]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc/PID/maps to know that torch is being imported")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_while_a_command_imports_torch_is_one_line_too(signum):
    """They ended the command without a word (the webcam demo imports for seconds before its main runs)."""
    done = interrupted_while_importing_torch("service.webcam", signum)
    assert (done.returncode, done.stderr.strip()) == (128 + signum, "interrupted"), done.stderr[-2000:]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc/PID/maps to know that torch is being imported")
@pytest.mark.parametrize(("local_rank", "said"), [("1", ""), ("0", "interrupted")])
def test_torchruns_other_processes_stopped_while_importing_say_nothing(local_rank, said):
    """When one process of a torchrun job fails (a mistake on the command line), torchrun stops the others with
    SIGTERM; each that was still importing said "interrupted" below the error, where the user interrupted nothing.
    Local rank 0 speaks for its machine, as it does for a mistake on the command line."""
    done = interrupted_while_importing_torch("training.finetune", signal.SIGTERM, env={"TORCHELASTIC_RUN_ID": "test", "LOCAL_RANK": local_rank})
    assert (done.returncode, done.stderr.strip()) == (143, said), done.stderr[-2000:]


@pytest.mark.parametrize(("local_rank", "said"), [("1", ""), ("0", "\ninterrupted\n")])
def test_torchruns_other_processes_interrupted_in_main_say_nothing(monkeypatch, capsys, local_rank, said):
    """The same, once main runs: a process stopped while its model loads (no step of its own has its say)."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("LOCAL_RANK", local_rank)

    @command
    def loading() -> int:
        raise KeyboardInterrupt

    assert loading() == 130
    assert capsys.readouterr().err == said


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_after_a_command_has_finished_ends_it_quietly_with_its_exit_code(tmp_path, signum):
    """A Ctrl-C in the second of teardown after "finished" was a KeyboardInterrupt traceback and exit code -2."""
    script = tmp_path / "finishing.py"
    script.write_text(f"""import os, signal, sys, time
sys.path.insert(0, {str(REPO)!r})
from gesture_core.cli import command

@command
def main() -> int:
    print("finished")
    return 3

if __name__ == "__main__":
    code = main()
    os.kill(os.getpid(), {int(signum)})  # as in the teardown that follows a command's main
    time.sleep(5)
    sys.exit(code)
""")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signum, signal.SIG_DFL))  # as from a terminal (not under nohup)
    assert (done.returncode, done.stdout, done.stderr) == (3, "finished\n", "")


def test_evaluate_on_a_folder_whose_class_is_spelt_otherwise_names_the_models_spelling(run, dataset, tmp_path, capsys):
    """"Fist" against the model's "fist" was refused as an unknown class, with no word that only the case differs."""
    shutil.copytree(dataset, tmp_path / "data")
    (tmp_path / "data" / "fist").rename(tmp_path / "data" / "Fist")
    assert evaluate_main(["--checkpoint", str(run), "--data", str(tmp_path / "data")]) == 2
    assert "has classes the model does not know: Fist (model classes: " in (err := one_error_line(capsys))
    assert err.endswith("; spelt otherwise: 'Fist' is 'fist' in the model (rename the folders)")


def test_a_backbone_without_imagenet_weights_says_what_each_command_takes():
    with pytest.raises(ValueError, match=r"lenet5 has no ImageNet weights: it trains from scratch \(--weights none\), or from a state "):
        build_model("lenet5", 2, "imagenet")


def test_evaluate_on_a_folder_without_some_of_the_models_classes_says_so(run, dataset, tmp_path):
    """Their support-0 rows were the only sign, under a top-1 that measures the other classes alone."""
    import warnings

    shutil.copytree(dataset / "fist", tmp_path / "data" / "fist")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert evaluate_main(["--checkpoint", str(run), "--data", str(tmp_path / "data"), "--workers", "0", "--out", str(tmp_path / "eval")]) == 0
    absent = sorted(set(json.loads((run / "metrics.json").read_text())["classes"]) - {"fist"})
    said = [str(w.message) for w in caught if "has no images of the model's class(es)" in str(w.message)]
    assert said == [f"{tmp_path / 'data'} has no images of the model's class(es) {', '.join(absent)}: their rows show support 0, and top-1 "
                    "measures the other classes alone"], said


@pytest.mark.parametrize("module", ["training.finetune", "training.evaluate", "training.visualize", "training.compare"])
def test_an_out_folder_that_cannot_be_written_is_refused_at_the_command_line(module, capsys):
    """/proc takes no new folder, even from root (as the tests run). evaluate made its report folder after the
    whole evaluation, and then said only "/proc/x: No such file or directory"."""
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as stop:
        main(["--out", "/proc/x/report"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err == "error: argument --out: /proc/x/report: cannot write there: No such file or directory\n", err


def test_a_command_to_paste_names_the_python_the_user_ran(tmp_path, monkeypatch):
    """"continue with: python -m training.finetune --resume ..." after `.venv/bin/python -m training.finetune`
    ran another Python, one without torch (ModuleNotFoundError)."""
    venv_python = tmp_path / "project" / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.symlink_to(sys.executable)
    monkeypatch.setattr(sys, "executable", str(venv_python))
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.chdir(tmp_path / "project")
    assert python_command() == ".venv/bin/python"  # as the README has it
    monkeypatch.chdir(tmp_path)
    assert python_command() == "project/.venv/bin/python"
    monkeypatch.chdir("/")
    assert python_command() == str(venv_python)[1:]  # relative to /
    elsewhere = tmp_path / "my dir" / "python"
    monkeypatch.setattr(sys, "executable", str(elsewhere))
    monkeypatch.chdir(tmp_path / "project")
    assert python_command() == shlex.quote(str(elsewhere))  # quoted, to paste
    monkeypatch.setenv("PATH", str(venv_python.parent))  # an activated venv: its python is the one on PATH
    monkeypatch.setattr(sys, "executable", str(venv_python))
    assert python_command() == "python"


def test_a_locale_that_is_not_utf8_is_named_with_its_fix(tmp_path):
    """Under a locale whose encoding is not UTF-8 (and no UTF-8 mode), Python reads file names in that encoding:
    a class folder "ñ" trained as a class "Ã±" under Latin-1 without a word, and under ASCII a folder "é" failed as
    "'ascii' codec can't encode character '\\xe9' in position 19: ordinal not in range(128)"."""
    data = make_image_folder(tmp_path / "données", classes=("gauche", "droite"), per_class=2)
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    done = subprocess.run([sys.executable, "-m", "training.check", str(data)], cwd=REPO, env=env, capture_output=True, timeout=300)
    lines = done.stderr.decode("ascii", "backslashreplace").splitlines()
    fix = "this Python reads and writes file names and text as ascii (its locale's encoding), not UTF-8"
    assert done.returncode == 2 and len(lines) == 2, lines
    assert lines[0].startswith(f"warning: {fix}") and lines[1].startswith(f"error: a name or text holds '\\xe9': {fix}"), lines
    assert lines[1].endswith("run it with PYTHONUTF8=1, or in a UTF-8 locale (LANG=C.UTF-8)"), lines


def test_a_default_output_folder_that_cannot_be_written_names_out(run, dataset, tmp_path, monkeypatch, capsys):
    """Where no --out was given, a folder that cannot be written was said only when the first file was: finetune's
    runs/ after the dataset's scan (`error: runs: Read-only file system`), evaluate's report after the whole
    evaluation, and neither named the flag that writes elsewhere."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("")  # where the runs folder would go (a file: no folder can be made there, even as root)
    assert finetune.main(["--data", str(dataset), "--epochs", "1"]) == 2
    assert one_error_line(capsys) == (f"error: the run folder runs/{dataset.name}-efficientnet_lite0: cannot write there: Not a directory; "
                                      "pass --out to write elsewhere")  # fmt: skip
    locked = tmp_path / "locked"
    shutil.copytree(run, locked)
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here: no folder is unwritable to root")
    try:
        assert evaluate_main(["--checkpoint", str(locked), "--workers", "0"]) == 2
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert one_error_line(capsys) == (f"error: the report goes by default in the run's folder {locked}: cannot write there: "
                                      "Operation not permitted; pass --out to write elsewhere")  # fmt: skip
