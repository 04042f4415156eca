"""The fine-tuning command end to end: artefacts, reports, resume, evaluation, refusal of bad input."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import struct
import sys
import urllib.error
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import training.finetune as finetune
from gesture_core import load_classifier
from gesture_core.classifier import Classifier
from gesture_core.cli import OutOfMemory, python_command
from tests.helpers import (
    a_run_training_in,
    count_calls,
    make_image_folder,
    train_interrupted_in_epoch,
    train_interrupted_in_epoch_2,
)
from tests.test_data import add_bad_files
from tests.test_docs_commands import parse_errors, project_invocation
from training.config import TrainConfig
from training.data import Splits
from training.evaluate import main as evaluate_main

ARTEFACTS = ["best.pt", "last.pt", "config.json", "split.json", "history.csv", "metrics.json", "curves.png", "confusion_matrix.png", "open_set.png"]


def tiny_config(data, out, **overrides) -> TrainConfig:
    """mobilenet_v3 at 32 px: BatchNorm and dropout included, seconds per epoch."""
    base = dict(backbone="mobilenet_v3_large", data=str(data), out=str(out), weights="none", epochs=2, batch_size=8,
                image_size=32, workers=0, lr=3e-3, warmup_epochs=0.5, val_split=0.2, test_split=0.2, seed=1)
    return TrainConfig(**{**base, **overrides})


@pytest.fixture
def dataset(tmp_path):
    return make_image_folder(tmp_path / "gestures", per_class=10, size=48)


def test_run_folder_has_every_artefact_and_a_complete_report(dataset, tmp_path, capsys):
    add_bad_files(dataset)
    out = finetune.train(tiny_config(dataset, tmp_path / "run"))
    said = capsys.readouterr().out.split("\nnext:\n")[1].splitlines()  # what to run with the model, this run's, to paste
    commands = [project_invocation(shlex.split(line, comments=True)) for line in said]
    assert [module for module, _ in commands] == ["training.evaluate", "service.webcam", "service.import_model"]
    for module, argv in commands:
        assert str(out) in argv and parse_errors(module, argv) is None, (module, argv)
    assert all((out / name).exists() for name in ARTEFACTS)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backbone"] == "mobilenet_v3_large" and metrics["classes"] == ["fist", "palm", "peace"]
    assert 1 <= metrics["best_epoch"] <= 2
    test = metrics["test"]
    assert 0.0 <= test["top1"] <= 1.0 and test["top5"] == 1.0  # 3 classes: top-5 covers all
    assert set(test["per_class"]["fist"]) == {"precision", "recall", "f1", "support"}
    assert sum(map(sum, test["confusion_matrix"])) == test["n"] == 6
    assert len(metrics["skipped"]) == 4
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    classifier = load_classifier(out / "best.pt", device="cpu")
    assert classifier.data_config.input_size == 32 and classifier.metrics["test"]["top1"] == test["top1"]


@pytest.mark.parametrize(("ema_decay", "workers"), [(0.0, 0), (0.9, 0), (0.0, 1)])
def test_resume_after_interruption_gives_the_same_next_epoch(dataset, tmp_path, monkeypatch, capsys, ema_decay, workers):
    """With loading workers too: a loader's iterator drew its workers' seed from the global RNG, once per process
    with persistent workers, so a resumed run's first epoch drew once more than the same epoch uninterrupted,
    and its dropout differed."""
    reference = finetune.train(tiny_config(dataset, tmp_path / "a", epochs=3, ema_decay=ema_decay, workers=workers))
    assert train_interrupted_in_epoch_2(tiny_config(dataset, tmp_path / "b", epochs=3, ema_decay=ema_decay, workers=workers), monkeypatch) == 130
    interrupted = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert interrupted["epoch"] == 1
    capsys.readouterr()

    cfg, resume = finetune.parse_config(["--resume", str(tmp_path / "b" / "last.pt")])
    epochs_trained = count_calls(monkeypatch, finetune, "train_one_epoch")
    resumed = finetune.train(cfg, resume)
    # A resume that ignored last.pt would retrain from epoch 1 and, seeded, reach the same weights:
    # what tells them apart is that only the two missing epochs run, after the interrupted run's own first one.
    assert len(epochs_trained) == 2
    assert f"resuming {tmp_path / 'b' / 'last.pt'} after epoch 1" in capsys.readouterr().out
    history_a = list(csv.DictReader((reference / "history.csv").open()))
    history_b = list(csv.DictReader((resumed / "history.csv").open()))
    assert history_b[0] == {key: str(value) for key, value in interrupted["history"][0].items()}  # its own row, timings included
    for a, b in zip(history_a, history_b, strict=True):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), abs=1e-5)
        assert a["val_top1"] == b["val_top1"]
    last_a, last_b = (torch.load(run / "last.pt", weights_only=True) for run in (reference, resumed))
    for state_a, state_b in [(last_a["model"], last_b["model"])] + ([(last_a["ema"]["model"], last_b["ema"]["model"])] if ema_decay else []):
        for key in state_a:
            torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=1e-5)


@pytest.mark.parametrize(("signum", "workers"), [(signal.SIGTERM, 2), (signal.SIGHUP, 0)])
def test_sigterm_stops_a_run_as_ctrl_c_does_with_the_resume_command_and_exit_143(dataset, tmp_path, monkeypatch, signum, workers):
    """SIGTERM (what timeout, kill and job schedulers send) ended a run at once: no line, no resume command; so did
    SIGHUP (the terminal closed), whose exit code is 129. Sent to the process group, as timeout and systemd send it:
    the data-loading workers died of it first, and the run said "DataLoader worker killed by signal: Terminated: most
    likely out of memory", exit code 2, or a traceback."""
    import subprocess

    from tests.helpers import REPO

    command = [sys.executable, "-m", "training.finetune", "--data", str(dataset), "--backbone", "lenet5", "--weights", "none",
               "--epochs", "500", "--workers", str(workers), "--out", str(tmp_path / "run")]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signum, signal.SIG_DFL))  # as from a terminal, not under nohup
    for line in process.stdout:
        if line.startswith("epoch   2/"):  # last.pt holds epoch 1 or 2, whichever the signal finds
            break
    os.killpg(process.pid, signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err[-2000:]
    assert "Traceback" not in err and "killed by signal" not in err, err[-2000:]
    monkeypatch.chdir(REPO)  # the command's folder: .venv/bin/python, where the suite runs from the repository's venv
    assert err.strip().splitlines()[-1] == f"interrupted; continue with: {python_command()} -m training.finetune --resume {tmp_path / 'run' / 'last.pt'}"
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_a_run_stopped_while_it_reports_is_not_finished_and_its_resume_writes_the_whole_report(dataset, tmp_path, monkeypatch, capsys):
    """metrics.json, which marks a run finished, was written before the plots: a run stopped between them was
    refused as finished, its curves.png missing for good."""
    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "plot_curves", stopped)
    with pytest.raises(SystemExit) as stop:
        finetune.train(tiny_config(dataset, tmp_path / "run", epochs=1))
    assert stop.value.code == 130 and not (tmp_path / "run" / "metrics.json").exists()
    assert f"interrupted; continue with: {python_command()} -m training.finetune --resume {tmp_path / 'run' / 'last.pt'}" in capsys.readouterr().err
    monkeypatch.undo()
    finetune.train(*finetune.parse_config(["--resume", str(tmp_path / "run")]))
    assert (tmp_path / "run" / "metrics.json").is_file() and (tmp_path / "run" / "curves.png").is_file()


