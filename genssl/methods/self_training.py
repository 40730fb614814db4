"""Self-training with confidence-thresholded pseudo-labels, in rounds (the variant most tutorials teach;
cf. Yarowsky 1995, Scudder 1965).

Round 0 trains on the labeled images alone. At the start of each later round the current network is frozen
as the *teacher*; during the round every unlabeled image whose teacher confidence max_k p(k|x) >= threshold
joins the training set with the teacher's argmax as its label:

    L = CE(f(aug(x_l)), y_l) + weight * mean_u[ 1{max p_T(x_u) >= tau} * CE(f(aug(x_u)), argmax p_T(x_u)) ]

Labeling each unlabeled batch with a teacher that is fixed for the whole round is the same as labeling the
whole pool at the round's start, without the method needing the pool. Optionally the student restarts from
fresh weights each round (the classic "retrain on the enlarged set").
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genssl.methods.classifier import ClassifierConfig, ClassifierMethod
from genssl.registry import register_method


@register_method("self_training")
class SelfTraining(ClassifierMethod):
    supports_stacking = False  # its train_step copies the student into the teacher between rounds: no stage_loss

    @dataclass
    class Config(ClassifierConfig):
        threshold: float = 0.95
        rounds: int = 4
        """Round 0 is supervised; rounds 1.. add the teacher's confident pseudo-labels."""
        unlabeled_weight: float = 1.0
        reinit_each_round: bool = False
        augment_shift: int = 2

    def __init__(self, cfg, spec):
        super().__init__(cfg, spec)
        if not 0.0 <= cfg.threshold <= 1.0:
            raise ValueError(f"self_training threshold must be in [0, 1], got {cfg.threshold}")
        if cfg.rounds < 1:
            raise ValueError(f"self_training rounds must be >= 1, got {cfg.rounds}")
        self.teacher = copy.deepcopy(self.net).requires_grad_(False)
        self.register_buffer("round", torch.zeros((), dtype=torch.long))

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher's labels must not depend on dropout or batch statistics
        return self

    def _round_of(self, step: int) -> int:
        return min(step * self.cfg.rounds // max(self.total_steps, 1), self.cfg.rounds - 1)

    def _start_round(self, r: int) -> None:
        self.teacher.load_state_dict(self.net.state_dict())
        if self.cfg.reinit_each_round:
            for m in self.net.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
            self.optimizers["main"].state.clear()
        self.round.fill_(r)

    def train_step(self, batch, step):
        r = self._round_of(step)
        if r != int(self.round):
            self._start_round(r)
        if r == 0:
            logits_l = self.net(self.augment(batch.x_l))
            sup = self.supervised_loss(logits_l, batch.y_l)
            self.update(sup)
            zero = torch.zeros((), device=sup.device)
            return {"train/sup_loss": sup.detach(), "train/unsup_loss": zero, "train/mask_rate": zero}
        with torch.no_grad():
            conf, pseudo = F.softmax(self.teacher(batch.x_u).float(), 1).max(1)
            mask = (conf >= self.cfg.threshold).float()
        logits_l, logits_u = self.logits_lu(self.augment(batch.x_l), self.augment(batch.x_u))
        sup = self.supervised_loss(logits_l, batch.y_l)
        unsup = (F.cross_entropy(logits_u.float(), pseudo, reduction="none") * mask).mean()
        self.update(sup + self.cfg.unlabeled_weight * unsup)
        return {"train/sup_loss": sup.detach(), "train/unsup_loss": unsup.detach(),
                "train/mask_rate": mask.mean()}
