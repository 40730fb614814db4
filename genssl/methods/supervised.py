"""Supervised-only baseline: the classifier sees the labeled few and nothing else."""

from __future__ import annotations

from dataclasses import dataclass

from genssl.methods.classifier import ClassifierConfig, ClassifierMethod
from genssl.registry import register_method


@register_method("supervised")
class Supervised(ClassifierMethod):
    supports_stacking = True
    capturable = True
    uses_unlabeled = False  # the labeled few only

    @dataclass
    class Config(ClassifierConfig):
        pass

    def stage_loss(self, name, batch, step, carry):
        """Cross-entropy on the labeled batch (one stage: Method.train_step runs it)."""
        loss = self.supervised_loss(self.net(self.augment(batch.x_l)), batch.y_l)
        return loss, {"train/sup_loss": loss.detach()}, carry
