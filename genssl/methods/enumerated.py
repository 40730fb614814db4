"""What the class-enumerating generative models share (vae_m2; adgm and sdgm in genssl.methods.adgm): their
base class `EnumeratedModel` (the options every one of them has, the checks, the frozen M1 encoder of the
stacked (M1+...) variants, the optimizer, the input handling and the one training stage), and the pure helpers
it is built from: the per-step objective built from the labeled and enumerated unlabeled bounds, the
classification weight, M1's active dimensions, and a diagnostic of how much the decoder uses y. A subclass
builds its networks and writes its bounds (`objective`), `predict`, `encode` and `generate`.

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
halved). w is the classification weight per labeled example: alpha * N / N_l (`classification_weight`), N the
task's full pool, however much of it a run draws (cls_weight_pool).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genssl import losses
from genssl.data.spec import DataSpec
from genssl.encoders.format import Encoder
from genssl.encoders.load import load_encoder
from genssl.methods.base import Method
from genssl.methods.schedules import kl_weight
from genssl.nn.vae import likelihood_mean, reparameterize, resolve_likelihood


CLS_WEIGHT_POOLS = ("full", "drawn")
"""EnumeratedConfig.cls_weight_pool values: which pool's size N is in w = alpha * N / N_l."""


def classification_weight(alpha: float, classifier_weight: float | None, spec: DataSpec, pool: str = "full") -> float:
    """w = alpha * N / N_l, or `classifier_weight` when set: the paper's alpha = 0.1 * N on an expectation over the
    N_l labeled points, written per labeled example. N = N_l + the unlabeled pool's size, where the pool is

      full:  the one the split gives with the whole pool (data.n_unlabeled null, no mismatch, no filter;
             DataSpec.n_pool). The weight is a property of the task (its labels, validation set and classes), so a
             run drawing 1,000 unlabeled images or filtering its pool changes the data only, not how much the
             classifier counts: the unlabeled-amount, mismatch and filter axes each measure one thing. It is
             exactly the pool a run with the whole pool trains on, so for such runs (n_unlabeled null, the
             default) the weight is the one `drawn` gives and earlier releases gave (with labeled_in_unlabeled
             the labeled images count twice, as they always have: 0.2% of N at 100 of 55,000).
      drawn: the pool the run trains on (DataSpec.n_unlabeled, after n_unlabeled, mismatch and the filter): the
             weight before issue 37, ~50x weaker at n_unlabeled 1,000 than with Fashion-MNIST's whole pool.
    """
    if pool not in CLS_WEIGHT_POOLS:
        raise ValueError(f"cls_weight_pool must be one of {', '.join(CLS_WEIGHT_POOLS)}, got {pool!r}")
    if classifier_weight is not None:
        return float(classifier_weight)
    n_u = spec.pool_size if pool == "full" else spec.n_unlabeled
    return alpha * (spec.n_labeled + n_u) / max(spec.n_labeled, 1)


def check_labeled_weight(value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"labeled_weight must be a positive number or None (balanced minibatches), got {value!r}")


def step_loss(neg_L_l: torch.Tensor, kl_l: torch.Tensor, ce_l: torch.Tensor, cls_weight: float,
              neg_L_u: torch.Tensor, kl_u: torch.Tensor, logits_u: torch.Tensor, beta: float | torch.Tensor = 1.0,
              labeled_weight: float | None = None) -> dict[str, torch.Tensor]:
    """The step's loss (module docstring) and the bounds it is made of.

    neg_L_l (B_l,): -L(x_l, y_l); kl_l (B_l,): the KL part of it; ce_l (B_l,): -log q(y_l | .);
    neg_L_u (B_u, K): -L(x_u, y) for every class; kl_u (B_u, K); logits_u (B_u, K): q(y | .) of the unlabeled.
    beta < 1 down-weights the KL terms (warm-up): the loss optimizes rec - beta * KL, the bounds reported are
    always the true ones. Returns {"loss", "neg_U" (if B_u > 0)}.
    """
    warm = isinstance(beta, torch.Tensor) or beta != 1.0  # a tensor beta (a captured step's) always takes this form
    labeled = -neg_L_l  # (B_l,)
    if warm:  # warm-up: optimize rec + log p(y) - beta * KL (at beta = 1 the same numbers: x - 0 * kl = x)
        labeled = labeled - (1.0 - beta) * kl_l
    out: dict[str, torch.Tensor] = {}
    loss_u = None
    if neg_L_u.shape[0]:
        neg_U = losses.unlabeled_bound(neg_L_u, logits_u)  # (B_u,)
        out["neg_U"] = neg_U.mean()
        loss_u = -neg_U
        if warm:  # -U with the KL scaled by beta = -U - (1 - beta) * sum_y q(y|x) KL(x, y)
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


