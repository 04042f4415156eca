"""Cached backbone features (training.features): frozen epochs on the cache train the same head as without it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

import training.features as features_mod
import training.finetune as finetune
from gesture_core import build_model, get_backbone
from tests.helpers import make_image_folder, synthetic_image, write_rgb
from training.config import TrainConfig
from training.data import load_splits
from training.features import cached_features, feature_extractor, head_dropout, use_feature_cache


@pytest.fixture(autouse=True)
def feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GESTURE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def dataset(tmp_path):
    return make_image_folder(tmp_path / "gestures", per_class=10, size=48)


def probe_config(data, out, **overrides) -> TrainConfig:
    """resnet18 at 32 px: BatchNorm (frozen, so in eval mode) and no dropout, so both paths must agree exactly.

    fp32 (amp off): the cache computes features in fp32, while --amp auto trains in bf16 on CPUs that have it."""
    base = dict(backbone="resnet18", data=str(data), out=str(out), weights="none", epochs=2, batch_size=8, image_size=32,
                workers=0, lr=3e-3, warmup_epochs=0.5, val_split=0.2, test_split=0.2, seed=1, freeze="backbone", augment="none", amp="off")  # fmt: skip
    return TrainConfig(**{**base, **overrides})


def history(run) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "history.csv").open()))


def test_cached_linear_probe_trains_the_same_head_as_the_uncached_one(dataset, tmp_path, monkeypatch):
    calls = []
    real = features_mod.extract_features
    monkeypatch.setattr(features_mod, "extract_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    cached = finetune.train(probe_config(dataset, tmp_path / "cached", cache_features="auto"))
    plain = finetune.train(probe_config(dataset, tmp_path / "plain", cache_features="off"))
    # train and val features (the frozen epochs; calibration reuses them), each computed once; the test
    # split goes through the saved checkpoint's Classifier instead, once, for the metrics and "no gesture"
    assert len(calls) == 2
    for a, b in zip(history(cached), history(plain), strict=True):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), abs=1e-4)
        assert float(a["val_loss"]) == pytest.approx(float(b["val_loss"]), abs=1e-4)
        assert a["val_top1"] == b["val_top1"]
    state_a = torch.load(cached / "best.pt", weights_only=True)["model"]
    state_b = torch.load(plain / "best.pt", weights_only=True)["model"]
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=1e-4)
    test_a, test_b = (json.loads((run / "metrics.json").read_text())["test"] for run in (cached, plain))
    assert test_a["confusion_matrix"] == test_b["confusion_matrix"] and test_a["n"] == test_b["n"] > 0


def test_a_cache_folder_that_cannot_be_written_costs_a_warning_not_the_run(dataset, tmp_path, monkeypatch, capsys):
    """A read-only ~/.cache (or a full disk) ended a run after its last epoch: its calibration stores the
    features it computes, and the failed write stopped it with no report and no metrics.json."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("GESTURE_CACHE_DIR", str(tmp_path / "a-file" / "cache"))  # no folder can be made there, even as root
    with pytest.warns(UserWarning, match=r"features not cached: cannot write .*a-file/cache/features \(Not a directory\); set GESTURE_CACHE_DIR"):
        run = finetune.train(probe_config(dataset, tmp_path / "run", cache_features="off", epochs=1))
    assert json.loads((run / "metrics.json").read_text())["test"]["n"] > 0


