"""OpenMatch (Saito, Kim & Saenko 2021, "OpenMatch: Open-set Consistency Regularization for Semi-supervised Learning
with Outliers", NeurIPS): FixMatch that trains only on the unlabeled images its one-vs-all heads call inliers.

The open-set problem: the unlabeled pool holds images of classes the K labeled classes do not cover, and FixMatch
gives each of them a confident pseudo-label of a wrong class. OpenMatch adds an outlier detector to the
classifier and keeps FixMatch away from what it flags.

Model. One shared feature extractor (the classifier net's body, genssl.nn.classifiers, arch mlp | conv), the
closed-set head p(y | x) over K classes, and K one-vs-all (OVA) binary heads beside it: head j gives
p^j(t | x), t = 0 "x is of class j" (inlier for j), t = 1 "x is not". Here one linear layer (D -> 2K) on the
features, a 2-way softmax per head.

Terms (named as in the paper; its equation numbers are not repeated here: the terms' names are the reference):

- L_ce, cross-entropy of p(y | x) on the labeled images (FixMatch's eq. 3).
- L_ova, the OVA loss on the labeled images (x, y), with OVANet's hard-negative term: the head of the true class
  is pushed to "inlier", and of the other K-1 heads only the one most convinced that x is its inlier, to "not":

      L_ova(x, y) = -log p^y(t=0 | x) - min_{i != y} log p^i(t=1 | x)                        (`ova_loss`)

- L_em, open-set entropy minimization (OEM) on the unlabeled images u: every head's binary entropy, summed over
  the K heads, so the heads commit to inlier or outlier on the pool they have no labels for:

      L_em(u) = - sum_j sum_t p^j(t | u) log p^j(t | u)                                      (`ova_entropy`)

- L_oc, soft open-set consistency regularization (SOCR) between two augmentations T_1, T_2 of u: the OVA
  probabilities themselves are matched (soft: no sharpening, no threshold, gradient through both views):

      L_oc(u) = sum_j sum_t ( p^j(t | T_1(u)) - p^j(t | T_2(u)) )^2                          (`socr_loss`)

- L_fm, FixMatch's unlabeled term (eq. 4 of Sohn et al. 2020, genssl.methods.fixmatch.unlabeled_loss) on the
  inliers only. An unlabeled image is an inlier when the OVA head of its predicted class says so:

      s(u) = p^{y^}(t=0 | u),  y^ = argmax_k p(k | u);   inlier  <=>  s(u) > 0.5                (`ova_inlier_score`)

  loss = L_ce + L_ova + lambda_oem L_em + lambda_socr L_oc + [step >= warm-up] lambda_u L_fm, all means over the
  images of the batch.

Kept from the paper: the OVA heads on the shared features, L_ova with the hard negative, L_em and L_oc on every
unlabeled image (outliers included: the detector learns from them), the 0.5 inlier threshold on the OVA score of
the predicted class, FixMatch (weak-view hard pseudo-label with threshold tau, strong-view cross-entropy) on the
inliers only and off during a warm-up, two random weak views as SOCR's T_1, T_2, and the weights of its CIFAR-10
setting, lambda_oem = 0.1, lambda_socr = 0.5 (L_ce and L_ova at weight 1, lambda_u = 1).

Adapted:
- Selection. The paper scores the whole unlabeled set once per epoch, after a warm-up of E_fix = 10 epochs (of
  512), and draws FixMatch's batches from the selected inliers. Here the step sees only its batch, so selection is
  per step, on the batch's own images: s(u) from the current (non-averaged) network on the first weak view, under
  no gradient; it is the paper's epoch-wise selection with an epoch of one step, needs no pass over the pool and no
  state to checkpoint (a resume is exact for free), and keeps the step a fixed sequence of kernels (stacked seeds,
  CUDA graphs). L_fm then averages over all mu B unlabeled images as FixMatch's eq. 4 does (a rejected image counts
  0), so each inlier weighs what it weighs in the paper's inlier batches, and a pool with fewer inliers gives a
  smaller term. The paper scores un-augmented images; the weak view (flip, 2-px shift) is close and costs no pass.
- Warm-up. `fixmatch_start`, a share of the run's steps (like the other methods' ramps); 0.02 is the paper's
  10 of 512 epochs. L_ce, L_ova, L_em and L_oc train from step 0; L_fm is multiplied by 0 before it (a schedule
  value, so a captured step follows it).
- L_em is taken on both weak views (the mean of the two), as each is an unlabeled input of the step.
- Evaluation uses an exponential moving average of the weights (classifier and OVA heads alike), as FixMatch here.
- Optimizer, learning-rate schedule, tau = 0.95 and the views: genssl's FixMatch (this class extends it), so the
  two differ only in what OpenMatch adds. One step is one forward pass over
  [alpha(x_l); alpha_1(u); alpha_2(u); A(u)] (about 1.5x FixMatch's images).

The OVA score s(x) is the method's declared typicality score ("ova", Method.typicality_score): higher = more
typical, a per-image outlier score for genssl predict --flag-atypical, the pool filter and the typicality study.

Why OpenMatch and not IOMatch (Li et al., ICCV 2023): OpenMatch is "detect, then pseudo-label the inliers", the
design the mismatch study already measures with a generative detector filtering FixMatch's pool (g100-* in
experiments/realistic/mismatch_v2.yaml), with the detector trained jointly; its product is a per-image outlier
score, reported by the paper as an outlier detector and used here as one beside the generative scores. IOMatch's
point is the opposite, to keep every unlabeled image and train on outliers as a (K+1)-th class because a weak
detector can drop inliers: a different question, and more machinery (open-set targets from both classifiers, a
projection head) to get right from the paper alone.

Logs: FixMatch's (train/sup_loss, train/unsup_loss = L_fm before the warm-up factor, train/mask_rate: share of
the pool batch used by L_fm, train/pseudo_acc, train/lr), and train/ova_loss, train/oem_loss, train/socr_loss,
train/inlier_rate (share of the batch called inliers). With the hidden labels (logs only, never a loss):
train/inlier_recall, the share of in-task images kept as inliers, and train/stray_kept, the share of out-of-task
images (SSLBatch.y_u >= K, genssl.data.task) kept as inliers (0 where the batch holds none).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genssl.methods.fixmatch import FixMatch, kept_accuracy, make_optimizer, unlabeled_loss
from genssl.nn.ema import EMA
from genssl.registry import register_method


# ------------------------------------------------------------------ the terms (pure functions)
def ova_log_probs(ova_logits: torch.Tensor) -> torch.Tensor:
    """(N, 2, K) logits of the K one-vs-all heads -> log p^j(t | x), (N, 2, K) in fp32; row t = 0 is "inlier of j"."""
    return F.log_softmax(ova_logits.float(), dim=1)


def _is_class(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N,) class indices -> (N, K) bool one-hot (a comparison, so it also runs under vmap)."""
    return y[:, None] == torch.arange(num_classes, device=y.device)


