"""Supervised-only baseline: the classifier sees the labeled few and nothing else."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import register_method
from .classifier import ClassifierConfig, ClassifierMethod


@register_method("supervised")
class Supervised(ClassifierMethod):
    @dataclass
    class Config(ClassifierConfig):
        pass

    def train_step(self, batch, step):
        loss = self.supervised_loss(self.net(self.augment(batch.x_l)), batch.y_l)
        self.update(loss)
        return {"train/sup_loss": loss.detach()}
