"""FixMatch (Sohn, Berthelot, Li, Zhang, Carlini, Cubuk, Kurakin, Zhang & Raffel 2020, "FixMatch: Simplifying
Semi-Supervised Learning with Consistency and Confidence"): pseudo-labeling as practitioners run it today.

Two older ideas (Sec. 2.1). Consistency regularization asks two stochastic views alpha(u) of an unlabeled image
to get the same prediction p_m(y | .) (eq. 1):

    sum_b || p_m(y | alpha(u_b)) - p_m(y | alpha(u_b)) ||^2

Pseudo-labeling trains on the model's own confident argmax, q_b = p_m(y | u_b), q^_b = argmax q_b (eq. 2):

    1/(mu B) sum_b 1(max q_b >= tau) H(q^_b, q_b)

FixMatch (Sec. 2.2) takes the hard pseudo-label from a weak view alpha (flip and shift) and the prediction from
a strong view A (RandAugment and Cutout) of the same image. With B labeled images x_b (labels p_b) and mu B
unlabeled images u_b per step:

    l_s = 1/B sum_b H(p_b, p_m(y | alpha(x_b)))                                                (eq. 3)
    q_b = p_m(y | alpha(u_b)),  q^_b = argmax q_b   (no gradient through q_b)
    l_u = 1/(mu B) sum_b 1(max q_b >= tau) H(q^_b, p_m(y | A(u_b)))                            (eq. 4)
    loss = l_s + lambda_u l_u

The mean in l_u runs over all mu B unlabeled images, kept or not, so the unlabeled term grows as the model grows
confident (no ramp-up is needed). The paper's recipe: tau = 0.95, lambda_u = 1, mu = 7, B = 64, SGD with
Nesterov momentum 0.9, weight decay 5e-4, learning rate eta cos(7 pi k / (16 K)) at step k of K (eta = 0.03),
and evaluation with an exponential moving average of the weights (genssl.nn.ema). Here mu B is
train.batch_size and B train.labeled_batch_size, so mu is set in the run config, not the method's.

Augmentations are genssl.data.augment's weak and strong views (horizontal flips only where the dataset allows
them, DataSpec.hflip); the labeled images get the config's `augment` view (weak, as in the paper). Each step is
one forward pass over [alpha(x_b); alpha(u_b); A(u_b)], so batch norm sees all three (as the paper's code).

Logs: train/sup_loss (l_s), train/unsup_loss (l_u), train/mask_rate (the fraction of unlabeled images whose
pseudo-label is kept), train/lr, and train/pseudo_acc: the accuracy of the kept pseudo-labels against the
unlabeled images' hidden true labels (SSLBatch.y_u). Those labels are read for this log only, never for a
loss; pseudo_acc is 0 in a step that keeps no pseudo-label (read it together with mask_rate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genssl.methods.classifier import ClassifierConfig, ClassifierMethod
from genssl.nn.classifiers import ClassifierFeatures
from genssl.nn.ema import EMA
from genssl.registry import register_method

OPTIMIZERS, LR_SCHEDULES = ("sgd", "adam"), ("cosine", "constant")  # the choices of optimizer, lr_schedule


def unlabeled_loss(logits_w: torch.Tensor, logits_s: torch.Tensor, threshold: float,
                   keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FixMatch's unlabeled term l_u (eq. 4) from the logits of the weak views (muB, K) and of the strong views
    (muB, K) of the same images: the hard pseudo-label q^_b = argmax q_b of the weak view (no gradient) where
    max q_b >= tau, cross-entropy of the strong view against it, averaged over all muB images (kept or not).
    `keep` (muB,) in {0, 1}, optional, also drops images (OpenMatch: those its one-vs-all heads call outliers).
    Returns (l_u, mask (muB,) float, q^ (muB,) int64)."""
    with torch.no_grad():
        conf, pseudo = F.softmax(logits_w, 1).max(1)  # max q_b, q^_b: (muB,)
        mask = (conf >= threshold).float()
        if keep is not None:
            mask = mask * keep
    return (F.cross_entropy(logits_s, pseudo, reduction="none") * mask).mean(), mask, pseudo


def kept_accuracy(pseudo: torch.Tensor, mask: torch.Tensor, y_u: torch.Tensor) -> torch.Tensor:
    """The accuracy of the kept pseudo-labels (mask 1) against the hidden labels y_u (a log, never a loss); 0 where
    none is kept."""
    right = (pseudo == y_u).float()
    return (right * mask).sum() / mask.sum().clamp(min=1.0)