def test_a_staged_run_uses_the_cache_for_its_frozen_phase_only(dataset, tmp_path, monkeypatch):
    finetune.train(probe_config(dataset, tmp_path / "probe", epochs=1))  # fills the cache
    uncached_epochs, extractions = [], []
    real_epoch, real_extract = finetune.train_one_epoch, features_mod.extract_features
    monkeypatch.setattr(finetune, "train_one_epoch", lambda *a, **k: uncached_epochs.append(1) or real_epoch(*a, **k))
    monkeypatch.setattr(features_mod, "extract_features", lambda *a, **k: extractions.append(1) or real_extract(*a, **k))
    calibrated_after, real_calibrate = [], finetune.fit_rejection
    monkeypatch.setattr(finetune, "fit_rejection", lambda *a, **k: calibrated_after.append(len(extractions)) or real_calibrate(*a, **k))
    run = finetune.train(probe_config(dataset, tmp_path / "staged", freeze="none", head_epochs=2, epochs=3))
    assert [row["frozen_backbone"] for row in history(run)] == ["True", "True", "False"]
    assert uncached_epochs == [1]  # only the unfrozen epoch went through the images
    # the frozen phase reused the linear probe's cached features; calibration, after training, then
    # extracts the fine-tuned backbone's own
    assert calibrated_after == [0]


def test_cache_is_keyed_by_file_content(dataset, monkeypatch):
    splits = load_splits(dataset, val_split=0.0, test_split=0.0)
    backbone = get_backbone("lenet5")
    extractor = feature_extractor(build_model("lenet5", 3, "none"), backbone)
    config = backbone.data_config
    calls = []
    real = features_mod.extract_features
    monkeypatch.setattr(features_mod, "extract_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = cached_features(extractor, splits.train, config, device=torch.device("cpu"), workers=0)
    again = cached_features(extractor, splits.train, config, device=torch.device("cpu"), workers=0)
    assert len(calls) == 1 and torch.equal(first.features, again.features)
    assert first.features.shape == (len(splits.train), 84) and first.failed == []
    write_rgb(Path(splits.train[0].path), synthetic_image(2, seed=99, size=48))  # same name, new content
    changed = cached_features(extractor, splits.train, config, device=torch.device("cpu"), workers=0)
    assert len(calls) == 2 and not torch.equal(changed.features[0], first.features[0])
    torch.testing.assert_close(changed.features[1:], first.features[1:])


def test_the_feature_line_counts_only_the_photos_that_decode(dataset, capsys):
    """A file that fails to decode goes through as a placeholder; the line counted it as a photo."""
    splits = load_splits(dataset, val_split=0.0, test_split=0.0)
    samples = splits.train[:4]
    Path(samples[1].path).write_bytes(Path(samples[1].path).read_bytes()[:40])  # a header, then nothing
    backbone = get_backbone("lenet5")
    extractor = feature_extractor(build_model("lenet5", 3, "none"), backbone)
    features_mod.extract_features(extractor, samples, backbone.data_config, device=torch.device("cpu"), workers=0, desc="val features")
    line = capsys.readouterr().out
    assert line.startswith("val features: 3 photos in ") and line.rstrip().endswith("; 1 file(s) could not be read (gone or corrupt) and are left out"), line


@pytest.mark.parametrize(
    "cache, augment, expected",
    [("auto", "none", True), ("auto", "default", False), ("on", "default", True), ("off", "none", False)],
)
def test_when_the_cache_applies(cache, augment, expected):
    assert use_feature_cache(cache, augment) is expected


def test_cache_choice_is_validated_on_the_command_line():
    cfg, _ = finetune.parse_config(["--data", "x", "--freeze", "backbone", "--cache-features", "on"])
    assert cfg.cache_features == "on"
    with pytest.raises(SystemExit):
        finetune.parse_config(["--data", "x", "--cache-features", "sometimes"])


@pytest.mark.parametrize(
    "name, rate", [("resnet18", 0.0), ("mobilenet_v3_large", 0.2), ("googlenet", 0.2), ("efficientnet_lite0", 0.0)]
)
def test_dropout_right_before_the_head_is_kept_for_cached_features(name, rate):
    backbone = get_backbone(name)
    model = build_model(name, 3, "none", aux=True)
    assert head_dropout(model, backbone) == pytest.approx(rate)
    extractor = feature_extractor(model, backbone)
    assert isinstance(extractor.get_submodule(backbone.heads[0]), torch.nn.Identity)
