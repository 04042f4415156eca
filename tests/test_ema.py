"""training.ema.ModelEma: the averaging arithmetic, BatchNorm buffers, reset and checkpoint round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.ema import ModelEma


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_each_update_moves_the_average_by_the_warmed_up_decay():
    model = net()
    ema = ModelEma(model, decay=0.99)
    start = model[0].weight.detach().clone()
    for step in range(1, 40):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        before = ema.module[0].weight.clone()
        ema.update()
        decay = min(0.99, (1 + step) / (10 + step))
        torch.testing.assert_close(ema.module[0].weight, decay * before + (1 - decay) * model[0].weight)
    assert ema.current_decay() == pytest.approx(40 / 49) and not torch.equal(ema.module[0].weight, start)


def test_batchnorm_statistics_are_averaged_and_counters_copied():
    model = net().train()
    ema = ModelEma(model, decay=0.5)
    model(torch.randn(8, 3) + 5.0)
    ema.update()
    decay = ema.current_decay()
    torch.testing.assert_close(ema.module[1].running_mean, (1 - decay) * model[1].running_mean)  # started from zeros
    assert int(ema.module[1].num_batches_tracked) == int(model[1].num_batches_tracked) == 1


def test_reset_and_state_dict_round_trip():
    model = net()
    ema = ModelEma(model, decay=0.9)
    with torch.no_grad():
        model[0].bias.fill_(3.0)
    ema.update()
    saved = ema.state_dict()
    other = ModelEma(net(), decay=0.9)
    other.load_state_dict(saved)
    assert other.updates == 1 and torch.equal(other.module[0].bias, ema.module[0].bias)
    ema.reset()
    assert ema.updates == 0 and torch.equal(ema.module[0].bias, model[0].bias)


def test_averaged_copy_never_trains():
    ema = ModelEma(net(), decay=0.9)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5])
def test_decay_outside_the_open_unit_interval_is_refused(decay):
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        ModelEma(net(), decay)
