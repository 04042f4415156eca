"""The fine-tuning command end to end: artefacts, reports, resume, evaluation, refusal of bad input."""

from __future__ import annotations

import csv
import json
import urllib.error

import pytest
import torch

import training.finetune as finetune
from gesture_core import load_classifier
from tests.helpers import count_calls, make_image_folder, train_interrupted_in_epoch_2
from tests.test_data import add_bad_files
from training.config import TrainConfig
from training.evaluate import main as evaluate_main

ARTEFACTS = ["best.pt", "last.pt", "config.json", "split.json", "history.csv", "metrics.json", "curves.png", "confusion_matrix.png"]


def tiny_config(data, out, **overrides) -> TrainConfig:
    """mobilenet_v3 at 32 px: BatchNorm and dropout included, seconds per epoch."""
    base = dict(backbone="mobilenet_v3_large", data=str(data), out=str(out), weights="none", epochs=2, batch_size=8,
                image_size=32, workers=0, lr=3e-3, warmup_epochs=0.5, val_split=0.2, test_split=0.2, seed=1)
    return TrainConfig(**{**base, **overrides})


@pytest.fixture
def dataset(tmp_path):
    return make_image_folder(tmp_path / "gestures", per_class=10, size=48)


def test_run_folder_has_every_artefact_and_a_complete_report(dataset, tmp_path):
    add_bad_files(dataset)
    out = finetune.train(tiny_config(dataset, tmp_path / "run"))
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


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resume_after_interruption_gives_the_same_next_epoch(dataset, tmp_path, monkeypatch, capsys, ema_decay):
    reference = finetune.train(tiny_config(dataset, tmp_path / "a", epochs=3, ema_decay=ema_decay))
    assert train_interrupted_in_epoch_2(tiny_config(dataset, tmp_path / "b", epochs=3, ema_decay=ema_decay), monkeypatch) == 130
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


def test_ema_weights_are_what_is_validated_kept_and_tested(dataset, tmp_path):
    out = finetune.train(tiny_config(dataset, tmp_path / "ema", epochs=1, ema_decay=0.9))
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


def test_evaluate_reproduces_the_run_test_metrics(dataset, tmp_path):
    out = finetune.train(tiny_config(dataset, tmp_path / "run", epochs=1))
    assert evaluate_main(["--checkpoint", str(out / "best.pt"), "--workers", "0", "--out", str(tmp_path / "ev")]) == 0
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())["test"]
    original = json.loads((out / "metrics.json").read_text())["test"]
    assert again["top1"] == original["top1"] and again["confusion_matrix"] == original["confusion_matrix"]
    assert (tmp_path / "ev" / "confusion_matrix.png").exists()


def test_evaluate_on_a_whole_folder(dataset, tmp_path):
    out = finetune.train(tiny_config(dataset, tmp_path / "run", epochs=1))
    assert evaluate_main(["--checkpoint", str(out / "best.pt"), "--data", str(dataset), "--workers", "0"]) == 0
    report = json.loads((out / "eval-gestures" / "metrics.json").read_text())
    assert report["test"]["n"] == 30


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--backbone", "resnet9000"], "invalid choice"),
        (["--epochs", "0"], "must be >= 1"),
        (["--val-split", "1.5"], "must be in"),
        (["--lr", "-1"], "must be in"),
        (["--weights", "/no/such/file.pth"], "choose imagenet, none"),
        (["--image-size", "8"], "must be >= 32"),
        (["--device", "tpu"], "invalid choice"),
    ],
)
def test_out_of_range_flags_are_refused_at_parsing(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        finetune.parse_config(["--data", str(tmp_path), *argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    if "resnet9000" in argv:
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
