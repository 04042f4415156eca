"""The training recipe's parts, each against numbers worked out by hand: a schedule, an optimizer's groups, a
loss or a best-epoch rule that is wrong still trains, so no run-level test notices (mutations passed them all)."""

from __future__ import annotations

import math

import pytest
import torch

from gesture_core import build_model, get_backbone
from training.finetune import is_improvement
from training.loop import build_optimizer, classification_loss, warmup_cosine


def test_the_schedule_warms_up_linearly_then_decays_along_a_cosine_to_zero():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, total_steps=10, warmup_steps=4)
    rates = []
    for _ in range(11):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert rates[7] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 6))) and rates[10] == pytest.approx(0.0, abs=1e-12)


def test_the_backbone_learns_at_its_multiple_of_the_heads_rate():
    model, backbone = build_model("resnet18", 3, "none"), get_backbone("resnet18")
    optimizer = build_optimizer(model, backbone, opt="adamw", lr=1e-3, backbone_lr_mult=0.3, weight_decay=0.0, momentum=0.9)
    head, rest = optimizer.param_groups
    assert head["lr"] == pytest.approx(1e-3) and rest["lr"] == pytest.approx(3e-4)
    assert {id(p) for p in head["params"]} == {id(p) for p in model.fc.parameters()}
    assert len(head["params"]) + len(rest["params"]) == len(list(model.parameters()))


def test_label_smoothing_spreads_its_share_of_the_target_over_every_class():
    logits, target = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    log_p = torch.log_softmax(logits, 1)[0]
    plain = classification_loss(logits, target, aux_weight=0.0, label_smoothing=0.0, class_weights=None)
    smoothed = classification_loss(logits, target, aux_weight=0.0, label_smoothing=0.2, class_weights=None)
    assert float(plain) == pytest.approx(-float(log_p[0]))
    assert float(smoothed) == pytest.approx(-(0.9 * float(log_p[0]) + 0.1 * float(log_p[1])))


def test_the_best_epoch_is_the_higher_validation_accuracy_then_the_lower_loss_and_a_tie_keeps_the_earlier():
    best = {"val_top1": 0.6, "val_loss": 1.0}
    assert is_improvement({"val_top1": 0.7, "val_loss": 2.0}, best)  # accuracy first
    assert is_improvement({"val_top1": 0.6, "val_loss": 0.9}, best)  # then the loss
    assert not is_improvement({"val_top1": 0.6, "val_loss": 1.0}, best)  # a tie is no reason to replace best.pt
    assert not is_improvement({"val_top1": 0.5, "val_loss": 0.1}, best)
    assert is_improvement({"val_top1": None, "val_loss": float("nan")}, best)  # no validation: the latest is kept
    assert is_improvement(best, None)


def test_validation_images_go_through_the_served_preprocessing_not_the_augmentation(tmp_path):
    """Validation under the training augmentation (at the served size) scored another view than the service sees
    and chose the best epoch on it (a mutation the suite passed): its images must be the eval transform's, each time."""
    import training.finetune as finetune
    from tests.helpers import make_image_folder
    from tests.test_finetune import tiny_config
    from training.augment import build_eval_transform
    from training.data import decode_file

    data = make_image_folder(tmp_path / "data", per_class=10, size=64)
    run = finetune.prepare_run(tiny_config(data, tmp_path / "run", augment="default", flip="on"), None)
    _, _, val_loader = finetune.make_loaders(run)
    first, second = (torch.cat([images for images, _, _ in val_loader]) for _ in range(2))
    served = build_eval_transform(run.data_config)
    expected = torch.stack([served(decode_file(s.path, run.data_config.resize_size)) for s in run.splits.val])
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(first, expected, rtol=0, atol=1e-6)