# ------------------------------------------------------------------ the shared base
@dataclass
class EnumeratedConfig:
    """The options of every class-enumerating model; a subclass's Config adds its own (and may change a
    default by declaring the field again)."""
    likelihood: str = "auto"
    """auto (Bernoulli for grey images, Gaussian for colour and for M1 latents) | bernoulli | gaussian."""
    binarize: bool = False
    """Dynamic binarization x ~ Bernoulli(x) at every step (Bernoulli likelihood on pixels only)."""
    alpha: float = 0.1
    """Classification weight w = alpha * N / N_l per labeled example (module docstring)."""
    cls_weight_pool: str = "full"
    """full | drawn: the pool N counts (classification_weight). full: the whole pool the task's split gives, the
    same whatever data.n_unlabeled, data.mismatch or data.filter_run draw; drawn: the pool the run trains on (the
    weight before issue 37)."""
    classifier_weight: float | None = None
    """Sets w directly, overriding alpha."""
    labeled_weight: float | None = None
    """What one labeled image (its bound + w * its classification loss) weighs against one unlabeled image's
    bound; None: balanced minibatches, the labeled mean counts as much as the unlabeled mean (module docstring)."""
    kl_warmup: float = 0.0
    """Fraction of the run over which the weight of the KL terms ramps from 0 to 1."""
    lr: float = 1e-3
    encoder: str | None = None
    """An M1 run folder or exported encoder folder: the model then runs on M1's latents (M1+M2 and the like)."""


