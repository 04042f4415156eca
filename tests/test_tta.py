"""Test-time augmentation: views built on the shared Preprocess, and their cost in forward passes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gesture_core import DataConfig, Preprocess, build_model, load_classifier, save_checkpoint
from gesture_core.preprocess import TTA_MODES, evaluation_geometry, tta_crops, tta_view_count
from tests.helpers import count_calls, synthetic_image
from training import evaluate
from training.data import Sample, load_folder
from training.evaluate import evaluate_samples, main

CONFIG = DataConfig(input_size=32, resize_size=40)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "run" / "best.pt"
    save_checkpoint(path, model=build_model("lenet5", 3, "none", in_chans=3), backbone="lenet5",
                    classes=["fist", "palm", "peace"], data_config=CONFIG, train_config={})
    return path


def test_views_are_preprocess_crops():
    rgb = synthetic_image(1, seed=3, size=64)
    pre = Preprocess(CONFIG)
    for mode in TTA_MODES:
        crops = tta_crops(pre, rgb, mode)
        assert len(crops) == tta_view_count(mode)
        assert all(c.shape == (32, 32, 3) for c in crops)
        np.testing.assert_array_equal(crops[0], pre.crop(rgb))
    ten = tta_crops(pre, rgb, "10crop")
    for plain, mirrored in zip(ten[:5], ten[5:], strict=True):
        np.testing.assert_array_equal(plain[:, ::-1], mirrored)
    assert len({c.tobytes() for c in ten[:5]}) == 5  # centre and four distinct corners
    views = pre.views(rgb, "flip")
    assert views.shape == (2, 3, 32, 32)
    torch.testing.assert_close(views[0], pre(rgb))
    with pytest.raises(ValueError, match="choose one of"):
        pre.views(rgb, "144crop")


def count_images_through(model: torch.nn.Module) -> list[int]:
    seen = [0]
    model.register_forward_hook(lambda module, args, output: seen.__setitem__(0, seen[0] + args[0].shape[0]))
    return seen


def test_10crop_runs_exactly_ten_forward_passes_per_image(tiny_checkpoint, image_folder):
    classifier = load_classifier(tiny_checkpoint, "cpu", engine="torch")  # the forward hooks count what runs
    samples, _ = load_folder(image_folder, classifier.classes)
    seen = count_images_through(classifier.model)
    plain, _ = evaluate_samples(classifier, samples, batch_size=16, workers=0)
    assert seen[0] == len(samples)
    seen[0] = 0
    ten, _ = evaluate_samples(classifier, samples, batch_size=16, workers=0, tta="10crop")
    assert seen[0] == 10 * len(samples)
    assert ten["n"] == plain["n"] == len(samples)


def test_flip_averages_each_images_probabilities_with_its_mirrors(tmp_path, image_folder, monkeypatch):
    torch.manual_seed(0)
    model = build_model("lenet5", 3, "none", in_chans=3)
    with torch.no_grad():
        model.fc.weight.mul_(30)  # confident, so that a view's answer visibly depends on the view
    path = save_checkpoint(tmp_path / "sharp" / "best.pt", model=model, backbone="lenet5", classes=["fist", "palm", "peace"],
                           data_config=CONFIG, train_config={})
    classifier = load_classifier(path, "cpu", engine="torch")
    samples, _ = load_folder(image_folder, classifier.classes)
    pre = classifier.preprocess
    plain = torch.stack([pre(pre.read(s.path)) for s in samples])
    plain_probs, mirrored_probs = classifier.probs(plain), classifier.probs(plain.flip(3))  # the mirror, by hand
    assert np.abs(plain_probs - mirrored_probs).max() > 0.05  # so a "flip" that dropped the mirror would be caught
    scored = count_calls(monkeypatch, evaluate, "classification_metrics")  # the per-image scores the metrics rank
    metrics, _ = evaluate_samples(classifier, samples, batch_size=8, workers=0, tta="flip")
    ((log_mean_probs, targets, _), _), = scored
    np.testing.assert_allclose(np.exp(log_mean_probs), (plain_probs + mirrored_probs) / 2, rtol=0, atol=1e-5)
    assert list(targets) == [s.label for s in samples]
    assert metrics["top1"] == pytest.approx(float(((plain_probs + mirrored_probs).argmax(1) == targets).mean()))


def test_cli_tta_all_writes_the_table(tiny_checkpoint, image_folder, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["--checkpoint", str(tiny_checkpoint), "--data", str(image_folder), "--tta", "all", "--workers", "0", "--out", str(out)]) == 0
    rows = json.loads((out / "tta.json").read_text())
    assert [(r["tta"], r["views"]) for r in rows] == [("none", 1), ("flip", 2), ("5crop", 5), ("10crop", 10), ("multiscale", 6)]
    assert all(r["n"] == 36 and 0.0 <= r["top1"] <= 1.0 for r in rows)
    assert "| 10crop | 10x |" in (out / "tta.md").read_text()
    assert "forward passes per image" in capsys.readouterr().out


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_a_file_that_fails_to_decode_is_reported_and_the_others_are_evaluated(tiny_checkpoint, image_folder, tmp_path, tta):
    classifier = load_classifier(tiny_checkpoint, "cpu", engine="torch")
    samples, _ = load_folder(image_folder, classifier.classes)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with_junk = [*samples[:3], Sample(str(junk), 0), *samples[3:]]
    metrics, failed = evaluate_samples(classifier, with_junk, batch_size=4, workers=0, tta=tta)
    clean, _ = evaluate_samples(classifier, samples, batch_size=4, workers=0, tta=tta)
    assert failed == [str(junk)] and metrics == clean


def test_another_geometry_is_what_the_model_sees_and_the_report_says_so(tiny_checkpoint, image_folder):
    # timm's validate --img-size --crop-pct: the stored 32 px crop of a 40 px side becomes 48 px of the whole side
    seen = load_classifier(tiny_checkpoint, "cpu", engine="torch", input_size=48, crop_pct=1.0)
    assert (seen.data_config.input_size, seen.data_config.resize_size) == (48, 48)
    stored = load_classifier(tiny_checkpoint, "cpu", engine="torch")
    assert (stored.data_config.input_size, stored.data_config.resize_size) == (32, 40)  # the file is untouched
    samples, _ = load_folder(image_folder, seen.classes)
    by_hand = Preprocess(DataConfig(input_size=48, resize_size=48))
    batch = torch.stack([by_hand(by_hand.read(s.path)) for s in samples])
    expected = float((seen.probs(batch).argmax(1) == np.array([s.label for s in samples])).mean())
    assert main(["--checkpoint", str(tiny_checkpoint), "--data", str(image_folder), "--image-size", "48", "--crop-pct", "1",
                 "--workers", "0"]) == 0
    report = json.loads((tiny_checkpoint.parent / f"eval-{image_folder.name}-48px-crop1" / "metrics.json").read_text())
    assert (report["data_config"]["input_size"], report["data_config"]["resize_size"]) == (48, 48)
    assert report["test"]["top1"] == pytest.approx(expected)
    plain, _ = evaluate_samples(stored, samples, batch_size=16, workers=0)
    assert plain["n"] == report["test"]["n"] == len(samples)


def test_geometry_refusals_name_what_to_do_instead(tiny_checkpoint, image_folder, capsys):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        CONFIG.with_crop_pct(1.5)
    with pytest.raises(ValueError, match="change the input size alone"):
        evaluation_geometry(CONFIG.with_crop("letterbox"), crop_pct=0.9)
    assert evaluation_geometry(CONFIG.with_crop("letterbox"), input_size=64).input_size == 64
    with pytest.raises(ValueError, match="at its stored geometry"):
        evaluation_geometry(CONFIG.with_hands(True), input_size=64)
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tiny_checkpoint), "--data", str(image_folder), "--crop-pct", "0"])
    assert "--crop-pct: must be in [0.05, 1.0]" in capsys.readouterr().err


def test_tta_all_on_a_whole_frame_model_runs_the_modes_that_apply(image_folder, tmp_path, capsys):
    """It evaluated none and flip, then stopped at 5crop ("takes crops"), with no report written."""
    from dataclasses import replace

    path = tmp_path / "run" / "best.pt"
    save_checkpoint(path, model=build_model("lenet5", 3, "none", in_chans=3), backbone="lenet5",
                    classes=["fist", "palm", "peace"], data_config=replace(CONFIG, crop="resize"), train_config={})
    out = tmp_path / "eval"
    assert main(["--checkpoint", str(path), "--data", str(image_folder), "--tta", "all", "--workers", "0", "--out", str(out)]) == 0
    assert [r["tta"] for r in json.loads((out / "tta.json").read_text())] == ["none", "flip"]
    assert "the crop modes do not apply" in capsys.readouterr().out


def test_a_model_trained_without_flips_gets_no_mirror_images(image_folder, tmp_path, capsys):
    """--tta flip, 10crop and multiscale averaged each image with its mirror for a model of left/right classes, whose
    flips training had turned off: a left-pointing hand was half read as a right-pointing one, with no word."""
    path = tmp_path / "run" / "best.pt"
    save_checkpoint(path, model=build_model("lenet5", 3, "none", in_chans=3), backbone="lenet5",
                    classes=["fist", "palm", "peace"], data_config=CONFIG, train_config={"flip": "off"})  # as --flip auto stores it for left/right
    out = tmp_path / "eval"
    assert main(["--checkpoint", str(path), "--data", str(image_folder), "--tta", "all", "--workers", "0", "--out", str(out)]) == 0
    assert [r["tta"] for r in json.loads((out / "tta.json").read_text())] == ["none", "5crop"]
    assert "--tta all: none, 5crop (it was trained without flips (--flip off)" in capsys.readouterr().out
    for mirroring in ("flip", "10crop", "multiscale"):
        assert main(["--checkpoint", str(path), "--data", str(image_folder), "--tta", mirroring, "--workers", "0", "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip() == (f"error: --tta {mirroring}: it was trained without flips (--flip off): a mirror "
                                                   "image may mean another class, left for right; choose none or 5crop")


def test_a_threshold_of_ones_own_writes_its_own_report(tiny_checkpoint, image_folder):
    """--threshold 0.5 wrote into eval-<data>/, replacing the report at the model's own threshold, where the docs say
    the model's own evaluation is never replaced (TTA and another geometry had folders of their own)."""
    run = tiny_checkpoint.parent
    assert main(["--checkpoint", str(tiny_checkpoint), "--data", str(image_folder), "--workers", "0"]) == 0
    own = (run / "eval-data" / "metrics.json").read_text()
    assert main(["--checkpoint", str(tiny_checkpoint), "--data", str(image_folder), "--workers", "0", "--threshold", "0.5"]) == 0
    assert (run / "eval-data" / "metrics.json").read_text() == own and (run / "eval-data-threshold0.5" / "metrics.json").is_file()
