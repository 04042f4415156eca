"""training.visualize: stages found generically, and Grad-CAM on the checkpoint's own crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gesture_core import build_model, load_classifier, read_rgb
from training.visualize import first_middle_last, grad_cam, main, spatial_stages


def real_or_synthetic_image(tmp_path):
    from tests.helpers import SHARED_DATA, synthetic_image, write_rgb

    real = sorted((SHARED_DATA / "sign-digits" / "3").glob("*.JPG"))
    return real[0] if real else write_rgb(tmp_path / "hand.png", synthetic_image(2, seed=7, size=120))


def test_gradcam_has_the_crop_shape_and_is_not_constant(random_head_checkpoint, tmp_path):
    classifier = load_classifier(random_head_checkpoint, "cpu")
    rgb = classifier.preprocess.read(real_or_synthetic_image(tmp_path))
    cam = grad_cam(classifier, classifier.crop(rgb))
    assert cam.heatmap.shape == classifier.preprocess.crop(rgb).shape[:2] == (128, 128)
    assert cam.heatmap.dtype == np.float32
    assert cam.heatmap.min() >= 0.0 and cam.heatmap.max() == pytest.approx(1.0)
    assert cam.heatmap.std() > 0.05
    assert cam.class_index == int(classifier.predict_proba([rgb])[0].argmax())
    assert cam.layer == "bn2"  # timm EfficientNet's last conv stage (conv_head + BN + ReLU6)
    other = grad_cam(classifier, classifier.crop(rgb), (cam.class_index + 1) % 10)
    assert other.label != cam.label and not np.allclose(other.heatmap, cam.heatmap)


@pytest.mark.parametrize(("name", "expected"), [
    ("resnet18", ["relu", "layer1", "layer2", "layer3", "layer4"]),
    ("googlenet", ["conv1", "conv3", "inception3b", "inception4e", "inception5b"]),
])
def test_stages_follow_the_architecture(name, expected):
    torch.manual_seed(0)
    model = build_model(name, 4, "none")
    stages = spatial_stages(model, torch.randn(1, 3, 96, 96))
    assert [s.name for s in stages] == expected
    assert [s.name for s in first_middle_last(stages)] == [expected[0], expected[2], expected[-1]]
    sides = [s.output.shape[-1] for s in stages]
    assert sides == sorted(sides, reverse=True) and len(set(sides)) == len(sides)


def test_cli_writes_pngs_and_rejects_unknown_class(random_head_checkpoint, tmp_path, capsys):
    image = real_or_synthetic_image(tmp_path)
    out = tmp_path / "vis"
    assert main(["--checkpoint", str(random_head_checkpoint), "--image", str(image), "--class", "7", "--out", str(out)]) == 0
    for png in ("feature_maps.png", "gradcam.png"):
        img = read_rgb(out / png)
        assert img.shape[0] > 100 and img.std() > 10
    assert "Grad-CAM at bn2" in capsys.readouterr().out
    assert main(["--checkpoint", str(random_head_checkpoint), "--image", str(image), "--class", "seven", "--out", str(out)]) == 2
    assert "choose from 0, 1, 2" in capsys.readouterr().err


def test_gradcam_states_the_calibrated_probability_predict_gives(random_head_checkpoint, tmp_path):
    """It printed the softmax of the raw logits: 0.522 where predict, evaluate and the service said 0.678."""
    ckpt = torch.load(random_head_checkpoint, weights_only=True)
    ckpt["rejection"] = {**ckpt.get("rejection", {}), "reject_classes": [], "temperature": 0.5, "threshold": 0.0, "calibrated": True}
    torch.save(ckpt, tmp_path / "calibrated.pt")
    classifier = load_classifier(tmp_path / "calibrated.pt", "cpu")
    assert classifier.rejection.temperature == 0.5
    rgb = classifier.preprocess.read(real_or_synthetic_image(tmp_path))
    cam = grad_cam(classifier, classifier.crop(rgb))
    assert cam.probability == pytest.approx(float(classifier.predict_proba([rgb])[0].max()), abs=1e-4)