class EnumeratedModel(Method):
    """A model whose class y is a latent enumerated in the unlabeled bound (M2, ADGM, SDGM). It owns what they
    share: the checks of EnumeratedConfig, the frozen M1 below a stacked variant (`self.m1`, None on pixels),
    the input shape and likelihood, the classification weight, one fused Adam, the training inputs (`prepare`)
    and evaluation inputs (`features_in`), and the one training stage: the subclass's `objective` on the
    prepared batch with the KL weight of the warm-up schedule. A subclass builds its networks after calling
    this __init__ (`arch`, `cls_arch`: the architectures a stacked variant must give as MLPs) and implements
    `objective`, `predict`, `encode`, `classifier_features` (its exportable encoder) and `generate`."""

    has_encoder = True  # on pixels only: on M1 latents encoder_module() refuses
    can_sample = True
    can_sample_conditional = True  # on pixels only, as for the encoder
    supports_stacking = True  # except where a subclass's stacking_refusal says otherwise
    capturable = True  # except where a subclass's capture_refusal says otherwise

    def __init__(self, cfg: EnumeratedConfig, spec: DataSpec, arch: str = "mlp", cls_arch: str | None = None):
        super().__init__(cfg, spec)
        check_labeled_weight(cfg.labeled_weight)
        self.m1 = None
        shape = spec.image_shape
        if cfg.encoder is not None:
            self.m1 = load_m1(cfg.encoder, arch, cls_arch)
            shape = (int(self.m1.out_dim),)
        self.input_shape = tuple(shape)
        self.likelihood = resolve_likelihood(cfg.likelihood, self.input_shape)
        if cfg.binarize and (self.likelihood != "bernoulli" or self.m1 is not None):
            raise ValueError(f"binarize=True needs pixels with likelihood='bernoulli', got {self.likelihood!r}"
                             f"{' on M1 latents' if self.m1 is not None else ''}")
        self.cls_weight = classification_weight(cfg.alpha, cfg.classifier_weight, spec, cfg.cls_weight_pool)
        self.log_prior_y = -math.log(spec.num_classes)  # log p(y), uniform

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        # fused Adam: one kernel for the update instead of a dozen elementwise passes over every parameter
        # (the unfused update was ~18% of M2's bf16 step on one Xeon core; benchmarks/README.md)
        fused = params[0].device.type in ("cpu", "cuda")
        return {"main": torch.optim.Adam(params, lr=self.cfg.lr, fused=fused)}

    def train(self, mode: bool = True):
        super().train(mode)
        if self.m1 is not None:
            self.m1.eval()  # frozen: never let a loaded encoder's dropout/BN switch to training
        return self

    # ------------------------------------------------------------------ inputs: pixels or M1 latents
    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Training inputs: z1 ~ q(z1 | x) with an M1 below (fresh each step), else x (binarized if configured)."""
        if self.m1 is not None:
            with torch.no_grad():
                mu, logvar = self.m1.posterior(x)
            return self.m1_inputs(reparameterize(mu.float(), logvar.float()))
        return torch.bernoulli(x) if self.cfg.binarize else x

    def features_in(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluation inputs: the M1 posterior mean, or the images."""
        return self.m1_inputs(self.m1(x).float()) if self.m1 is not None else x

    def m1_inputs(self, z1: torch.Tensor) -> torch.Tensor:
        """M1 latents (B, D1) as the model reads them (M2 zeroes M1's inactive dims here)."""
        return z1

    # ------------------------------------------------------------------ the step
    def stage_loss(self, name, batch, step, carry, **views):
        """The one stage: inputs prepared (M1 latents, binarization), the objective with the KL weight of the
        warm-up schedule; (loss, every term of the objective to log, carry). A pure function of the parameters
        and the batch, so Method.train_step runs it alone and genssl.training.stacked under vmap. `views` go to
        the objective as they are (M2's hybrid: its strong views)."""
        x_l, x_u = self.prepare(batch.x_l), self.prepare(batch.x_u)
        beta = self.step_values(step).get("kl_weight", 1.0)
        terms = self.objective(x_l, batch.y_l, x_u, beta=beta, **views)
        logs = {f"train/{k}": v.detach() for k, v in terms.items()}
        logs["train/cls_weight"] = torch.full((), self.cls_weight, device=batch.x_l.device)  # on the device: no copy
        if self.cfg.kl_warmup > 0:
            logs["train/kl_weight"] = self.log_value(beta)
        return terms["loss"], logs, carry

    def schedule(self, step: int) -> dict[str, float]:
        """The KL weight of the warm-up, when there is one (without, the loss takes its beta = 1 form)."""
        return {"kl_weight": kl_weight(step, self.total_steps, self.cfg.kl_warmup)} if self.cfg.kl_warmup > 0 else {}

    def objective(self, x_l, y_l, x_u, sample: bool = True, beta: float = 1.0, **views) -> dict[str, torch.Tensor]:
        """{"loss", and the terms to log} of one step on prepared inputs (`step_loss` on the model's bounds)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ pixels only: export and generation
    def _pixels_only(self, what: str) -> None:
        if self.m1 is not None:
            raise ValueError(f"{self.name} on M1 latents (M1+{self.name}) {what}")

    def encoder_module(self):
        """The classifier's features as an exportable encoder (on pixels only)."""
        self._pixels_only("has a classifier that reads M1 latents, not images: export the M1 encoder instead")
        return self.classifier_features()

    def classifier_features(self):
        """The exportable encoder of a pixel model (a registered encoder arch sharing the classifier's weights)."""
        raise NotImplementedError

    def generate(self, y: torch.Tensor) -> torch.Tensor:
        """Likelihood parameters of p(x | .) for the classes y (n,), the latents drawn from their prior."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """n images (n, C, H, W) in [0, 1]: the likelihood's mean of p(x | .) for the classes y (n,), drawn from
        the uniform p(y) when None. Feeds genssl.downstream.samples (label_source 'conditional'). On pixels only:
        on M1 latents the model generates M1 latents and has no M1 decoder to turn them into images."""
        self._pixels_only(f"generates M1 latents, not images (it has no M1 decoder); sample from a pixel "
                          f"{self.name} run instead")
        y = sample_classes(n, y, self.spec.num_classes, next(self.parameters()).device)
        return likelihood_mean(self.likelihood, self.generate(y), len(self.input_shape)).float().clamp(0, 1)
