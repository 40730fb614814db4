"""What the class-enumerating generative models share (vae_m2; adgm and sdgm in genssl.methods.adgm): the
per-step objective built from their labeled and enumerated unlabeled bounds, the classification weight, the
frozen M1 encoder of the stacked (M1+...) variants and its active dimensions, and a diagnostic of how much the
decoder uses y. Pure helpers: no networks, no state.

The per-step objective (Kingma et al. 2014, eq. 9; Maaloe et al. 2016, sec. 2.3, the same form with their
bounds) from the labeled bounds -L(x_l, y_l), the unlabeled bounds -U(x_u) and the classification loss
CE = -log q(y_l | .) of each labeled image:

  labeled_weight None (balanced minibatches, the original code's):
      loss = mean_l L(x_l, y_l) + w * mean_l CE(x_l) + mean_u U(x_u)
  labeled_weight lambda (per example):
      loss = [ lambda * sum_l (L(x_l, y_l) + w * CE(x_l)) + sum_u U(x_u) ] / (lambda * B_l + B_u)

With None a step's labeled mean counts as much as its unlabeled mean whatever the batch sizes, so a labeled
image weighs B_u / B_l unlabeled ones; lambda instead fixes what one labeled image weighs, so the labeled share
of a step follows train.labeled_batch_size and train.batch_size (lambda = B_u / B_l gives the balanced loss
halved). w is the classification weight per labeled example: alpha * N / N_l (`classification_weight`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from genssl import losses
from genssl.data.spec import DataSpec
from genssl.encoders.format import Encoder
from genssl.encoders.load import load_encoder
from genssl.methods.schedules import kl_weight


def classification_weight(alpha: float, classifier_weight: float | None, spec: DataSpec) -> float:
    """w = alpha * N / N_l (N all training images, N_l the labeled ones), or `classifier_weight` when set: the
    paper's alpha = 0.1 * N on an expectation over the N_l labeled points, written per labeled example."""
    if classifier_weight is not None:
        return float(classifier_weight)
    return alpha * (spec.n_labeled + spec.n_unlabeled) / max(spec.n_labeled, 1)


def check_labeled_weight(value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"labeled_weight must be a positive number or None (balanced minibatches), got {value!r}")


def step_loss(neg_L_l: torch.Tensor, kl_l: torch.Tensor, ce_l: torch.Tensor, cls_weight: float,
              neg_L_u: torch.Tensor, kl_u: torch.Tensor, logits_u: torch.Tensor, beta: float = 1.0,
              labeled_weight: float | None = None) -> dict[str, torch.Tensor]:
    """The step's loss (module docstring) and the bounds it is made of.

    neg_L_l (B_l,): -L(x_l, y_l); kl_l (B_l,): the KL part of it; ce_l (B_l,): -log q(y_l | .);
    neg_L_u (B_u, K): -L(x_u, y) for every class; kl_u (B_u, K); logits_u (B_u, K): q(y | .) of the unlabeled.
    beta < 1 down-weights the KL terms (warm-up): the loss optimizes rec - beta * KL, the bounds reported are
    always the true ones. Returns {"loss", "neg_U" (if B_u > 0)}.
    """
    labeled = -neg_L_l  # (B_l,)
    if beta != 1.0:  # warm-up: optimize rec + log p(y) - beta * KL
        labeled = labeled - (1.0 - beta) * kl_l
    out: dict[str, torch.Tensor] = {}
    loss_u = None
    if neg_L_u.shape[0]:
        neg_U = losses.unlabeled_bound(neg_L_u, logits_u)  # (B_u,)
        out["neg_U"] = neg_U.mean()
        loss_u = -neg_U
        if beta != 1.0:  # -U with the KL scaled by beta = -U - (1 - beta) * sum_y q(y|x) KL(x, y)
            q = F.softmax(logits_u.float(), -1)  # (B_u, K)
            loss_u = loss_u - (1.0 - beta) * (q * kl_u).sum(-1)
    if labeled_weight is None:
        loss = labeled.mean() + cls_weight * ce_l.mean()
        if loss_u is not None:
            loss = loss + loss_u.mean()
    else:
        total = labeled_weight * (labeled + cls_weight * ce_l).sum()
        n = labeled_weight * labeled.shape[0]
        if loss_u is not None:
            total, n = total + loss_u.sum(), n + loss_u.shape[0]
        loss = total / n
    out["loss"] = loss
    return out


