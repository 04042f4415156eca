"""What a run does with no flags: flips that know left from right, bf16 where the CPU has it, --help that shows every default."""

from __future__ import annotations

import importlib
import json
import re

import albumentations as A
import pytest
import torch

import training.finetune as finetune
from gesture_core import get_backbone
from tests.helpers import make_image_folder
from training.augment import direction_sensitive, resolve_flip
from training.config import TrainConfig
from training.loop import cpu_native_bf16, resolve_amp


@pytest.mark.parametrize("names, sensitive", [
    (["point_left", "point_right", "fist"], ["point_left", "point_right"]),
    (["swipeLeft", "SwipeRight", "turn-CW", "rotate_anticlockwise", "LEFT_HAND"], ["swipeLeft", "SwipeRight", "turn-CW", "rotate_anticlockwise", "LEFT_HAND"]),
    (["Bright", "upright", "leftover", "copyright", "L", "R", "right-ish"], ["right-ish"]),
    (["swipeleft", "swiperight", "pointingleft", "lefthand", "rightturn", "alright", "righteous", "leftovers"], ["swipeleft", "swiperight", "pointingleft", "lefthand", "rightturn"]),
    ([str(d) for d in range(10)], []),
])  # fmt: skip
def test_direction_words_are_found_as_whole_words_only(names, sensitive):
    assert direction_sensitive(names) == sensitive


def test_flip_auto_on_class_names():
    assert resolve_flip("auto", ["fist", "palm", "none"])[0] is True
    flip, line = resolve_flip("auto", ["fist", "point_left", "point_right"])
    assert flip is False and "point_left, point_right" in line and "--flip on" in line
    assert resolve_flip("on", ["point_left"])[0] is True and resolve_flip("off", ["fist"])[0] is False
    with pytest.raises(ValueError, match="auto, on, off"):
        resolve_flip("sometimes", ["fist"])


def has_flip(transform) -> bool:
    return any(isinstance(step, A.HorizontalFlip) for step in transform.pipeline.transforms)


@pytest.mark.parametrize("classes, setting, flips", [
    (("fist", "point_left", "point_right"), "auto", False),
    (("fist", "palm", "peace"), "auto", True),
    (("fist", "point_left", "point_right"), "on", True),
])  # fmt: skip
def test_start_up_settles_flip_says_why_and_stores_it(tmp_path, capsys, classes, setting, flips):
    data = make_image_folder(tmp_path / "d", classes=classes, per_class=6, size=32)
    cfg = TrainConfig(backbone="lenet5", data=str(data), out=str(tmp_path / "run"), weights="none", flip=setting, workers=0, image_size=32)
    run = finetune.prepare_run(cfg, None)
    train_loader = finetune.make_loaders(run)[0]
    assert has_flip(train_loader.dataset.transform) is flips
    out = capsys.readouterr().out
    assert f"horizontal flips {'on' if flips else 'off'} (--flip {setting}" in out
    assert json.loads((run.out / "config.json").read_text())["flip"] == ("on" if flips else "off")


def test_old_no_flip_and_boolean_configs_still_work():
    cfg, _ = finetune.parse_config(["--data", "x", "--no-flip"])
    assert cfg.flip == "off"
    old = TrainConfig.from_dict({"flip": True})  # a config.json from before --flip auto|on|off
    assert (old.flip, old.crop, old.group_by) == ("on", "center", "none")  # resumed as it ran, not re-decided
    assert TrainConfig.from_dict({"flip": False}).flip == "off" and TrainConfig.from_dict({}).group_by == "auto"


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        finetune.parse_config(["--help"])
    text = capsys.readouterr().out.split("options:", 1)[1]
    entries = [re.sub(r"\s+", " ", e) for e in re.split(r"\n  (?=-)", text)[1:]]  # one per option, as argparse lays them out
    without = sorted(e.split()[0].rstrip(",") for e in entries if "default" not in e)
    assert without == ["--data", "--no-flip", "--resume", "-h"]
    assert "(default: True)" not in text and "(default: None)" not in text
    assert "--epochs EPOCHS passes over the training images (default: 10)" in entries


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    with_flag, without = tmp_path / "with", tmp_path / "without"
    with_flag.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n")
    assert cpu_native_bf16(str(with_flag)) == "avx512_bf16" and cpu_native_bf16(str(without)) is None
    assert cpu_native_bf16(str(tmp_path / "missing")) is None


ZEN5_FLAGS = "fpu sse avx2 avx512f avx512_bf16 avx512_vnni"  # native bf16 in the vector units, no AMX
AMX_XEON_FLAGS = "fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"
AVX2_FLAGS = "fpu sse avx2"


