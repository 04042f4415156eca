"""Exponential moving average of a model's weights (Polyak averaging, as timm's ``ModelEmaV3``).

On a small dataset validation accuracy swings by a point between epochs; the average of the last few
hundred steps is steadier and usually a little better than any single step's weights. With
``--ema-decay``, validation, ``best.pt`` and the test all use the average.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEma:
    """``module`` holds the average of ``model``'s weights; BatchNorm statistics are averaged too.

    The decay warms up as ``(1 + n) / (10 + n)`` after ``n`` updates (capped at ``decay``), so the
    average is not anchored to the weights it started from.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        pairs = list(zip(self.module.state_dict().values(), model.state_dict().values(), strict=True))
        self._averaged = [e for e, _ in pairs if e.is_floating_point()]
        self._live = [m for e, m in pairs if e.is_floating_point()]
        self._copied = [(e, m) for e, m in pairs if not e.is_floating_point()]  # BatchNorm's num_batches_tracked

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Fold the model's current weights in; call after every optimizer step."""
        self.updates += 1
        torch._foreach_lerp_(self._averaged, self._live, 1.0 - self.current_decay())
        for e, m in self._copied:
            e.copy_(m)

    @torch.no_grad()
    def reset(self) -> None:
        """Restart the average from the model's current weights (after epochs trained outside ``update``)."""
        self.updates = 0
        torch._foreach_copy_(self._averaged, self._live)
        for e, m in self._copied:
            e.copy_(m)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])
