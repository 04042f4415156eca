"""training.export: ONNX/TorchScript files carry their metadata and match PyTorch on real images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gesture_core import DataConfig, Preprocess, build_model, load_classifier, save_checkpoint
from tests.helpers import SHARED_DATA, make_image_folder
from training import export as export_module
from training.export import check_parity, chosen_format, export, main, parity_inputs, read_metadata


@pytest.fixture(scope="module")
def parity_images(tmp_path_factory) -> list[str]:
    """Real photos when ../shared/data is there (one per class), synthetic files otherwise."""
    folder = SHARED_DATA / "sign-digits"
    if folder.is_dir():
        return [str(sorted((folder / str(d)).glob("*.JPG"))[0]) for d in range(10)]
    root = make_image_folder(tmp_path_factory.mktemp("imgs"), per_class=3)
    return sorted(str(p) for p in root.rglob("*.png"))


@pytest.fixture(scope="module")
def exported_onnx(random_head_checkpoint, tmp_path_factory):
    classifier = load_classifier(random_head_checkpoint, "cpu")
    return classifier, export(classifier, "onnx", tmp_path_factory.mktemp("onnx") / "model.onnx")


def test_onnx_parity_within_1e_4_and_metadata(exported_onnx, parity_images):
    classifier, path = exported_onnx
    report = check_parity(classifier, path, "onnx", parity_inputs(classifier, parity_images), tolerance=1e-4)
    assert report.images == len(parity_images)
    assert report.ok and report.max_abs_diff <= 1e-4
    assert report.label_agreement == 1.0
    meta = read_metadata(path)
    assert meta["classes"] == classifier.classes and meta["backbone"] == "efficientnet_lite0"
    assert DataConfig.from_dict(meta["data_config"]) == classifier.data_config
    assert "centre crop 128x128" in meta["preprocess"]


def test_the_tolerance_is_a_share_of_each_outputs_largest_value(exported_onnx, parity_images):
    """An absolute 1e-4 failed a 2-epoch lite0's export on 432 of its test images, every decision the
    same: |Δfeature| 5.4e-4 on features up to 6.0, where fp32 kernels that sum in another order
    differ in proportion to the values."""
    from dataclasses import replace

    classifier, path = exported_onnx
    inputs = parity_inputs(classifier, parity_images)
    report = check_parity(classifier, path, "onnx", inputs, tolerance=1e-3)
    logits, _ = classifier.logits_and_features(torch.stack(inputs))
    assert report.logit_scale == pytest.approx(max(1.0, float(np.abs(logits).max())))
    per_image = np.abs(logits.numpy() if isinstance(logits, torch.Tensor) else logits).max(1)
    assert per_image.max() > max(1.0, per_image[-1])  # so a scale taken from one batch, not all, would differ
    for batch_size in (1, 2):  # the scale is of every image, whatever the batches (the last batch's alone passed: a mutation)
        assert check_parity(classifier, path, "onnx", inputs, tolerance=1e-3, batch_size=batch_size).logit_scale == pytest.approx(report.logit_scale)
    scaled = replace(report, max_abs_diff=1e-5, max_abs_feature_diff=5.4e-4, feature_scale=6.0)
    assert scaled.ok and "max |Δfeature| 0.00054 of 6" in scaled.describe()
    assert not replace(scaled, max_abs_feature_diff=7e-3).ok  # above 1e-3 x 6
    assert not replace(scaled, max_abs_diff=2e-3, logit_scale=1.0).ok  # small values: a share of 1, not of them


def test_onnx_accepts_any_batch_size(exported_onnx):
    import onnxruntime as ort

    _, path = exported_onnx
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        assert session.run(None, {"image": np.zeros((n, 3, 128, 128), np.float32)})[0].shape == (n, 10)


@pytest.fixture
def small_run(tmp_path):
    """A tiny grayscale LeNet-5 checkpoint with a run-style split.json (test split = the parity images)."""
    from training.data import load_splits

    root = make_image_folder(tmp_path / "data", per_class=6)
    run = tmp_path / "run"
    run.mkdir()
    load_splits(root, val_split=0.2, test_split=0.4, seed=0).save(run / "split.json")
    torch.manual_seed(0)
    config = DataConfig(input_size=32, resize_size=36).with_channels(1)
    save_checkpoint(run / "best.pt", model=build_model("lenet5", 3, "none", in_chans=1), backbone="lenet5",
                    classes=["fist", "palm", "peace"], data_config=config, train_config={})
    return run / "best.pt"


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_cli_uses_the_runs_test_split(small_run, capsys):
    assert main(["--checkpoint", str(small_run), "--format", "torchscript"]) == 0
    out = small_run.parent / "model.torchscript.pt"
    report = json.loads((out.parent / "model.torchscript.pt.parity.json").read_text())
    assert report["ok"] and report["images"] == 3 * 2 and report["max_abs_diff"] <= 1e-4
    meta = read_metadata(out)
    assert meta["classes"] == ["fist", "palm", "peace"] and meta["data_config"]["in_chans"] == 1
    assert "grayscale" in meta["preprocess"]
    root = json.loads((small_run.parent / "split.json").read_text())["root"]
    batch = Preprocess(DataConfig.from_dict(meta["data_config"])).load(f"{root}/palm/000.png")[None]
    assert torch.jit.load(str(out))(batch).shape == (1, 3)  # usable from the metadata alone
    assert "top-1 agreement 100.00%" in capsys.readouterr().out


ORIGINAL_EXPORT_ONNX = export_module.export_onnx


def tampered_onnx(classifier, path, **kwargs):
    """An export whose head bias is off by 0.5: what a broken exporter would produce."""
    import onnx
    from onnx import numpy_helper

    ORIGINAL_EXPORT_ONNX(classifier, path, **kwargs)
    proto = onnx.load(str(path))
    bias = next(t for t in proto.graph.initializer if t.name.endswith("fc.bias"))
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 0.5, bias.name))
    onnx.save(proto, str(path))
    return path


def test_an_export_cleans_up_what_a_killed_one_left(small_run, tmp_path, capsys):
    """A kill -9 before the rename left a hidden temporary file, a model's size, beside --out for good."""
    out = tmp_path / "exports" / "model.onnx"
    out.parent.mkdir()
    litter = [out.parent / ".model.onnx.k2j_x9aq.tmp.onnx", out.parent / ".model.onnx.0f3hs8d1.tmp.onnx"]
    keep = [out.parent / ".other.onnx.k2j_x9aq.tmp.onnx", out.parent / "model.onnx.tmp.onnx", out.parent / "notes.onnx"]
    for path in litter + keep:
        path.write_bytes(b"\0" * 100)
    assert main(["--checkpoint", str(small_run), "--out", str(out)]) == 0
    assert "removed 2 partial export file(s) left by an interrupted export" in capsys.readouterr().out
    assert not any(path.exists() for path in litter) and all(path.exists() for path in keep) and out.is_file()