def test_a_run_trained_further_keeps_no_report_of_its_earlier_model(dataset, tmp_path, monkeypatch, capsys):
    """--resume --epochs 2 of a finished run, stopped while it reported: best.pt was the new model, tested and
    calibrated, and metrics.json and the plots still told of the earlier one."""
    run = finetune.train(tiny_config(dataset, tmp_path / "run", epochs=1))
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 1

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "plot_mistakes", stopped)
    with pytest.raises(SystemExit):
        finetune.train(*finetune.parse_config(["--resume", str(run), "--epochs", "2"]))
    assert "the earlier report (metrics.json, confusion_matrix.png, test_mistakes.png, open_set.png) is removed" in capsys.readouterr().out
    assert not [name for name in ("metrics.json", "confusion_matrix.png", "test_mistakes.png") if (run / name).exists()]  # open_set.png: the new model's
    monkeypatch.undo()
    finetune.train(*finetune.parse_config(["--resume", str(run)]))  # not finished: it continues without --epochs
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 2
    assert all((run / name).is_file() for name in finetune.RUN_REPORT_FILES)


def test_ema_weights_are_what_is_validated_kept_and_tested(dataset, tmp_path, monkeypatch):
    validated = []  # validating the live weights while keeping the average passed this test (a mutation)
    real_evaluate = finetune.evaluate_split
    monkeypatch.setattr(finetune, "evaluate_split", lambda run, *a, **k: validated.append((a[2], (a[3:] or [k.get("model")])[0], run.model)) or real_evaluate(run, *a, **k))
    out = finetune.train(tiny_config(dataset, tmp_path / "ema", epochs=1, ema_decay=0.9))
    assert [name for name, _, _ in validated] == ["val"] and all(model is not None and model is not live for _, model, live in validated)
    best, last = (torch.load(out / name, weights_only=True) for name in ("best.pt", "last.pt"))
    assert last["ema"]["updates"] == 2  # one update per step: 18 training images, batches of 8, partial batch dropped
    for key, value in best["model"].items():
        torch.testing.assert_close(value, last["ema"]["model"][key], rtol=0, atol=0)
    assert any(not torch.equal(value, last["model"][key]) for key, value in best["model"].items())
    classifier = load_classifier(out / "best.pt", device="cpu")
    assert classifier.metrics["test"]["top1"] == json.loads((out / "metrics.json").read_text())["test"]["top1"]


def weights_around_each_epoch(monkeypatch) -> list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """(state before, state after) of the model for every epoch that training.finetune trains."""
    real_epoch, epochs = finetune.train_one_epoch, []
    copy = lambda model: {k: v.detach().clone() for k, v in model.state_dict().items()}  # noqa: E731

    def recorded(model, *args, **kwargs):
        before = copy(model)
        result = real_epoch(model, *args, **kwargs)
        epochs.append((before, copy(model)))
        return result

    monkeypatch.setattr(finetune, "train_one_epoch", recorded)
    return epochs


def head_keys(name: str) -> set[str]:
    """State-dict keys of the classifier heads (what a frozen backbone still trains)."""
    from gesture_core.backbones import build_model, get_backbone, head_modules

    model, backbone = build_model(name, 3, "none"), get_backbone(name)
    names = {id(m): n for n, m in model.named_modules()}
    return {f"{names[id(head)]}.{key}" for head in head_modules(model, backbone) for key in head.state_dict()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], keys) -> list[str]:
    return sorted(k for k in keys if not torch.equal(before[k], after[k]))


def test_staged_run_freezes_the_backbone_first(dataset, tmp_path, monkeypatch):
    epochs = weights_around_each_epoch(monkeypatch)
    out = finetune.train(tiny_config(dataset, tmp_path / "staged", epochs=2, head_epochs=1))
    head = head_keys("mobilenet_v3_large")
    (first_before, first_after), (second_before, second_after) = epochs
    backbone = set(first_before) - head
    assert changed(first_before, first_after, backbone) == []  # weights and BatchNorm statistics alike
    assert changed(first_before, first_after, head) == sorted(head)
    assert len(changed(second_before, second_after, backbone)) > len(backbone) // 2
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [r["frozen_backbone"] for r in rows] == ["True", "False"]


def test_linear_probe_leaves_backbone_weights_untouched(dataset, tmp_path, monkeypatch):
    torch.manual_seed(0)
    from gesture_core import build_model

    init = tmp_path / "init.pth"
    torch.save(build_model("mobilenet_v3_large", 1000, "none").state_dict(), init)
    epochs = weights_around_each_epoch(monkeypatch)
    out = finetune.train(tiny_config(dataset, tmp_path / "probe", weights=str(init), freeze="backbone", epochs=1))
    before = torch.load(init, weights_only=True)
    after = torch.load(out / "last.pt", weights_only=True)["model"]
    head = head_keys("mobilenet_v3_large")
    backbone = set(after) - head
    assert changed(before, after, backbone) == []  # the file's weights, loaded and kept, BatchNorm statistics too
    ((epoch_before, epoch_after),) = epochs
    assert changed(epoch_before, epoch_after, head) == sorted(head)  # while the head trained