def make_optimizer(cfg, params) -> torch.optim.Optimizer:
    """The config's optimizer (sgd: Nesterov momentum, L2 weight decay, as the paper; adam: AdamW) over `params`."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@register_method("fixmatch")
class FixMatch(ClassifierMethod):
    supports_stacking = True
    capturable = True
    # precision: auto -> bf16 with the ConvNet on a CPU with native bf16: its step 1.89x faster (classifier.py),
    # and not `worse` than fp32 + NCHW by the paired test at the matched study's 240 s budget, seeds 0-5: test %
    # 75.74 ± 1.31 against 71.81 ± 2.66, +3.93 points [+2.33, +5.23] (BCa), sign-flip p 0.031 (Holm 0.063),
    # undecided in bf16's favour (AMD EPYC with avx512_bf16, 2026-12-07; experiments/README.md, "The conv
    # classifiers").
    auto_bf16 = frozenset({"conv"})

    @dataclass
    class Config(ClassifierConfig):
        augment: str = "weak"
        """View of the labeled images (alpha in eq. 3): weak in the paper."""
        dropout: float = 0.0
        """The paper's networks have none (strong augmentation is the regularizer)."""
        threshold: float = 0.95
        """tau: a pseudo-label is kept where max_k p(k | weak view) >= tau."""
        unlabeled_weight: float = 1.0
        """lambda_u."""
        optimizer: str = "sgd"
        """sgd (Nesterov momentum, the paper) | adam (AdamW; wants lr ~1e-3)."""
        lr: float = 0.03
        momentum: float = 0.9
        """SGD momentum (Nesterov)."""
        weight_decay: float = 5e-4
        """L2 penalty in SGD (the paper's); decoupled decay in AdamW."""
        lr_schedule: str = "cosine"
        """cosine (lr cos(7 pi k / 16 K), the paper) | constant."""
        ema_decay: float = 0.999
        """Decay of the evaluation weights' moving average (0 evaluates the raw weights)."""

    def __init__(self, cfg: Config, spec):
        super().__init__(cfg, spec)
        for key, value, valid in (("optimizer", cfg.optimizer, OPTIMIZERS), ("lr_schedule", cfg.lr_schedule,
                                                                                LR_SCHEDULES)):
            if value not in valid:
                raise ValueError(f"fixmatch {key}={value!r} is not one of {', '.join(valid)}")
        if not 0.0 <= cfg.threshold <= 1.0:
            raise ValueError(f"fixmatch threshold must be in [0, 1], got {cfg.threshold}")
        self.ema = EMA(self.net, cfg.ema_decay)

    def configure_optimizers(self):
        return {"main": make_optimizer(self.cfg, self.net.parameters())}

    def lr_at(self, step: int) -> float:
        if self.cfg.lr_schedule == "constant":
            return self.cfg.lr
        return self.cfg.lr * math.cos(7 * math.pi * step / (16 * max(self.total_steps, 1)))

    def schedule(self, step: int) -> dict[str, float]:
        return {"lr": self.lr_at(step)}

    # ------------------------------------------------------------------ the step
    def stage_loss(self, name, batch, step, carry):
        """Eq. 3 + lambda_u eq. 4 for one batch (one stage, so genssl.training.stacked can train seeds stacked)."""
        c = self.cfg
        lr = self.step_values(step)["lr"]
        self.set_lr("main", lr)
        n_l, n_u = batch.x_l.shape[0], batch.x_u.shape[0]
        x = torch.cat([self.augment(batch.x_l), self.augment(batch.x_u, "weak"), self.augment(batch.x_u, "strong")])
        logits_l, logits_w, logits_s = self.net(x).float().split([n_l, n_u, n_u])  # (B, K), (muB, K), (muB, K)
        sup = F.cross_entropy(logits_l, batch.y_l)  # eq. 3
        unsup, mask, pseudo = unlabeled_loss(logits_w, logits_s, c.threshold)  # eq. 4
        logs = {"train/sup_loss": sup.detach(), "train/unsup_loss": unsup.detach(), "train/mask_rate": mask.mean(),
                "train/lr": self.log_value(lr)}
        if batch.y_u is not None:  # hidden labels: a log of how good the kept pseudo-labels are, never a loss
            logs["train/pseudo_acc"] = kept_accuracy(pseudo, mask, batch.y_u)
        return sup + c.unlabeled_weight * unsup, logs, carry

    def after_update(self, name):
        self.ema.update(self.net)

    def train_step(self, batch, step):
        loss, logs, _ = self.stage_loss("main", batch, step, {})
        self.update(loss)
        self.after_update("main")
        return logs

    # ------------------------------------------------------------------ inference (the averaged weights)
    def _eval_net(self):
        return self.ema.shadow if self.cfg.ema_decay > 0 else self.net

    def predict(self, x):
        return self._eval_net()(x)

    def encode(self, x):
        return self._eval_net().features(x)

    def encoder_module(self):
        """The averaged network's features, as evaluation uses them (shares its weights)."""
        c = self.cfg
        return ClassifierFeatures(c.arch, self.spec.image_shape, self.spec.num_classes, c.hidden, c.dropout,
                                  net=self._eval_net())
