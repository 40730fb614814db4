"""Shared pieces of the purely discriminative methods (supervised and the pseudo-labeling baselines):
one classifier network, Adam, and a fused forward over labeled and unlabeled images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genssl.data.augment import random_translate
from genssl.nn.classifiers import make_classifier
from genssl.data.spec import DataSpec
from genssl.methods.base import Method
from genssl.nn.classifiers import ClassifierFeatures


@dataclass
class ClassifierConfig:
    arch: str = "mlp"
    """mlp | conv"""
    hidden: tuple[int, ...] = (500, 500)
    """MLP hidden widths."""
    dropout: float = 0.3
    lr: float = 1e-3
    weight_decay: float = 5e-4
    augment_shift: int = 0
    """Random translation (pixels) applied to training images; 0 disables."""


class ClassifierMethod(Method):
    def __init__(self, cfg: ClassifierConfig, spec: DataSpec):
        super().__init__(cfg, spec)
        self.net = make_classifier(cfg.arch, spec.image_shape, spec.num_classes, cfg.hidden, cfg.dropout)

    def configure_optimizers(self):
        return {"main": torch.optim.AdamW(self.net.parameters(), lr=self.cfg.lr,
                                          weight_decay=self.cfg.weight_decay)}

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        return random_translate(x, self.cfg.augment_shift)

    def logits_lu(self, x_l: torch.Tensor, x_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass over labeled and unlabeled images together (one set of kernels, and batch norm
        sees both)."""
        logits = self.net(torch.cat([x_l, x_u]))
        return logits[: x_l.shape[0]], logits[x_l.shape[0]:]

    def supervised_loss(self, logits_l: torch.Tensor, y_l: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits_l.float(), y_l)

    def predict(self, x):
        return self.net(x)

    def encode(self, x):
        return self.net.features(x)

    def encoder_module(self):
        """The feature extractor as an exportable net (shares this method's weights; see genssl.encoders.format)."""
        c = self.cfg
        return ClassifierFeatures(c.arch, self.spec.image_shape, self.spec.num_classes, c.hidden, c.dropout,
                                  net=self.net)