def test_evaluate_reproduces_the_run_test_metrics(dataset, tmp_path, monkeypatch):
    """... and its predictions.csv, metrics and "no gesture" report come from one read of each image through the
    Classifier: the "no gesture" report and predictions.csv were a second pass, through the feature cache's engine."""
    import training.data

    out = finetune.train(tiny_config(dataset, tmp_path / "run", epochs=1))
    real_decode, decoded = training.data.decode_file, []
    monkeypatch.setattr(training.data, "decode_file", lambda path, *a: decoded.append(path) or real_decode(path, *a))
    assert evaluate_main(["--checkpoint", str(out / "best.pt"), "--workers", "0", "--out", str(tmp_path / "ev")]) == 0
    monkeypatch.undo()
    test_paths = [str(Path(dataset) / rel) for rel, _ in json.loads((out / "split.json").read_text())["test"]]
    assert sorted(decoded) == sorted(test_paths)  # each once
    classifier = load_classifier(out / "best.pt", device="cpu", engine="torch")
    rows = list(csv.DictReader((tmp_path / "ev" / "predictions.csv").open(newline="")))
    assert sorted(row["path"] for row in rows) == sorted(test_paths)
    for row in rows:  # the Classifier's own answer for each image, as the service gives it
        said = classifier.predict(row["path"], k=1)
        assert (row["label"], row["top_class"]) == (said.label or "", said.top_k[0][0])
        assert float(row["score"]) == pytest.approx(said.score, abs=2e-6)
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())["test"]
    original = json.loads((out / "metrics.json").read_text())["test"]
    assert again["top1"] == original["top1"] and again["confusion_matrix"] == original["confusion_matrix"]
    assert (tmp_path / "ev" / "confusion_matrix.png").exists()
    # the test mistakes, most confident first: the same list from the run and from evaluate, matching the matrix
    mistakes = json.loads((out / "metrics.json").read_text())["test_mistakes"]
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["test_mistakes"] == mistakes
    cm = original["confusion_matrix"]
    assert len(mistakes) == original["n"] - sum(cm[i][i] for i in range(len(cm))) > 0  # an untrained 1-epoch model errs
    classes = ["fist", "palm", "peace"]
    assert sorted((classes.index(m["true"]), classes.index(m["predicted"])) for m in mistakes) == sorted(
        (i, j) for i, row in enumerate(cm) for j, count in enumerate(row) if i != j for _ in range(count))
    assert [m["probability"] for m in mistakes] == sorted((m["probability"] for m in mistakes), reverse=True)
    assert all(Path(m["path"]).parent.name == m["true"] for m in mistakes)
    assert (out / "test_mistakes.png").exists() and (tmp_path / "ev" / "test_mistakes.png").exists()
    assert "test_mistakes" not in load_classifier(out / "best.pt", device="cpu").metrics  # file paths stay out of the model


