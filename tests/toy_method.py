"""A toy method that exists only for tests/test_new_method.py: loaded as a pytest plugin (`-p toy_method`) before
the test files are collected, it registers `toy_gmm` the way a new method's file does, and the
registry-parametrized tests then check it with no entry anywhere else.

A semi-supervised Gaussian mixture with one isotropic component per class (Nigam, McCallum, Thrun & Mitchell
2000, with gradient steps instead of EM): p(y) = 1/K, p(x | y) = N(mu_y, s^2 I), fitted by
    L = -mean_l log p(y_l | x_l) - w * mean_u log sum_y exp(-||x_u - mu_y||^2 / (2 s^2))
(the labeled images' posterior and the unlabeled images' likelihood, up to constants); predictions are
log p(y | x), the features the K squared distances.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genssl.methods.base import Method
from genssl.registry import register_method


@register_method("toy_gmm")
class ToyGMM(Method):
    supports_stacking = True  # one stage_loss

    @dataclass
    class Config:
        scale: float = 2.0
        """s in pixels' units over the whole image: the components' width."""
        unlabeled_weight: float = 1.0
        lr: float = 0.05

    def __init__(self, cfg: Config, spec):
        super().__init__(cfg, spec)
        d = 1
        for n in spec.image_shape:
            d *= n
        self.means = nn.Parameter(0.5 + 0.01 * torch.randn(spec.num_classes, d))  # (K, D)

    def configure_optimizers(self):
        return {"main": torch.optim.Adam(self.parameters(), lr=self.cfg.lr)}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cdist(x.flatten(1).float(), self.means) ** 2  # (B, K)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return -self.encode(x) / (2 * self.cfg.scale ** 2)  # log p(y | x) up to a constant: (B, K)

    def stage_loss(self, name, batch, step, carry):
        sup = F.cross_entropy(self.predict(batch.x_l), batch.y_l)
        unsup = -torch.logsumexp(self.predict(batch.x_u), 1).mean()
        loss = sup + self.cfg.unlabeled_weight * unsup
        return loss, {"train/sup_loss": sup.detach(), "train/unsup_loss": unsup.detach()}, carry