def ova_loss(ova_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L_ova with the hard negative, averaged over the labeled images: mean_b [-log p^{y_b}(t=0 | x_b)
    - min_{i != y_b} log p^i(t=1 | x_b)]; (B, 2, K), (B,) -> ()."""
    logp = ova_log_probs(ova_logits)  # (B, 2, K)
    is_y = _is_class(y, logp.shape[2])  # (B, K)
    positive = torch.where(is_y, logp[:, 0], 0.0).sum(1)  # log p^y(t=0 | x): (B,)
    hard_negative = logp[:, 1].masked_fill(is_y, float("inf")).amin(1)  # min_{i != y} log p^i(t=1 | x): (B,)
    return -(positive + hard_negative).mean()


def ova_entropy(ova_logits: torch.Tensor) -> torch.Tensor:
    """L_em: the binary entropies of the K heads, summed over heads, averaged over images; (N, 2, K) -> ()."""
    logp = ova_log_probs(ova_logits)
    return -(logp.exp() * logp).sum((1, 2)).mean()


def socr_loss(ova_a: torch.Tensor, ova_b: torch.Tensor) -> torch.Tensor:
    """L_oc (SOCR): the squared difference of the OVA probabilities of two views of the same images, summed over
    heads and t, averaged over images; gradient flows through both views; (N, 2, K) x 2 -> ()."""
    return (ova_log_probs(ova_a).exp() - ova_log_probs(ova_b).exp()).pow(2).sum((1, 2)).mean()


def ova_inlier_score(logits: torch.Tensor, ova_logits: torch.Tensor) -> torch.Tensor:
    """s(x) = p^{y^}(t=0 | x), y^ = argmax_k of the closed-set logits: the probability that x is an inlier, by the OVA
    head of the class the classifier predicts; (N, K), (N, 2, K) -> (N,) in [0, 1]."""
    p_inlier = ova_log_probs(ova_logits)[:, 0].exp()  # (N, K)
    return torch.where(_is_class(logits.argmax(1), p_inlier.shape[1]), p_inlier, 0.0).sum(1)


def select_inliers(score: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N,) OVA scores -> (N,) float in {0, 1}: 1 where s(x) > threshold (the paper's inlier rule)."""
    return (score > threshold).float()


# ------------------------------------------------------------------ the method
@register_method("openmatch")
class OpenMatch(FixMatch):
    typicality_score = "ova"  # s(x), the OVA inlier score of the predicted class (module docstring)
    # precision: auto keeps fp32 (FixMatch's conv bf16 measurement is of FixMatch's step, not this one's).
    auto_bf16 = False

    @dataclass
    class Config(FixMatch.Config):
        """FixMatch's options (views, tau, lambda_u, optimizer, schedule, EMA) and OpenMatch's terms."""
        oem_weight: float = 0.1
        """lambda_oem (the paper's lambda_em): weight of the OVA entropy minimization L_em on unlabeled images."""
        socr_weight: float = 0.5
        """lambda_socr (the paper's lambda_oc): weight of the soft open-set consistency L_oc (0.5: its CIFAR-10)."""
        inlier_threshold: float = 0.5
        """An unlabeled image is an inlier, and can enter FixMatch's term, where s(u) > this."""
        fixmatch_start: float = 0.02
        """Share of the run's steps before FixMatch's term is switched on (the paper: 10 of 512 epochs)."""

    def __init__(self, cfg: Config, spec):
        super().__init__(cfg, spec)
        if spec.num_classes < 2:
            raise ValueError(f"openmatch needs at least 2 classes for its one-vs-all heads, got {spec.num_classes}")
        for key in ("oem_weight", "socr_weight"):
            if getattr(cfg, key) < 0:
                raise ValueError(f"openmatch {key} must be >= 0, got {getattr(cfg, key)}")
        if not 0.0 <= cfg.inlier_threshold < 1.0:
            raise ValueError(f"openmatch inlier_threshold must be in [0, 1), got {cfg.inlier_threshold}")
        if not 0.0 <= cfg.fixmatch_start <= 1.0:
            raise ValueError(f"openmatch fixmatch_start must be a share of the run in [0, 1], got {cfg.fixmatch_start}")
        self.num_classes = spec.num_classes
        self.ova = nn.Linear(self.net.feature_dim, 2 * spec.num_classes)  # the K one-vs-all heads, (D) -> (2, K)
        self.ova_ema = EMA(self.ova, cfg.ema_decay)

    def configure_optimizers(self):
        return {"main": make_optimizer(self.cfg, [*self.net.parameters(), *self.ova.parameters()])}

    def schedule(self, step: int) -> dict[str, float]:
        return {**super().schedule(step), "fixmatch_on": float(step >= self.cfg.fixmatch_start * self.total_steps)}

    def heads(self, x: torch.Tensor, net: nn.Module | None = None, ova: nn.Module | None = None):
        """(N, C, H, W) -> closed-set logits (N, K) and OVA logits (N, 2, K), both fp32, from one feature pass
        (default: the trained weights)."""
        net = self.net if net is None else net
        ova = self.ova if ova is None else ova
        feats = net.features(x)  # (N, D)
        return net.head(feats).float(), ova(feats).float().unflatten(1, (2, self.num_classes))

    # ------------------------------------------------------------------ the step
    def stage_loss(self, name, batch, step, carry):
        """L_ce + L_ova + lambda_oem L_em + lambda_socr L_oc + [warm-up over] lambda_u L_fm (module docstring)."""
        c = self.cfg
        values = self.step_values(step)
        self.set_lr("main", values["lr"])
        n_l, n_u = batch.x_l.shape[0], batch.x_u.shape[0]
        x = torch.cat([self.augment(batch.x_l), self.augment(batch.x_u, "weak"), self.augment(batch.x_u, "weak"),
                       self.augment(batch.x_u, "strong")])
        logits, ova = self.heads(x)  # (B + 3 muB, K), (B + 3 muB, 2, K)
        logits_l, logits_w, _, logits_s = logits.split([n_l, n_u, n_u, n_u])
        ova_l, ova_w1, ova_w2, _ = ova.split([n_l, n_u, n_u, n_u])
        sup = F.cross_entropy(logits_l, batch.y_l)  # L_ce
        l_ova = ova_loss(ova_l, batch.y_l)
        l_em = 0.5 * (ova_entropy(ova_w1) + ova_entropy(ova_w2))
        l_oc = socr_loss(ova_w1, ova_w2)
        with torch.no_grad():
            inlier = select_inliers(ova_inlier_score(logits_w, ova_w1), c.inlier_threshold)  # (muB,)
        unsup, mask, pseudo = unlabeled_loss(logits_w, logits_s, c.threshold, keep=inlier)  # L_fm on inliers
        loss = (sup + l_ova + c.oem_weight * l_em + c.socr_weight * l_oc
                + values["fixmatch_on"] * c.unlabeled_weight * unsup)
        logs = {"train/sup_loss": sup.detach(), "train/ova_loss": l_ova.detach(), "train/oem_loss": l_em.detach(),
                "train/socr_loss": l_oc.detach(), "train/unsup_loss": unsup.detach(), "train/mask_rate": mask.mean(),
                "train/inlier_rate": inlier.mean(), "train/lr": self.log_value(values["lr"])}
        if batch.y_u is not None:  # hidden labels: logs of the selection and the pseudo-labels, never a loss
            stray = (batch.y_u >= self.num_classes).float()
            logs["train/pseudo_acc"] = kept_accuracy(pseudo, mask, batch.y_u)
            logs["train/inlier_recall"] = (inlier * (1 - stray)).sum() / (1 - stray).sum().clamp(min=1.0)
            logs["train/stray_kept"] = (inlier * stray).sum() / stray.sum().clamp(min=1.0)
        return loss, logs, carry

    def after_update(self, name):
        super().after_update(name)
        self.ova_ema.update(self.ova)

    # ------------------------------------------------------------------ inference (the averaged weights)
    def _eval_ova(self):
        return self.ova_ema.shadow if self.cfg.ema_decay > 0 else self.ova

    def typicality(self, x):
        """s(x) = p^{y^}(t=0 | x) of the averaged weights: (B, C, H, W) -> (B,) in [0, 1], higher = more typical.
        Called through genssl.methods.typicality.typicality_scores."""
        return ova_inlier_score(*self.heads(x, self._eval_net(), self._eval_ova()))
