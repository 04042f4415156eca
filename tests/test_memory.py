"""A training batch that cannot fit in memory is refused before the first epoch, with the flag to
lower (training.memory): the kernel's out-of-memory killer ended such a run with no word."""

from __future__ import annotations

import torch

import training.finetune as finetune
from gesture_core.backbones import build_model, get_backbone
from tests.helpers import make_image_folder
from training import memory
from training.config import TrainConfig
from training.memory import StepMemory, batch_fits, measure_step

GB = 10**9


def test_one_images_share_grows_with_its_pixels_and_the_model_comes_back_as_it_was():
    model = build_model("mobilenet_v3_large", 4, "none").to(memory_format=torch.channels_last)
    model.eval()
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    torch.manual_seed(3)
    expected_draw = torch.rand(3)
    torch.manual_seed(3)
    small, large = (measure_step(model, (3, size, size), torch.device("cpu"), amp=False) for size in (64, 128))
    assert torch.equal(torch.rand(3), expected_draw)  # dropout drew from a forked generator
    assert not model.training and all(torch.equal(b, buffers[name]) for name, b in model.named_buffers())
    assert 3.5 < large.per_image / small.per_image < 4.5  # the activations go with the pixels
    assert all(p.grad is None for p in model.parameters())
    bf16 = measure_step(model, (3, 128, 128), torch.device("cpu"), amp=True)
    assert 0.3 < bf16.per_image / large.per_image < 0.7  # autocast keeps bf16 activations: half the bytes


def test_an_input_whose_last_feature_map_is_one_pixel_is_measured():
    """A batch of one image left batch norm one value a channel at 32 px, which it refuses in training."""
    model = build_model("resnet18", 3, "none").to(memory_format=torch.channels_last)
    assert measure_step(model, (3, 32, 32), torch.device("cpu"), amp=False).per_image > 0


def test_inceptions_auxiliary_classifier_is_measured_at_the_size_it_takes():
    """Measured at 224 px, its auxiliary classifier's 5x5 convolution met a 3x3 map: every Inception run
    at its own 299 px failed there."""
    backbone = get_backbone("inception_v3")
    model = build_model("inception_v3", 3, "none", aux=True).to(memory_format=torch.channels_last)
    cfg = TrainConfig(backbone="inception_v3", data="gestures", batch_size=8, image_size=299)
    finetune.check_memory(cfg, model, backbone, backbone.data_config.with_input_size(299), torch.device("cpu"), False, images=100)


def test_a_batch_that_cannot_fit_is_refused_with_the_batch_that_would_and_one_that_may_not_is_warned_of():
    step = StepMemory(per_image=GB, fixed=GB)
    kwargs = dict(size=1000, size_flag="--train-size", backbone="efficientnet_lite0", where="this machine")
    assert batch_fits(step, int(21.5 * GB), batch=32, **kwargs) == (
        "a training batch of 32 images at 1000 px needs about 33.0 GB for efficientnet_lite0, and this machine has 21.5 GB free: "
        "pass --batch-size 16, or a smaller --train-size", None)
    assert batch_fits(step, int(1.5 * GB), batch=32, **kwargs)[0].endswith("free: pass a smaller --train-size")
    problem, warning = batch_fits(step, 40 * GB, batch=32, **kwargs)
    assert problem is None and "may be killed for lack of memory" in warning
    assert batch_fits(step, 100 * GB, batch=32, **kwargs) == (None, None)


def test_finetune_refuses_a_batch_larger_than_the_free_memory_before_it_writes_anything(tmp_path, monkeypatch, capsys):
    data = make_image_folder(tmp_path / "gestures", per_class=10, size=48)
    monkeypatch.setattr(memory, "free_bytes", lambda device: 10**6)  # 1 MB: not one image's activations at 64 px
    out = tmp_path / "run"
    argv = ["--data", str(data), "--out", str(out), "--backbone", "mobilenet_v3_large", "--weights", "none", "--image-size", "64", "--workers", "0"]
    assert finetune.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: a training batch of 21 images at 64 px needs about ") and err.endswith(
        "GB for mobilenet_v3_large, and this machine has 0.0 GB free: pass a smaller --image-size"), err
    assert len(err.splitlines()) == 1 and not out.exists()
    monkeypatch.undo()
    assert finetune.main([*argv, "--epochs", "1"]) == 0  # with the machine's own free memory it trains


def test_free_memory_is_the_containers_share_divided_among_torchruns_local_processes(tmp_path, monkeypatch):
    """Each of torchrun's processes on a machine trains its own batch: dividing the free memory among them was
    dropped without a test failing (a mutation), and so was the container's limit below the machine's memory."""
    from types import SimpleNamespace

    monkeypatch.setattr(memory.psutil, "virtual_memory", lambda: SimpleNamespace(available=8_000_000_000))
    monkeypatch.setattr(memory, "CGROUP", tmp_path)  # no cgroup v2 files: the machine's memory
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert memory.free_bytes(torch.device("cpu")) == 4_000_000_000
    (tmp_path / "memory.max").write_text("6000000000\n")
    (tmp_path / "memory.current").write_text("1000000000\n")
    assert memory.free_bytes(torch.device("cpu")) == 2_500_000_000  # the container's 5 GB left, for two
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    (tmp_path / "memory.max").write_text("max\n")
    assert memory.free_bytes(torch.device("cpu")) == 8_000_000_000