@pytest.mark.parametrize(
    "flags, backbone, amp",
    [
        (ZEN5_FLAGS, "efficientnet_lite1", True),  # bf16 everywhere without AMX
        (ZEN5_FLAGS, "resnet18", True),
        (AMX_XEON_FLAGS, "resnet18", True),  # AMX: dense convolutions 2.4x faster in bf16
        (AMX_XEON_FLAGS, "efficientnet_lite1", False),  # AMX: depthwise backbones faster in fp32
        (AMX_XEON_FLAGS, "efficientnet_lite0", False),
        (AMX_XEON_FLAGS, "mobilenet_v3_large", False),
        (AVX2_FLAGS, "resnet18", False),  # emulated bf16: fp32
        (AVX2_FLAGS, "efficientnet_lite1", False),
    ],
)
def test_amp_auto_depends_on_the_cpu_and_the_backbone(tmp_path, flags, backbone, amp):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    on, line = resolve_amp("auto", torch.device("cpu"), get_backbone(backbone), cpuinfo=str(cpuinfo))
    assert on is amp
    assert line.startswith("mixed precision on: bf16" if amp else "mixed precision off: fp32")
    if "amx_bf16" in flags and not amp:
        assert backbone in line and "amx_bf16" in line and "--amp on" in line  # says why, and how to override
    # an explicit choice wins, and a CUDA device always gets autocast
    assert resolve_amp("on", torch.device("cpu"), get_backbone(backbone), cpuinfo=str(cpuinfo))[0] is True
    assert resolve_amp("off", torch.device("cpu"), get_backbone(backbone), cpuinfo=str(cpuinfo))[0] is False
    assert resolve_amp("auto", torch.device("cuda"), get_backbone(backbone), cpuinfo=str(cpuinfo))[0] is True


def test_the_depthwise_flag_matches_each_backbones_convolutions():
    """``Backbone.depthwise`` (which --amp auto reads) is declared in the registry; check it against
    the built networks: a fifth or more of a depthwise backbone's convolutions are depthwise (MobileNetV3:
    a quarter, beside its squeeze-excitation convolutions; EfficientNet-Lite: a third), none of
    a dense one's."""
    for name in ("resnet18", "densenet121", "mobilenet_v3_large", "efficientnet_lite0", "efficientnet_lite2"):
        convs = [m for m in get_backbone(name).build(10).modules() if isinstance(m, torch.nn.Conv2d)]
        share = sum(m.groups > 1 and m.groups == m.in_channels for m in convs) / len(convs)
        assert (share >= 1 / 5) is get_backbone(name).depthwise and (share == 0) is (not get_backbone(name).depthwise), (name, share)


def test_amp_auto_follows_this_cpu():
    amp, line = resolve_amp("auto", torch.device("cpu"))
    if cpu_native_bf16():
        assert amp and "bf16" in line and cpu_native_bf16() in line
    else:
        assert not amp and "fp32" in line
    assert resolve_amp("off", torch.device("cpu"))[0] is False and resolve_amp("on", torch.device("cpu"))[0] is True


@pytest.mark.parametrize("command", ["calibrate", "compare", "evaluate", "export", "inspect", "visualize"])
def test_every_training_command_help_reads_its_defaults_once(command):
    """The other training commands share finetune's formatter: no "(default: None)", and an option whose
    help already says its default does not say it twice."""
    text = importlib.import_module(f"training.{command}").build_parser().format_help()
    assert "(default: None)" not in text and "(default: True)" not in text
    assert not re.search(r"\(default[^)]*\)\s*\(default", text), text


@pytest.mark.parametrize("module", ["training.finetune", "training.evaluate", "training.calibrate", "training.export", "training.inspect",
                                    "training.visualize", "training.compare", "training.check", "training.prepare", "service.import_model",
                                    "service.webcam.demo", "service.webcam.capture"])
def test_every_commands_help_says_what_each_option_is_and_no_placeholder_default(module, capsys):
    """argparse's own formatter wrote "(default: None)" for an option with no default, "(default: False)"
    for a switch and "(default: ())" for an empty list (the webcam's --help, seven times), and an option
    without help showed neither what it does nor its default (evaluate's --batch-size, --workers, --device)."""
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert not re.search(r"\(default: (None|True|False|\(\)|\[\])\)", re.sub(r"\s+", " ", text))
    options = re.split(r"\n  (?=-)", text.split("options:", 1)[1])[1:]  # one per option, as argparse lays them out
    bare = [entry.strip() for entry in options if "  " not in entry.strip() and "\n" not in entry.strip()]
    assert not bare, f"options with no help: {bare}"
