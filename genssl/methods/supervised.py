"""Supervised-only baseline: the classifier sees the labeled few and nothing else."""

from __future__ import annotations

from dataclasses import dataclass

from genssl.registry import register_method
from genssl.methods.classifier import ClassifierConfig, ClassifierMethod


@register_method("supervised")
class Supervised(ClassifierMethod):
    @dataclass
    class Config(ClassifierConfig):
        pass

    def stage_loss(self, name, batch, step, carry):
        """The step's one loss, apart from the update, so genssl.training.stacked can train seeds together."""
        loss = self.supervised_loss(self.net(self.augment(batch.x_l)), batch.y_l)
        return loss, {"train/sup_loss": loss.detach()}, carry

    def train_step(self, batch, step):
        loss, logs, _ = self.stage_loss("main", batch, step, {})
        self.update(loss)
        return logs