def test_cli_fails_loudly_above_tolerance(small_run, monkeypatch, capsys):
    monkeypatch.setattr(export_module, "export_onnx", tampered_onnx)
    assert main(["--checkpoint", str(small_run), "--format", "onnx"]) == 1
    out = capsys.readouterr().out
    assert "FAILED (above tolerance 0.001 x the largest |value|)" in out and "max |Δlogit| 0.5" in out


def test_a_failed_export_keeps_the_parity_report_of_the_file_it_keeps(small_run, tmp_path, monkeypatch):
    """It was rewritten with "ok": false beside the good model that was kept, and left beside no model at a new name."""
    kept = tmp_path / "model.onnx"
    assert main(["--checkpoint", str(small_run), "--out", str(kept), "--max-images", "4"]) == 0
    report = (tmp_path / "model.onnx.parity.json").read_text()
    monkeypatch.setattr(export_module, "export_onnx", tampered_onnx)
    for out in (kept, tmp_path / "new.onnx"):
        assert main(["--checkpoint", str(small_run), "--out", str(out), "--max-images", "4"]) == 1
    assert (tmp_path / "model.onnx.parity.json").read_text() == report and json.loads(report)["ok"]
    assert not (tmp_path / "new.onnx").exists() and not (tmp_path / "new.onnx.parity.json").exists()


@pytest.mark.parametrize("name", ["model.txt", "model", ".pt"])
def test_a_torchscript_file_is_named_as_torchscript_files_are(small_run, tmp_path, capsys, name):
    """Any name but .onnx was written, under a message that asked for .pt."""
    assert main(["--checkpoint", str(small_run), "--format", "torchscript", "--out", str(tmp_path / name)]) == 2
    assert "a TorchScript file needs a name ending in .pt or .pth or .ts or .torchscript after a stem" in capsys.readouterr().err
    assert not (tmp_path / name).exists()


