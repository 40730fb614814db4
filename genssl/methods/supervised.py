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
    # precision: auto -> bf16 with the ConvNet on a CPU with native bf16: its step 1.62x faster (classifier.py),
    # and not `worse` than fp32 + NCHW by the paired test at the matched study's 240 s budget, seeds 0-5: test %
    # 75.11 ± 0.74 against 72.90 ± 1.16, +2.21 points [+0.94, +3.23] (BCa), sign-flip p 0.031 (Holm 0.063),
    # undecided in bf16's favour (AMD EPYC with avx512_bf16, 2026-12-07; experiments/README.md, "The conv
    # classifiers").
    auto_bf16 = frozenset({"conv"})

    @dataclass
    class Config(ClassifierConfig):
        pass

    def stage_loss(self, name, batch, step, carry):
        """Cross-entropy on the labeled batch (one stage: Method.train_step runs it)."""
        loss = self.supervised_loss(self.net(self.augment(batch.x_l)), batch.y_l)
        return loss, {"train/sup_loss": loss.detach()}, carry