def test_top_mistakes_puts_the_most_confident_first_at_the_calibrated_temperature():
    from types import SimpleNamespace

    from gesture_core.rejection import Rejection
    from training.data import Sample
    from training.report import MISTAKES_LISTED, top_mistakes

    logits = np.array([[0.0, 3.0], [1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [5.0, 0.0]], np.float32)
    outputs = SimpleNamespace(logits=logits, targets=np.array([0, 0, 0, 0, 1]), index=np.array([4, 3, 2, 1, 0]))
    samples = [Sample(f"img{i}.jpg", 0) for i in range(5)]
    mistakes = top_mistakes(samples, outputs, ["a", "b"], Rejection(temperature=2.0))
    assert [m["path"] for m in mistakes] == ["img0.jpg", "img4.jpg", "img1.jpg", "img2.jpg"]  # rows 4, 0, 3, 2 by confidence
    assert mistakes[1] == {"path": "img4.jpg", "true": "a", "predicted": "b", "probability": round(float(1 / (1 + np.exp(-1.5))), 4)}
    many = SimpleNamespace(logits=np.tile([[0.0, 1.0]], (MISTAKES_LISTED + 5, 1)), targets=np.zeros(MISTAKES_LISTED + 5, int),
                           index=np.arange(MISTAKES_LISTED + 5))
    assert len(top_mistakes([Sample("x.jpg", 0)] * (MISTAKES_LISTED + 5), many, ["a", "b"], Rejection())) == MISTAKES_LISTED


def test_metrics_json_keeps_a_confusion_matrix_row_on_a_line(tmp_path):
    """A number per line made two 2,000-class matrices a metrics.json of 88 MB; it reads back the same."""
    from training.report import write_json

    n = 300
    cm = np.random.default_rng(0).integers(0, 50, (n, n)).tolist()
    metrics = {"test": {"top1": 0.5, "confusion_matrix": cm, "per_class": {"fist": {"recall": 1.0}}, "skipped": []},
               "skipped": [{"path": "a.jpg", "reason": "truncated"}], "classes": ["fist", "palm"], "empty": {}}
    write_json(tmp_path / "metrics.json", metrics)
    text = (tmp_path / "metrics.json").read_text()
    assert json.loads(text) == metrics
    assert len(text.splitlines()) < 2 * n and len(text) < len(json.dumps(metrics, indent=2)) / 3
    assert '\n        "recall": 1.0\n' in text and '\n  "classes": ["fist", "palm"],\n' in text  # indented as before, but for lists of numbers or names


def test_frames_with_no_hand_are_mistakes_unless_they_are_no_gesture_and_come_last():
    from training.report import rank_mistakes

    probs = np.array([[0.1, 0.9, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.6, 0.4, 0.0], [0.0, 0.2, 0.8]], np.float32)
    targets, no_hand = np.array([0, 1, 2, 1, 2]), np.array([False, True, True, False, False])
    mistakes = rank_mistakes([f"f{i}.jpg" for i in range(5)], probs, targets, ["a", "b", "nothing"], no_hand, no_hand_class=2)
    assert [(m["path"], m["predicted"], m["probability"]) for m in mistakes] == [
        ("f0.jpg", "b", 0.9), ("f3.jpg", "a", 0.6), ("f1.jpg", "no hand found", 0.0)]  # f2: no hand in a "nothing" frame is right
    without = rank_mistakes([f"f{i}.jpg" for i in range(5)], probs, targets, ["a", "b", "nothing"], no_hand, no_hand_class=None)
    assert [m["path"] for m in without] == ["f0.jpg", "f3.jpg", "f1.jpg", "f2.jpg"]  # a model with no "no gesture" class: each a miss


def test_the_run_tests_best_pt_as_served_whatever_the_training_precision(dataset, tmp_path, monkeypatch):
    """The reported test figures are the fp32 Classifier's answers on the saved best.pt, not the
    training model's (bf16 autocast here): what the run reports is what the service gives. The test
    split goes through the Classifier once, for both the metrics and the "no gesture" report."""
    served = []
    real = Classifier.logits_and_features
    monkeypatch.setattr(Classifier, "logits_and_features", lambda self, batch: served.append((self.engine.precision, len(batch))) or real(self, batch))
    out = finetune.train(tiny_config(dataset, tmp_path / "run", epochs=1, amp="on"))
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    assert {precision for precision, _ in served} == {"fp32"}
    assert sum(n for _, n in served) == test["n"] == metrics["open_set"]["test"]["n"] > 0  # every test image, once
    assert evaluate_main(["--checkpoint", str(out / "best.pt"), "--workers", "0", "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["test"] == test  # Classifier.classify agrees


def test_train_size_trains_smaller_and_keeps_the_served_size_everywhere_else(dataset, tmp_path, capsys):
    """--train-size: training batches at that size; validation, the test, the checkpoint and so the
    service at --image-size; `evaluate` on the checkpoint reproduces the run's test."""
    cfg = tiny_config(dataset, tmp_path / "run", epochs=1, image_size=40, train_size=32)
    train_loader, _, val_loader = finetune.make_loaders(finetune.prepare_run(cfg, None))
    assert next(iter(train_loader))[0].shape[-2:] == (32, 32)
    assert next(iter(val_loader))[0].shape[-2:] == (40, 40)
    out = finetune.train(cfg)
    assert "trains at 32 px, validates, tests and serves at 40 px" in capsys.readouterr().out
    classifier = load_classifier(out / "best.pt", device="cpu")
    assert classifier.data_config.input_size == 40 and classifier.train_config["train_size"] == 32
    assert evaluate_main(["--checkpoint", str(out / "best.pt"), "--workers", "0", "--out", str(tmp_path / "ev")]) == 0
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())["test"]
    assert again["confusion_matrix"] == json.loads((out / "metrics.json").read_text())["test"]["confusion_matrix"]


def test_evaluate_on_a_whole_folder(dataset, tmp_path):
    out = finetune.train(tiny_config(dataset, tmp_path / "run", epochs=1))
    assert evaluate_main(["--checkpoint", str(out / "best.pt"), "--data", str(dataset), "--workers", "0"]) == 0
    report = json.loads((out / "eval-gestures" / "metrics.json").read_text())
    assert report["test"]["n"] == 30


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--backbone", "resnet9000"], "unknown backbone 'resnet9000'; did you mean resnet50 or resnet101 or resnet34?"),
        (["--backbone", "efficientnet-lite"], "did you mean efficientnet_lite0 or efficientnet_lite1 or efficientnet_lite2? choose one of"),
        (["--epochs", "0"], "must be >= 1"),
        (["--val-split", "1.5"], "must be in"),
        (["--lr", "-1"], "must be in"),
        (["--weights", "/no/such/file.pth"], "choose imagenet, none"),
        (["--weights", "/tmp"], "argument --weights: /tmp is a folder: pass a state-dict file"),
        (["--image-size", "8"], "must be in [32, 1024], got 8"),
        (["--train-size", "8"], "must be in [32, 1024], got 8"),
        (["--image-size", "100000"], "must be in [32, 1024], got 100000"),
        (["--seed", "-1"], "argument --seed: must be in [0, 4294967295], got -1"),  # NumPy refused it mid-run
        (["--seed", "99999999999999999999"], "argument --seed: must be in [0, 4294967295]"),
        (["--workers", "99999"], "argument --workers: must be in [0, "),  # the processes exhausted the memory  # asked OpenCV for 30 GB, and died with a traceback
        (["--device", "tpu"], "invalid choice"),
        (["--val-split", "0.5", "--test-split", "0.6"], "--val-split 0.5 and --test-split 0.6 leave no training images"),
    ],
)
def test_out_of_range_flags_are_refused_at_parsing(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        finetune.parse_config(["--data", str(tmp_path), *argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    if "--backbone" in argv:
        assert "efficientnet_lite0" in err and "vgg16_bn" in err


def test_untrainable_folder_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    root = make_image_folder(tmp_path / "one", classes=("fist",), per_class=3)
    assert finetune.main(["--data", str(root), "--weights", "none", "--out", str(tmp_path / "r")]) == 2
    assert "only one class" in capsys.readouterr().err


def test_offline_imagenet_weights_are_a_clear_error(dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline")))
    code = finetune.main(["--data", str(dataset), "--backbone", "resnet18", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "resnet18-f37072fd.pth" in err and "Traceback" not in err


@pytest.mark.slow
def test_efficientnet_lite0_fine_tune_on_sign_digits_reaches_95_percent(sign_digits_run):
    metrics = json.loads((sign_digits_run / "metrics.json").read_text())
    assert metrics["backbone"] == "efficientnet_lite0"
    assert metrics["test"]["n"] >= 400  # the seeded 20% split of 2062 images
    assert metrics["test"]["top1"] >= 0.95


# --- options run for real: tiny data, 32 px, seconds each ------------------------------------------


def cli_args(data, out, *extra: str) -> list[str]:
    """The command line of tiny_config."""
    return ["--data", str(data), "--out", str(out), "--backbone", "mobilenet_v3_large", "--weights", "none",
            "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--val-split", "0.2",
            "--test-split", "0.2", "--seed", "1", *extra]  # fmt: skip


def test_patience_stops_after_that_many_epochs_without_improvement(dataset, tmp_path, capsys, monkeypatch):
    """Validation scores are scripted (the real evaluation runs, then its top-1 is replaced), so the
    epoch at which patience runs out does not depend on how a tiny model happens to learn."""
    scripted_top1 = iter([0.5, 0.6, 0.55, 0.9, 0.9])  # improves at epoch 2, not at epoch 3: stop there
    real_evaluate = finetune.evaluate_split

    def scripted(run, loader, samples, name, model=None):
        metrics, loss, failed = real_evaluate(run, loader, samples, name, model)
        return ({**metrics, "top1": next(scripted_top1)} if name == "val" else metrics), 1.0, failed

    monkeypatch.setattr(finetune, "evaluate_split", scripted)
    out = finetune.train(tiny_config(dataset, tmp_path / "run", epochs=5, patience=1))
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [float(r["val_top1"]) for r in rows] == [0.5, 0.6, 0.55]  # stopped right after the first epoch without improvement
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 3
    assert "early stopping: val top-1 has not improved for 1 epochs" in capsys.readouterr().out


def test_sgd_run_steps_with_nesterov_momentum(dataset, tmp_path):
    assert finetune.main(cli_args(dataset, tmp_path / "run", "--opt", "sgd", "--momentum", "0.8")) == 0
    optimizer = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["optimizer"]
    assert [(g["momentum"], g["nesterov"]) for g in optimizer["param_groups"]] == [(0.8, True)] * 2
    assert {key for state in optimizer["state"].values() for key in state} == {"momentum_buffer"}  # AdamW keeps exp_avg


def test_class_weights_are_the_inverse_class_frequencies_and_change_the_loss(tmp_path, monkeypatch):
    data = make_image_folder(tmp_path / "imbalanced", classes=("fist", "palm"), per_class=5, size=48)
    make_image_folder(tmp_path / "more", classes=("fist",), per_class=15, size=48)
    for i, path in enumerate(sorted((tmp_path / "more" / "fist").iterdir())):
        path.rename(data / "fist" / f"extra{i}.png")
    epochs = count_calls(monkeypatch, finetune, "train_one_epoch")
    assert finetune.main(cli_args(data, tmp_path / "weighted", "--class-weights")) == 0
    assert finetune.main(cli_args(data, tmp_path / "plain")) == 0
    counts = np.bincount([label for _, label in json.loads((tmp_path / "weighted" / "split.json").read_text())["train"]])
    (_, weighted), (_, plain) = epochs
    assert plain["class_weights"] is None
    np.testing.assert_allclose(weighted["class_weights"].numpy(), counts.sum() / (2 * counts), rtol=1e-6)
    assert counts[0] > counts[1] and weighted["class_weights"][0] < weighted["class_weights"][1]
    losses = [float(next(csv.DictReader((tmp_path / run / "history.csv").open()))["train_loss"]) for run in ("weighted", "plain")]
    assert losses[0] != losses[1]


def watch_training_dtypes(monkeypatch) -> set[torch.dtype]:
    """The dtypes of the model's outputs in every training step of the runs that follow."""
    real_epoch, dtypes = finetune.train_one_epoch, set()

    def watched(model, *args, **kwargs):
        hook = model.register_forward_hook(lambda module, inputs, output: dtypes.add(output.dtype))
        try:
            return real_epoch(model, *args, **kwargs)
        finally:
            hook.remove()

    monkeypatch.setattr(finetune, "train_one_epoch", watched)
    return dtypes


def test_cpu_amp_trains_in_bfloat16(dataset, tmp_path, monkeypatch, capsys):
    dtypes = watch_training_dtypes(monkeypatch)
    assert finetune.main(cli_args(dataset, tmp_path / "run", "--device", "cpu", "--amp", "on")) == 0
    assert dtypes == {torch.bfloat16}
    assert "device cpu (AMP)" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]["n"] == 6


def test_amp_auto_trains_a_depthwise_backbone_in_fp32_on_an_amx_cpu(dataset, tmp_path, monkeypatch, capsys):
    """The run passes its backbone to --amp auto: mobilenet_v3_large (tiny_config's) on a CPU whose
    flags list amx_bf16 trains in fp32 and says why at start-up."""
    import training.loop

    monkeypatch.setattr(training.loop, "cpu_flags", lambda cpuinfo=None: {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    dtypes = watch_training_dtypes(monkeypatch)
    assert finetune.main(cli_args(dataset, tmp_path / "run", "--device", "cpu", "--amp", "auto")) == 0
    assert dtypes == {torch.float32}
    assert "mixed precision off: fp32 (--amp auto: mobilenet_v3_large is built of depthwise" in capsys.readouterr().out


def corrupt_png(path) -> str:
    """A PNG whose header is valid (so the up-front scan keeps it) and whose pixel data is not; each file's bytes
    its own (its name in them), as identical files would be kept in one split (training.duplicates)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 48, 48, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"not zlib data" * 20 + str(path).encode()) + chunk(b"IEND", b""))
    return str(path)


def test_files_that_fail_to_decode_during_training_are_listed_in_metrics(dataset, tmp_path):
    corrupt = {corrupt_png(dataset / cls / f"corrupt{i}.png") for cls in ("fist", "palm", "peace") for i in range(2)}
    out = finetune.train(tiny_config(dataset, tmp_path / "run", epochs=1))
    split = json.loads((out / "split.json").read_text())
    in_train = {str(dataset / rel) for rel, _ in split["train"]} & corrupt
    assert in_train  # the seeded split puts some in train, where the loss must ignore them
    assert not corrupt & {s["path"] for s in split["skipped"]}  # the up-front scan passed them...
    metrics = json.loads((out / "metrics.json").read_text())
    listed = {s["path"]: s["reason"] for s in metrics["skipped"]}
    assert corrupt <= set(listed) and all(listed[path] for path in corrupt)  # ...training found and reported them
    held_out = sum(str(dataset / rel) in corrupt for rel, _ in split["test"])
    assert metrics["test"]["n"] == len(split["test"]) - held_out
    assert np.isfinite(float(next(csv.DictReader((out / "history.csv").open()))["train_loss"]))


def test_a_corrupt_file_in_the_partial_batch_left_out_is_reported_too(dataset, tmp_path):
    """A one-epoch run leaves out its last partial batch: a corrupt file there was never decoded, and the run
    said nothing of it."""
    from training.data import load_splits
    from training.distributed import ShardedSeededSampler

    cfg = tiny_config(dataset, tmp_path / "run", epochs=1)
    train = load_splits(dataset, val_split=cfg.val_split, test_split=cfg.test_split, test_per_class=cfg.test_per_class, seed=cfg.seed, group_by=cfg.group_by).train
    left_out = [train[i].path for i in set(range(len(train))) - ShardedSeededSampler(len(train), cfg.seed).drawn([0], cfg.batch_size)]
    assert left_out  # 18 training images in batches of 8
    corrupt_png(Path(left_out[0]))  # same name, so the same split
    out = finetune.train(cfg)
    skipped = {s["path"]: s["reason"] for s in json.loads((out / "metrics.json").read_text())["skipped"]}
    assert set(skipped) == {left_out[0]} and skipped[left_out[0]]  # with its reason; the sound ones left out are not listed


def test_a_run_that_diverges_stops_with_one_line_and_keeps_the_epochs_before(dataset, tmp_path, capsys):
    """--lr 1e30: the weights went NaN, and the run saved that model as best.pt, calibrated and tested it, and
    exited 0 with "finished"; the only hint was a NumPy warning."""
    from training.loop import EpochResult

    out = tmp_path / "run"
    assert finetune.main(["--data", str(dataset), "--out", str(out), "--backbone", "resnet18", "--weights", "none", "--epochs", "2",
                          "--image-size", "32", "--workers", "0", "--lr", "1e30"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: training diverged in epoch 1: ") and "start again with a lower --lr" in err[0]
    assert not (out / "best.pt").exists() and not (out / "metrics.json").exists()
    # after a good epoch: that epoch is kept, and the next one's broken weights are not saved over it
    run = finetune.prepare_run(tiny_config(dataset, tmp_path / "run2", epochs=2), None)
    finite = EpochResult(1.0, 0.5, 8, 0.1, [])
    finetune.check_not_diverged(run, 1, finite, ({"n": 3}, 1.2, []))  # a sound epoch passes
    finetune.check_not_diverged(run, 1, finite, ({"n": 0}, float("nan"), []))  # no validation image: not this check's to say
    next(run.model.parameters()).data[0] = float("inf")
    with pytest.raises(ValueError, match=r"diverged in epoch 2: the weights became NaN or infinite .* last.pt and best.pt keep the epochs before it"):
        finetune.check_not_diverged(run, 1, finite, ({"n": 3}, 1.2, []))


def test_settings_that_cannot_do_what_they_say_are_named(dataset, tmp_path, capsys):
    """--freeze backbone with --head-epochs, --patience with no validation image and a warmup as long as the run were
    taken in silence (the first stored in config.json as if it meant something)."""
    with pytest.raises(SystemExit) as stop:
        finetune.parse_config(["--data", str(dataset), "--freeze", "backbone", "--head-epochs", "2"])
    assert stop.value.code == 2
    assert "--head-epochs 2 trains the head alone before the whole model, and --freeze backbone" in capsys.readouterr().err
    with pytest.warns(UserWarning) as said:
        finetune.prepare_run(tiny_config(dataset, tmp_path / "run", epochs=1, val_split=0.0, patience=2, warmup_epochs=1.0), None)
    said = [str(w.message) for w in said]
    assert any(m.startswith("--patience 2 stops on validation top-1, and this split has no validation images") for m in said), said
    assert any(m.startswith("--warmup-epochs 1 is as long as the run (--epochs 1) or longer") for m in said), said


def test_the_loss_ignores_a_sample_that_failed_to_decode(tmp_path):
    """train_one_epoch on the same images with and without an undecodable one: same loss, one failure. Also where
    the undecodable one is a batch of its own, whose mean loss is 0 / 0: the epoch's loss was NaN."""
    from torch.utils.data import DataLoader

    from gesture_core import build_model, get_backbone
    from training.augment import build_eval_transform
    from training.data import ImageDataset, Sample
    from training.finetune import build_optimizer, train_one_epoch, warmup_cosine  # the training loop's, as finetune uses them

    good = [Sample(str(p), i % 3) for i, p in enumerate(sorted(make_image_folder(tmp_path / "d", per_class=2).rglob("*.png")))]
    bad = Sample(corrupt_png(tmp_path / "corrupt.png"), 1)
    backbone = get_backbone("lenet5")  # no BatchNorm or dropout: samples do not affect each other
    results = []
    for samples, batch_size in ((good, len(good)), (good[:3] + [bad] + good[3:], len(good) + 1), (good + [bad], len(good))):
        torch.manual_seed(0)
        model = build_model("lenet5", 3, "none")
        optimizer = build_optimizer(model, backbone, opt="sgd", lr=1e-3, backbone_lr_mult=1.0, weight_decay=0.0, momentum=0.9)
        loader = DataLoader(ImageDataset(samples, build_eval_transform(backbone.data_config), placeholder_shape=(3, 32, 32)), batch_size=batch_size)
        results.append(train_one_epoch(model, loader, optimizer, warmup_cosine(optimizer, total_steps=2, warmup_steps=0), torch.device("cpu")))
    without, with_bad, bad_batch = results
    assert with_bad.failed == [3] and with_bad.images == without.images == len(good)
    assert with_bad.loss == pytest.approx(without.loss, rel=1e-6)
    assert bad_batch.failed == [len(good)] and bad_batch.loss == pytest.approx(without.loss, rel=1e-6)


def test_inception_trains_below_its_auxiliary_classifiers_input_without_them(dataset, tmp_path, capsys):
    """Inception's auxiliary classifier takes 299 px or more: a smaller --image-size trains without it
    and says so, where it once stopped at the first batch with a traceback."""
    out = finetune.train(tiny_config(dataset, tmp_path / "run", backbone="inception_v3", image_size=80, epochs=1))
    assert "auxiliary classifiers off: inception_v3's take inputs of 299 px or more, this run trains at 80 px" in capsys.readouterr().out
    assert (out / "best.pt").is_file()


def test_an_epoch_without_validation_images_says_so():
    """It read "val loss nan acc n/a  *best": a loss that is no number, and a best chosen by nothing."""
    row = {"epoch": 2, "train_loss": 0.5, "train_top1": 0.8, "val_loss": float("nan"), "val_top1": None, "train_img_per_s": 40.0}
    line = finetune.format_epoch(row, 3, improved=True)
    assert "no validation images (the last epoch is kept)" in line and "nan" not in line and "*best" not in line
    assert "val loss 0.3000 acc 90.00%" in finetune.format_epoch({**row, "val_loss": 0.3, "val_top1": 0.9}, 3, improved=True)


@pytest.mark.parametrize("out", ["run", None], ids=["--out", "default"])
def test_a_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(dataset, tmp_path, monkeypatch, capsys, out):
    """It gave a --resume command for a last.pt that did not exist; the same command then starts again, in the
    same folder: under the default runs/NAME, each such Ctrl-C left a folder and the next run went to NAME-2."""
    monkeypatch.chdir(tmp_path)
    def command():  # the same command again: a new config (train fills in the default --out of its own)
        return dataclasses.replace(tiny_config(dataset, tmp_path / "run", epochs=2), out=out and str(tmp_path / out))

    cfg = command()
    folder = tmp_path / "run" if out else tmp_path / "runs" / "gestures-mobilenet_v3_large"
    assert train_interrupted_in_epoch(cfg, monkeypatch, 1) == 130
    assert "interrupted before the first epoch ended: there is no last.pt to resume from; start again" in capsys.readouterr().err
    assert (folder / "split.json").is_file() and not (folder / "last.pt").exists()
    assert finetune.train(command()).resolve() == folder.resolve()
    if not out:
        assert [p.name for p in (tmp_path / "runs").iterdir()] == ["gestures-mobilenet_v3_large"]
        assert finetune.default_run_dir(command()) == Path("runs") / "gestures-mobilenet_v3_large-2"  # a trained run keeps its folder


def test_a_data_loading_worker_killed_for_memory_is_one_error_line_with_the_resume_command(dataset, tmp_path, monkeypatch):
    """The kernel's out-of-memory killer ends a loader worker (here the worker kills itself in epoch 2):
    it was a traceback ending in "DataLoader worker (pid(s) ...) exited unexpectedly"."""
    from training.data import ImageDataset

    trigger, real_item = tmp_path / "kill-workers", ImageDataset.__getitem__

    def item(self, index):
        if trigger.exists() and torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_item(self, index)

    real_save = finetune.save_epoch
    monkeypatch.setattr(ImageDataset, "__getitem__", item)
    monkeypatch.setattr(finetune, "save_epoch", lambda *args, **kwargs: (real_save(*args, **kwargs), trigger.touch()))
    cfg = tiny_config(dataset, tmp_path / "run", epochs=3, workers=2)
    with pytest.raises(OutOfMemory, match=r"^DataLoader worker \(pid\(s\) [\d, ]+\) exited unexpectedly: most likely out of memory \(RAM\), "
                                          rf"with --workers 2; continue with fewer: {re.escape(python_command())} -m training.finetune --resume "
                                          rf"{re.escape(str(tmp_path / 'run' / 'last.pt'))} --workers 1$"):
        finetune.train(cfg)


@pytest.mark.parametrize("error, said", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB"),
     "out of GPU memory (cpu) for mobilenet_v3_large at --batch-size 8: start again with a smaller --batch-size (e.g. 4)"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to allocate 9663676416 bytes."),
     "out of memory (RAM) for mobilenet_v3_large at --batch-size 8 with --workers 0: start again with a smaller --batch-size (e.g. 4)"),
    (MemoryError(), "out of memory (RAM) for mobilenet_v3_large at --batch-size 8 with --workers 0: start again"),
])
def test_running_out_of_memory_names_the_flag_to_lower(dataset, tmp_path, monkeypatch, capsys, error, said):
    """What PyTorch raises when the GPU's memory or the RAM runs out, in the first epoch (a GPU cannot be
    filled on purpose on the CPU machines the tests run on). It was a traceback."""
    monkeypatch.setattr(finetune, "train_one_epoch", lambda *args, **kwargs: (_ for _ in ()).throw(error))
    monkeypatch.setattr(finetune, "parse_config", lambda argv: (tiny_config(dataset, tmp_path / "run"), None))
    assert finetune.main([]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"error: {said}")


def test_file_names_that_are_not_utf8_train_and_evaluate_to_the_end(tmp_path):
    """Such a name (its bytes as surrogates in Python) made matplotlib raise while plotting the test
    mistakes, after training and before metrics.json; evaluate stopped halfway through predictions.csv."""
    import os

    data = make_image_folder(tmp_path / "gestures", per_class=10, size=48)
    for image in sorted(data.glob("*/*")):
        os.rename(image, os.fsdecode(os.fsencode(image.parent) + b"/\xff" + os.fsencode(image.name)))
    run = finetune.train(tiny_config(data, tmp_path / "run", epochs=1))
    assert json.loads((run / "metrics.json").read_text())["test"]["top1"] is not None
    assert evaluate_main(["--checkpoint", str(run), "--out", str(tmp_path / "eval")]) == 0
    listed = (tmp_path / "eval" / "predictions.csv").read_bytes().splitlines()[1:]
    assert listed and all(os.path.exists(line.split(b",")[0]) for line in listed)  # the names as they are on disk


def test_resuming_a_finished_run_is_refused_and_leaves_its_model_as_it_is(dataset, tmp_path, capsys):
    """It calibrated best.pt again with the run's own settings and rewrote the report, over a later
    training.calibrate; now only --epochs above those trained continues it."""
    run = finetune.train(tiny_config(dataset, tmp_path / "run", epochs=1))
    before = (run / "best.pt").read_bytes()
    for extra, message in (([], "finished after epoch 1 (its report, metrics.json, is there): nothing to resume"),
                           (["--epochs", "1"], "--epochs 1: " + str(run / "last.pt") + " has trained 1 epoch(s) already")):
        with pytest.raises(SystemExit) as stop:
            finetune.parse_config(["--resume", str(run), *extra])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert (run / "best.pt").read_bytes() == before
    cfg, resume = finetune.parse_config(["--resume", str(run), "--epochs", "2"])
    assert cfg.epochs == 2 and resume == run / "last.pt"
    # A copy made with plain cp has its files' times in the order they were copied: metrics.json older
    # than last.pt read as "trained further, then interrupted", and the copy was calibrated again.
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in run.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    os.utime(copy / "metrics.json", (1e9, 1e9))  # copied before last.pt
    with pytest.raises(SystemExit) as stop:
        finetune.parse_config(["--resume", str(copy)])
    assert stop.value.code == 2 and "finished after epoch 1" in capsys.readouterr().err


def test_the_confusion_matrix_of_many_classes_stays_a_picture(tmp_path, monkeypatch):
    """400 classes drew a 221x201-inch figure with a number in each of 160,000 cells: minutes and 20 GB
    after training ended, and 2,000 classes (a sign-language vocabulary) never finished."""
    import matplotlib.axes

    import training.report as report

    drawn = []
    real_text = matplotlib.axes.Axes.text
    monkeypatch.setattr(matplotlib.axes.Axes, "text", lambda self, *a, **k: drawn.append(a) or real_text(self, *a, **k))
    n = 400
    report.plot_confusion(tmp_path / "cm.png", np.eye(n, dtype=int).tolist(), [f"sign{i}" for i in range(n)])
    height, width = cv2.imread(str(tmp_path / "cm.png")).shape[:2]
    assert max(height, width) <= report.CONFUSION_MAX_INCHES * 110 and drawn == []
    report.plot_confusion(tmp_path / "small.png", np.eye(3, dtype=int).tolist(), ["a", "b", "c"])
    assert len(drawn) == 9  # a few classes keep their counts


def test_plots_write_the_characters_their_font_lacks_as_escapes(tmp_path, monkeypatch):
    """matplotlib drew each character its font lacks as one empty box: classes named 手 and 足 (or two emoji)
    were two identical labels in confusion_matrix.png, and so were the mistakes' captions."""
    import matplotlib.axes

    import training.report as report

    ticks = []
    real_ticks = matplotlib.axes.Axes.set_yticks
    monkeypatch.setattr(matplotlib.axes.Axes, "set_yticks", lambda self, at, labels=None, **k: ticks.append(labels) or real_ticks(self, at, labels, **k))
    report.plot_confusion(tmp_path / "cm.png", np.eye(4, dtype=int).tolist(), ["\u624b", "\u8db3", "\U0001f44d", "\u00f1and\u00fa"])
    assert ticks == [["\\u624b", "\\u8db3", "\\U0001f44d", "\u00f1and\u00fa"]]  # what the font draws stays as it is
    assert report.plottable("IMG 1.jpg\n\u624b -> \u8db3 (0.93)") == "IMG 1.jpg\n\\u624b -> \\u8db3 (0.93)"


def test_a_run_folder_holds_one_training_process_at_a_time(dataset, tmp_path, capsys):
    """Two runs at one --out a moment apart wrote each other's checkpoints (the first died on weights that
    no longer fit, its work lost), and a --resume of a run still training trained beside it."""
    from training.run_lock import hold_run_folder, release_run_folders

    out = tmp_path / "run"
    out.mkdir()
    with a_run_training_in(out):
        argv = ["--data", str(dataset), "--out", str(out), "--backbone", "lenet5", "--weights", "none", "--epochs", "1", "--image-size", "32", "--workers", "0"]
        assert finetune.main(argv) == 2
        assert f"error: {out} is in use by a training run (pid 4242 on trainer): wait for it to end, or pass another --out" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written
        interrupted = finetune.train(tiny_config(dataset, tmp_path / "earlier", epochs=1))
        (out / "metrics.json").unlink(missing_ok=True)
        for name in ("last.pt", "best.pt", "split.json", "config.json", "history.csv"):  # as the holder's run after its first epoch
            shutil.copy(interrupted / name, out / name)
        capsys.readouterr()
        # told "holds an interrupted run: continue it with --resume", and that resume was refused after its start-up lines
        for command, advice in ((argv, "wait for it to end, or pass another --out"),
                                (["--resume", str(out)], "wait for it to end: it is this run, still training")):  # --resume takes no --out
            assert finetune.main(command) == 2
            said = capsys.readouterr()
            assert said.err.strip() == f"error: {out} is in use by a training run (pid 4242 on trainer): {advice}"
            assert "split" not in said.out
        for name in ("last.pt", "best.pt", "split.json", "config.json", "history.csv"):
            (out / name).unlink()
    assert finetune.main(argv) == 0  # the holder's end let go of the lock: no stale lock to clear by hand
    hold_run_folder(out)  # released at the end of that run, and held again here by this process
    release_run_folders()


def test_a_resume_says_which_class_folders_its_split_does_not_know(tmp_path):
    """A resumed run trains on the split it started with: a class folder added since was left out without a word."""
    import warnings

    data = make_image_folder(tmp_path / "data", classes=("fist", "palm"), per_class=8, size=32)
    run = finetune.train(tiny_config(data, tmp_path / "run", epochs=1))
    (run / "metrics.json").unlink()  # interrupted before its report
    make_image_folder(data, classes=("thumbs_up",), per_class=8, size=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert finetune.main(["--resume", str(run), "--epochs", "2"]) == 0
    assert any(f"{data} has class folder(s) thumbs_up that {run / 'split.json'} does not know" in str(w.message) for w in caught)


def test_a_resume_says_how_many_images_of_its_split_are_gone_and_reports_each_as_skipped(tmp_path, capsys):
    """Images deleted since the split were found out one failed decode at a time, in the final report only."""
    import warnings

    data = make_image_folder(tmp_path / "data", classes=("fist", "palm"), per_class=10, size=32)
    run = finetune.train(tiny_config(data, tmp_path / "run", epochs=1))
    (run / "metrics.json").unlink()  # interrupted before its report
    splits = Splits.load(run / "split.json")
    gone = [splits.train[0].path, splits.test[0].path]
    for path in gone:
        os.remove(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert finetune.main(["--resume", str(run), "--epochs", "2"]) == 0
    said = [str(w.message) for w in caught if "cannot be opened any more" in str(w.message)]
    assert said and f"(1 of {len(splits.train)} train, 1 of {len(splits.test)} test; e.g. {gone[0]})" in said[0], said
    assert "0 file(s) skipped, 2 gone since;" in capsys.readouterr().out  # the start-up line said 0 skipped
    skipped = json.loads((run / "metrics.json").read_text())["skipped"]
    assert sorted(s["path"] for s in skipped) == sorted(gone) and all("unreadable" in s["reason"] for s in skipped), skipped


def test_a_resume_counts_the_images_added_to_its_classes_since_its_split(tmp_path):
    """New photos in a known class folder were left out of a resumed run without a word (new folders were named)."""
    import warnings

    data = make_image_folder(tmp_path / "data", classes=("fist", "palm"), per_class=8, size=32)
    run = finetune.train(tiny_config(data, tmp_path / "run", epochs=1))
    (run / "metrics.json").unlink()  # interrupted before its report
    make_image_folder(tmp_path / "more", classes=("fist",), per_class=3, size=32)
    for n, photo in enumerate(sorted((tmp_path / "more" / "fist").iterdir())):
        photo.rename(data / "fist" / f"new_{n}{photo.suffix}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert finetune.main(["--resume", str(run), "--epochs", "2"]) == 0
    said = [str(w.message) for w in caught if "does not list" in str(w.message)]
    assert said and said[0].startswith(f"3 image(s) in class folders that {run / 'split.json'} does not list (e.g. {data / 'fist' / 'new_0'}"), said
    (data / "palm" / "broken.jpg").write_bytes(b"\xff\xd8 not a photo")  # skipped at the split as at any time: not "added"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert finetune.main(["--resume", str(run), "--epochs", "3"]) == 0
    assert [str(w.message) for w in caught if "does not list" in str(w.message)][0].startswith("3 image(s)")


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_split_deleted_during_the_run_stops_it_before_that_epoch_is_saved(tmp_path, monkeypatch, split):
    """A dataset (or --hands' crop cache) deleted mid-run trained on nothing (loss nan), kept that epoch as
    best.pt when validation had gone too, and finished with exit 0."""
    data = make_image_folder(tmp_path / "data", classes=("fist", "palm"), per_class=10, size=32)
    saved = []

    def save_then_delete(run, *args, **kwargs):
        real_save_epoch(run, *args, **kwargs)
        saved.append(1)
        for sample in getattr(run.splits, split):
            os.remove(sample.path)

    real_save_epoch = finetune.save_epoch
    monkeypatch.setattr(finetune, "save_epoch", save_then_delete)
    with pytest.raises(finetune.DatasetError) as stopped:
        finetune.train(tiny_config(data, tmp_path / "run", epochs=3))
    what = {"train": "training", "val": "validation"}[split]
    assert re.match(rf"none of the \d+ {what} images decoded in epoch 2 \(e\.g\. {re.escape(str(data))}/\w+/\d+\.png: .*; moved, "
                    r"deleted or changed during the run\?\): last\.pt keeps the epochs before; put them back and continue with: "
                    rf"{re.escape(python_command())} -m training\.finetune --resume {re.escape(str(tmp_path / 'run' / 'last.pt'))}$", str(stopped.value)), stopped.value
    assert len(saved) == 1 and torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 1


def test_the_summary_shows_top5_only_where_an_image_can_miss_it():
    """A two-class run printed "top-5 100.00%": with 5 classes or fewer every image is in its top 5."""
    from training.report import classification_metrics, format_summary

    for n, shown in ((2, False), (5, False), (6, True)):
        logits = np.eye(n, dtype=np.float32)[[0, 1, 1]]
        summary = format_summary(classification_metrics(logits, np.array([0, 1, 0]), [str(c) for c in range(n)]), "test:")
        assert summary.splitlines()[-1].startswith("  top-1 66.67%") and ("top-5" in summary) == shown, summary


def test_a_run_without_test_or_validation_lists_what_it_wrote_and_an_evaluate_that_works(dataset, tmp_path, capsys):
    """--val-split 0 --test-split 0: the run said it wrote open_set.png, which it had not, and its next: line
    suggested an evaluate that stops at once ("the run's test split is empty")."""
    out = finetune.train(tiny_config(dataset, tmp_path / "run", epochs=1, val_split=0.0, test_split=0.0))
    said = capsys.readouterr().out
    [listed] = [line for line in said.splitlines() if line.startswith("results in ")]
    for name in ("open_set.png", "confusion_matrix.png", "curves.png"):
        assert (name in listed) == (out / name).is_file(), (name, listed)
    assert f"-m training.evaluate --checkpoint {out} --data FOLDER   # test it on photos it has not seen" in said


def test_data_given_as_the_current_folder_is_recorded_as_the_folder_it_is(dataset, monkeypatch):
    """--data .: the run went to runs/data-<backbone>, and config.json's "data": "." meant whatever folder a later
    command ran in (evaluate refused an --out there as inside the dataset)."""
    monkeypatch.chdir(dataset)
    cfg, _ = finetune.parse_config(["--data", "."])
    assert cfg.data == str(dataset) and finetune.default_run_dir(cfg) == Path("runs") / f"{dataset.name}-{cfg.backbone}"