def test_an_onnx_opset_for_a_torchscript_export_is_refused(small_run, tmp_path, capsys):
    assert main(["--checkpoint", str(small_run), "--out", str(tmp_path / "m.pt"), "--opset", "13"]) == 2
    assert "error: --opset 13 is an ONNX setting, and --format is torchscript" in capsys.readouterr().err


def test_cli_errors_are_clear(small_run, tmp_path, capsys):
    assert main(["--checkpoint", str(small_run), "--format", "onnx", "--images", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_no_model_file_when_no_parity_image_decodes(small_run, tmp_path, capsys):
    """The model was written first, and stayed there, unchecked, when the parity check could not run."""
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    out = tmp_path / "model.onnx"
    assert main(["--checkpoint", str(small_run), "--format", "onnx", "--out", str(out), "--images", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "error: none of the 1 parity images could be decoded" in err and f"skipping {bad}: " in err and f"{bad}: {bad}" not in err
    assert not out.exists()
    for n in range(60):  # one line each was 60 lines above the error
        (tmp_path / "bad" / f"{n}.jpg").parent.mkdir(exist_ok=True)
        (tmp_path / "bad" / f"{n}.jpg").write_text("not a photo")
    assert main(["--checkpoint", str(small_run), "--out", str(out), "--images", str(tmp_path / "bad"), "--max-images", "60"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 7 and err[5] == "  ... and 55 more that do not decode", err
    assert err[6] == "error: none of the 60 parity images could be decoded: pass --images with photos that decode"


def recipe_decisions(meta: dict, logits: np.ndarray, features: np.ndarray) -> list[str | None]:
    """The metadata's "decision" recipe for energy_and_feature, written out here from its words, not
    from gesture_core: what a user of the file without this repository would write."""
    rule, classes = meta["rejection"], meta["classes"]
    t = rule["temperature"]
    scaled = logits / t
    top = scaled.max(1, keepdims=True)
    energies = t * (top[:, 0] + np.log(np.exp(scaled - top).sum(1)))
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    cosines = (unit @ np.asarray(rule["feature_means"]).T).max(1)

    def rank(x, reference):
        return np.array([np.mean(np.asarray(reference) <= v) for v in x])

    gesture = np.minimum(rank(energies, rule["reference"]), rank(cosines, rule["feature_reference"]))
    labels = [classes[i] for i in logits.argmax(1)]
    return [None if label in rule["reject_classes"] or g < rule["threshold"] else label for label, g in zip(labels, gesture, strict=True)]


@pytest.fixture(scope="module")
def feature_score_checkpoint(random_head_checkpoint, parity_images, tmp_path_factory):
    """The random-head checkpoint with an energy_and_feature rule made from the parity images' own
    outputs (references, class means), a temperature and a reject class: some are turned away."""
    from gesture_core.backbones import get_backbone, with_features
    from gesture_core.rejection import Rejection, energy

    state = torch.load(random_head_checkpoint, weights_only=True)
    classifier = load_classifier(random_head_checkpoint, "cpu", engine="torch")
    batch = torch.stack([classifier.preprocess.load(p) for p in parity_images])
    with torch.inference_mode():
        out = with_features(classifier.model, get_backbone(classifier.backbone))(batch).numpy().astype(np.float64)
    logits, features = out[:, :10], out[:, 10:]
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    means = unit[:4]

    def floats(values):
        return tuple(float(v) for v in values)

    def between(values):  # references between the images' own scores, so that no image sits on one
        ordered = np.sort(values)
        return floats((ordered[1:] + ordered[:-1]) / 2)

    rule = Rejection(("3",), 1.7, 0.5, True, "test rule", "energy_and_feature", between(energy(logits / 1.7, 1.7)),
                     tuple(map(floats, means)), between((unit @ means.T).max(1)))
    path = tmp_path_factory.mktemp("feature-ckpt") / "best.pt"
    torch.save({**state, "rejection": rule.to_dict()}, path)
    return path


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_exported_feature_score_model_carries_its_no_gesture_rule(feature_score_checkpoint, parity_images, fmt, tmp_path):
    classifier = load_classifier(feature_score_checkpoint, "cpu", engine="torch")
    path = export(classifier, fmt, tmp_path / f"model{export_module.SUFFIX[fmt]}")
    report = check_parity(classifier, path, fmt, parity_inputs(classifier, parity_images))
    assert report.ok and report.max_abs_feature_diff is not None and report.max_abs_feature_diff <= 1e-4
    assert report.decision_agreement == 1.0
    meta = read_metadata(path)
    assert meta["rejection"] == classifier.rejection.to_dict()
    assert "min(rank(" in meta["decision"] and "features: float32[N,1280]" in meta["output"]

    batch = torch.stack([classifier.preprocess.load(p) for p in parity_images])
    logits, features = export_module.ExportedRunner(path, fmt)(batch)
    expected = [classifier.predict(p).label for p in parity_images]
    assert recipe_decisions(meta, logits, features) == expected
    rejected = expected.count(None)
    assert 0 < rejected < len(expected), "the rule should turn some images away and accept others"
    assert report.no_gesture == rejected


def test_a_max_softmax_export_has_one_output_and_its_threshold(exported_onnx):
    _, path = exported_onnx
    meta = read_metadata(path)
    assert meta["rejection"]["score"] == "max_softmax" and "softmax(logits / temperature).max()" in meta["decision"]
    assert "features" not in meta["output"]


def test_a_file_exported_before_the_rule_was_stored_reads_as_uncalibrated(small_run, tmp_path):
    import onnx

    path = export(load_classifier(small_run, "cpu", engine="torch"), "onnx", tmp_path / "old.onnx")
    proto = onnx.load(str(path))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in ("rejection", "decision", "classes")]
    del proto.metadata_props[:]
    for key, value in kept + [("classes", json.dumps(["fist", "none", "peace"]))]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    rule = read_metadata(path)["rejection"]
    assert rule["calibrated"] is False and rule["threshold"] == 0.0 and rule["temperature"] == 1.0
    assert rule["reject_classes"] == ["none"]  # by name, as the checkpoint's own loader decides


def test_a_hand_crop_models_recipe_starts_from_each_hand(tmp_path):
    from training.export import export_metadata

    config = DataConfig(input_size=32, resize_size=36).with_hands(True)
    path = save_checkpoint(tmp_path / "best.pt", model=build_model("lenet5", 2, "none"), backbone="lenet5", classes=["a", "b"],
                           data_config=config, train_config={})  # fmt: skip
    recipe = export_metadata(load_classifier(path, device="cpu", engine="torch"))["preprocess"]
    assert recipe.startswith("RGB uint8 -> one upright 36x36 crop per hand") and "centre crop 32x32" in recipe


@pytest.mark.parametrize("fmt, name, kind", [("onnx", "model", "an ONNX file needs a name ending in .onnx after a stem, e.g. model.onnx"),
                                             ("onnx", ".onnx", "an ONNX file"),  # a hidden file's whole name: it has no suffix
                                             ("torchscript", "model.onnx", "a TorchScript file needs a name ending in .pt")])
def test_an_out_name_of_the_other_format_is_refused_before_the_export(small_run, tmp_path, capsys, fmt, name, kind):
    """The file was written, then read back as the other format for the parity check: a traceback."""
    assert main(["--checkpoint", str(small_run), "--format", fmt, "--out", str(tmp_path / name)]) == 2
    assert f"--out {tmp_path / name}: {kind}" in capsys.readouterr().err
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("out, fmt", [(None, "onnx"), ("m.onnx", "onnx"), ("m.pt", "torchscript"), ("m.TS", "torchscript")])
def test_the_format_follows_the_out_name_when_not_given(out, fmt):
    assert chosen_format(None, out) == fmt
    assert chosen_format("torchscript", out) == "torchscript"  # a named --format wins; a clash is refused in main


def test_an_out_name_that_says_no_format_asks_for_one(small_run, tmp_path, capsys):
    assert main(["--checkpoint", str(small_run), "--out", str(tmp_path / "model.bin")]) == 2
    err = capsys.readouterr().err
    assert "does not say the format: pass --format (onnx, torchscript), or name it .onnx or .pt" in err
    assert not (tmp_path / "model.bin").exists()


def test_export_with_only_an_out_name_writes_that_format(small_run, tmp_path):
    assert main(["--checkpoint", str(small_run), "--out", str(tmp_path / "model.pt"), "--max-images", "4"]) == 0
    assert read_metadata(tmp_path / "model.pt")["classes"]
    assert json.loads((tmp_path / "model.pt.parity.json").read_text())["format"] == "torchscript"
