"""Exponential moving average of a network's parameters, for evaluation (Polyak averaging).

    theta_ema <- d * theta_ema + (1 - d) * theta,     d_t = min(decay, (1 + t) / (10 + t))

The warm-up term keeps early averages from being dominated by the initial weights in short runs (the
improved-GAN code instead starts its average at zero with d = 0.9999 over ~10^5 steps). Buffers (batch-norm
statistics, frozen weight-norm scales) are copied, not averaged.

The average is a registered sub-module holding a full copy of the network, so it lives in the owner's
state_dict: checkpoints and resumes restore it exactly. Generic: any method can hold one.

The update count t lives on the device and d_t is computed there, so an update is device work only: no host
synchronisation, and a CUDA graph that replays it (genssl.training.captured) keeps counting. The arithmetic is
the float64 of the Python formula, then one rounding to float32 as before, so the weights are the same bits.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    def __init__(self, model: nn.Module, decay: float = 0.999):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = copy.deepcopy(model).requires_grad_(False)
        self.shadow.eval()
        # t, a float64 0-d tensor on the weights' device (moved there at the first update); not a buffer, so the
        # state_dict keys and the stacked-seeds stacking of buffers are unchanged. Saved through get_extra_state.
        self._count = torch.zeros((), dtype=torch.float64)

    @property
    def num_updates(self) -> int:
        return int(self._count)

    def train(self, mode: bool = True):
        super().train(mode)
        self.shadow.eval()  # the average is for evaluation only: no dropout or noise in it
        return self

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Copy the current weights (e.g. after data-dependent initialization)."""
        self.shadow.load_state_dict(model.state_dict())
        self._count.zero_()  # in place: a captured graph keeps counting in this tensor

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_p = list(self.shadow.parameters())
        p = [q.detach() for q in model.parameters()]
        if len(ema_p) != len(p):
            raise ValueError(f"EMA: model has {len(p)} parameters but its average has {len(ema_p)}")
        if self._count.device != ema_p[0].device:
            self._count = self._count.to(ema_p[0].device)
        t = self._count.add_(1)
        d = ((1 + t) / (10 + t)).clamp_(max=self.decay)  # float64, as the Python formula
        weight = (1 - d).to(ema_p[0].dtype)  # (), rounded once, as a float weight is
        torch._foreach_lerp_(ema_p, p, [weight] * len(ema_p))
        for b_ema, b in zip(self.shadow.buffers(), model.buffers()):
            b_ema.copy_(b)

    def forward(self, *args, **kwargs):
        return self.shadow(*args, **kwargs)

    def get_extra_state(self) -> dict:
        return {"num_updates": self.num_updates}

    def set_extra_state(self, state: dict) -> None:
        self._count.fill_(float(state["num_updates"]))
