"""Pseudo-Label (Lee, 2013, "Pseudo-Label: The Simple and Efficient Semi-Supervised Learning Method").

Unlabeled images take as label the class of maximum predicted probability of the *current* network,
recomputed at every weight update (eq. 1), and enter the loss with a weight that is ramped up (eq. 15-16):

    L = CE(f(x_l), y_l) + alpha(t) * CE(f(x_u), argmax f(x_u))
    alpha(t) = 0                                   t < T1
             = alpha_f * (t - T1) / (T2 - T1)      T1 <= t < T2
             = alpha_f                             T2 <= t

The paper uses T1 = 100, T2 = 600 of 2000 epochs and alpha_f = 3; we express T1, T2 as fractions of
the run so the schedule keeps its shape for any length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genssl.methods.classifier import ClassifierConfig, ClassifierMethod
from genssl.methods.schedules import ramp_weight
from genssl.registry import register_method


@register_method("pseudo_label")
class PseudoLabel(ClassifierMethod):
    @dataclass
    class Config(ClassifierConfig):
        alpha_final: float = 3.0
        """alpha_f, the weight of the pseudo-label loss once the ramp ends (eq. 16)."""
        ramp_start: float = 0.05
        """T1 as a fraction of train.steps."""
        ramp_end: float = 0.3
        """T2 as a fraction of train.steps."""

    def train_step(self, batch, step):
        alpha = ramp_weight(step, self.total_steps, self.cfg.ramp_start, self.cfg.ramp_end, self.cfg.alpha_final)
        logits_l, logits_u = self.logits_lu(self.augment(batch.x_l), self.augment(batch.x_u))
        sup = self.supervised_loss(logits_l, batch.y_l)
        pseudo = logits_u.detach().argmax(1)  # the network's own current guess, no gradient through it
        unsup = F.cross_entropy(logits_u.float(), pseudo)
        self.update(sup + alpha * unsup)
        return {"train/sup_loss": sup.detach(), "train/unsup_loss": unsup.detach(),
                "train/alpha": torch.tensor(alpha)}