@torch.no_grad()
def rec_gain(rec_u: torch.Tensor, logits_u: torch.Tensor) -> torch.Tensor:
    """How much the decoder uses y: the reconstruction log-likelihood of each unlabeled image under its predicted
    class minus its mean under the K - 1 other classes (each with its own q(z | ., y)), averaged over the batch.
    Near 0: the decoder ignores y (a known failure of M2, where z ends up carrying the class). (B, K) -> scalar."""
    rec_u = rec_u.float()
    K = rec_u.shape[1]
    pred = rec_u.gather(1, logits_u.argmax(1, keepdim=True)).squeeze(1)  # (B,)
    others = (rec_u.sum(1) - pred) / max(K - 1, 1)
    return (pred - others).mean()


# ------------------------------------------------------------------ stacked variants: a frozen M1 below
def load_m1(source: str, arch: str, cls_arch: str | None) -> Encoder:
    """The frozen M1 encoder of a stacked model (M1+M2 and the like), from a run or exported encoder folder;
    the model above it reads latent vectors, so its networks must be MLPs."""
    m1 = load_encoder(source)
    if not m1.has_posterior:
        raise ValueError(f"encoder {source!r} has no posterior(x) -> (mu, logvar); a stacked model needs a "
                         f"Gaussian (VAE) encoder")
    m1.requires_grad_(False)
    if arch != "mlp" or (cls_arch or "mlp") != "mlp":
        raise ValueError(f"a stacked model reads latent vectors: arch and cls_arch must be 'mlp', got "
                         f"{arch!r} / {cls_arch!r}")
    return m1.eval()


@torch.no_grad()
def active_dims(mu: torch.Tensor, threshold: float) -> torch.Tensor:
    """Active latent units (Burda, Grosse & Salakhutdinov 2016, sec. 5.2, with the standard deviation in place of
    their variance): dims whose posterior mean varies over the data, std_x E_q(z|x)[z_d] > threshold.
    mu (N, D) posterior means -> (D,) bool. Fails loudly when no dim passes."""
    if mu.shape[0] < 2:
        raise ValueError(f"active dims need the posterior means of at least 2 images, got {mu.shape[0]}")
    std = mu.float().std(0)  # (D,)
    keep = std > threshold
    if not bool(keep.any()):
        raise ValueError(f"no M1 latent dim has a posterior-mean std above m1_active_threshold={threshold} (largest "
                         f"{float(std.max()):.3g}); lower the threshold")
    return keep


def enumerated_stage_loss(method, batch, step: int, **views) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The one stage of M2, ADGM and SDGM: inputs prepared (M1 latents, binarization), the objective with the
    KL weight of the warm-up schedule; (loss, every term of the objective to log). A pure function of the
    parameters and the batch, so Method.train_step runs it alone and genssl.training.stacked under vmap.
    `views` go to the objective as they are (M2's hybrid: its strong views)."""
    x_l, x_u = method.prepare(batch.x_l), method.prepare(batch.x_u)
    beta = kl_weight(step, method.total_steps, method.cfg.kl_warmup)
    terms = method.objective(x_l, batch.y_l, x_u, beta=beta, **views)
    logs = {f"train/{k}": v.detach() for k, v in terms.items()}
    logs["train/cls_weight"] = torch.tensor(method.cls_weight)
    if method.cfg.kl_warmup > 0:
        logs["train/kl_weight"] = torch.tensor(beta)
    return terms["loss"], logs


def sample_classes(n: int, y, num_classes: int, device) -> torch.Tensor:
    """The classes of n class-conditional samples: `y` checked ((n,) indices in [0, K - 1]), or drawn from the
    uniform p(y) when None."""
    if y is None:
        return torch.randint(num_classes, (n,), device=device)
    y = torch.as_tensor(y, device=device)
    in_range = y.numel() == 0 or (0 <= int(y.min()) and int(y.max()) < num_classes)
    if y.shape != (n,) or y.dtype.is_floating_point or not in_range:
        raise ValueError(f"y must be {n} class indices in [0, {num_classes - 1}], got shape {tuple(y.shape)}, "
                         f"dtype {y.dtype}")
    return y
