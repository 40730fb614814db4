"""M2: the class label as a partially observed latent (Kingma, Rezende, Mohamed & Welling 2014, sec. 2.2),
and stacked M1+M2 (sec. 2.3) when `encoder` names a trained M1 encoder.

Generative story (SSL eq. 2):   y ~ Cat(1/K),  z ~ N(0, I),  x ~ p_theta(x | y, z)
Inference model (eq. 4):        q(z | x, y) = N(mu_phi(x, y), diag sigma^2_phi(x, y)),  q(y | x) = Cat(pi_phi(x))
Labeled bound (eq. 6):   -L(x, y) = E_q(z|x,y)[log p(x | y, z)] + log p(y) - KL(q(z | x, y) || p(z))
Unlabeled bound (eq. 7): -U(x) = sum_y q(y | x) (-L(x, y)) + H(q(y | x)),   all K classes enumerated in one
                          batched pass of B*K rows (no loop over y).
Objective (eq. 9):        J^alpha = sum_l L(x, y) + sum_u U(x) + alpha * E_l[-log q(y | x)].

Per step we minimize   mean_l L(x_l, y_l) + mean_u U(x_u) + w * mean_l CE(q(y | x_l), y_l)   with
w = alpha * N / N_l, alpha = 0.1, N all training images, N_l the labeled ones (the paper's alpha = 0.1 * N
with its expectation over the N_l labeled points written as a sum: each labeled point's classification loss
counts 0.1 * N / N_l times one image's bound). Labeled and unlabeled bounds get equal weight per step
(labeled images are oversampled, as in the original code's balanced minibatches). `classifier_weight` sets
w directly instead; `labeled_weight` fixes what one labeled image weighs against an unlabeled one instead of
balancing the two means (genssl.methods.enumerated).

Levers (defaults: off, the paper's model): `prior: mixture` replaces p(z) by a learned class mixture
p(z | y) = N(mu_y, diag sigma_y^2) (the KL becomes KL(q(z | x, y) || p(z | y))); `cls_input_noise` and
`cls_weight_decay` regularize the classifier; `z_dim`, `kl_warmup`, `cls_dropout`. `train/rec_gain_y` logs how
much the decoder uses y (genssl.methods.enumerated.rec_gain).

Hybrid (off by default): `consistency: kl | fixmatch` adds, for every unlabeled image, a two-view consistency
term on q(y | x) with the image itself as the weak view and genssl.data.augment.strong as the strong one
(FixMatch's l_u at `consistency_threshold`, Sohn et al. 2020 sec. 3.1, or UDA's KL, Xie et al. 2020 eq. 1):
    loss += consistency_weight * L_cons(q(y | x_u), q(y | strong(x_u)))
It is then M2 plus consistency regularization, not a pure generative model: its table rows say "(hybrid)".

M1+M2: with `encoder:` set to an M1 run or exported encoder folder (loaded frozen with
genssl.encoders.load.load_encoder), M2 models z1 ~ q(z1 | x) instead of pixels, with a Gaussian p(z1 | y, z2);
z1 is re-sampled at every step, as in the original, and is the posterior mean when predicting. With
`m1_active_threshold`, only M1's active dims are modelled (std over images of the posterior means above the
threshold, measured on the first unlabeled batch of a fresh run and kept in the `m1_keep` buffer, so a
checkpoint restores it): the others are zeroed at the encoder's and classifier's inputs and left out of
log p(z1 | y, z2). M1's unused dims are noise around 0 that the Gaussian p(z1 | y, z2) would spend its
capacity on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genssl import losses
from genssl.data.augment import strong
from genssl.data.spec import DataSpec
from genssl.methods.enumerated import EnumeratedConfig, EnumeratedModel, active_dims, rec_gain, step_loss
from genssl.nn.classifiers import ClassifierFeatures, make_classifier
from genssl.nn.vae import Decoder, GaussianEncoder, likelihood_mean, log_likelihood, n_params, reparameterize
from genssl.registry import register_method

PRIORS = ("standard", "mixture")


@register_method("vae_m2")
class VAEM2(EnumeratedModel):
    """M2 and M1+M2 (module docstring). Exports its classifier and samples classes on pixels only
    (EnumeratedModel); trains stacked except with m1_active_threshold (stacking_refusal)."""

    # bf16 with the encoder head in fp32 (genssl.nn.vae), MLP, paired over 10 seeds at equal CPU cost
    # (experiments/realistic/results.md, precision_mlp; AVX-512 EPYC): bf16 - fp32 -0.06 [-0.62, +0.44] at 60 s
    # (1.6x the steps), -0.02 [-0.46, +0.36] at the full 3,000 steps (240 s): equal accuracy within half a point,
    # the schedule done in ~0.6x the time. The five unpaired seeds of 2026-12-06 (-1.09 +- 1.64) did not decide it.
    auto_bf16 = True
    typicality_score = "elbo"

    @dataclass
    class Config(EnumeratedConfig):
        """EnumeratedConfig's options (likelihood, binarize, alpha, cls_weight_pool, classifier_weight,
        labeled_weight, kl_warmup, lr, encoder: M1+M2) and M2's own."""
        arch: str = "mlp"
        """mlp | conv: encoder/decoder bodies (and classifier, unless cls_arch is set)."""
        enc_hidden: tuple[int, ...] = (500,)
        dec_hidden: tuple[int, ...] = (500,)
        cls_hidden: tuple[int, ...] = (500,)
        cls_arch: str | None = None
        """mlp | conv; None follows arch."""
        cls_dropout: float = 0.0
        z_dim: int = 50
        cls_input_noise: float = 0.0
        """Std of Gaussian noise added to the classifier's inputs (pixels or M1 latents) while training; 0: none."""
        cls_weight_decay: float = 0.0
        """Decoupled weight decay (AdamW) on the classifier's weight matrices; 0 keeps plain Adam."""
        prior: str = "standard"
        """standard: p(z) = N(0, I) | mixture: p(z | y) = N(mu_y, diag sigma_y^2), learned (starts at N(0, I))."""
        m1_active_threshold: float | None = None
        """M1+M2: model only M1's dims whose posterior-mean std over images exceeds this (e.g. 0.1); None: all."""
        consistency: str = "none"
        """none (M2) | kl | fixmatch: the hybrid's consistency term on q(y | x) (module docstring)."""
        consistency_weight: float = 1.0
        consistency_threshold: float = 0.95
        """fixmatch: keep the weak view's hard label where its confidence is at least this."""

    @classmethod
    def stacking_refusal(cls, cfg) -> str | None:
        if cfg.m1_active_threshold is not None:  # each seed keeps its own set of dims: no common shape to vmap
            return f"{cls.name}: m1_active_threshold models a different set of M1 dims per seed"
        return super().stacking_refusal(cfg)

    @classmethod
    def capture_refusal(cls, cfg) -> str | None:
        if cfg.m1_active_threshold is not None:  # x[..., mask] reads the number of kept dims on the host
            return f"{cls.name}: m1_active_threshold selects M1 dims with a boolean mask, a host synchronisation"
        return super().capture_refusal(cfg)

    def __init__(self, cfg: Config, spec: DataSpec):
        if cfg.prior not in PRIORS:
            raise ValueError(f"unknown prior {cfg.prior!r}; choose one of {', '.join(PRIORS)}")
        if cfg.cls_input_noise < 0 or cfg.cls_weight_decay < 0:
            raise ValueError(f"cls_input_noise and cls_weight_decay must be >= 0, got {cfg.cls_input_noise} / "
                             f"{cfg.cls_weight_decay}")
        if cfg.consistency not in losses.CONSISTENCY:
            raise ValueError(f"vae_m2 consistency={cfg.consistency!r} is not one of {', '.join(losses.CONSISTENCY)}")
        if cfg.consistency_weight < 0 or not 0.0 <= cfg.consistency_threshold <= 1.0:
            raise ValueError(f"vae_m2 needs consistency_weight >= 0 and consistency_threshold in [0, 1], got "
                             f"{cfg.consistency_weight} / {cfg.consistency_threshold}")
        if cfg.m1_active_threshold is not None and cfg.encoder is None:
            raise ValueError("m1_active_threshold selects M1 latent dims: it needs `encoder` (M1+M2)")
        super().__init__(cfg, spec, cfg.arch, cfg.cls_arch)
        K, shape = spec.num_classes, self.input_shape
        # M1's modelled dims: set by initialize() on a fresh run, restored from checkpoints; None models all
        keep = torch.ones(shape[0], dtype=torch.bool) if cfg.m1_active_threshold is not None else None
        self.register_buffer("m1_keep", keep)
        self.classifier = make_classifier(cfg.cls_arch or cfg.arch, shape, K, cfg.cls_hidden, cfg.cls_dropout)
        self.encoder = GaussianEncoder(shape, cfg.z_dim, cfg.arch, cfg.enc_hidden, cond_dim=K)
        self.decoder = Decoder(shape, cfg.z_dim, cfg.arch, cfg.dec_hidden, cond_dim=K,
                               n_params=n_params(self.likelihood))
        if cfg.prior == "mixture":  # p(z | y) = N(mu_y, diag exp(logvar_y)), starting at N(0, I)
            self.prior_mu = torch.nn.Parameter(torch.zeros(K, cfg.z_dim))
            self.prior_logvar = torch.nn.Parameter(torch.zeros(K, cfg.z_dim))

    def configure_optimizers(self):
        if self.cfg.cls_weight_decay == 0:
            return super().configure_optimizers()
        # decay the classifier's weight matrices only (not biases / BN); fused as in EnumeratedModel
        params = [p for p in self.parameters() if p.requires_grad]
        decayed = [p for p in self.classifier.parameters() if p.requires_grad and p.dim() > 1]
        ids = {id(p) for p in decayed}
        groups = [{"params": [p for p in params if id(p) not in ids], "weight_decay": 0.0},
                  {"params": decayed, "weight_decay": self.cfg.cls_weight_decay}]
        fused = params[0].device.type in ("cpu", "cuda")
        return {"main": torch.optim.AdamW(groups, lr=self.cfg.lr, fused=fused)}

    def initialize(self, batch) -> None:
        """M1+M2 with m1_active_threshold: find M1's active dims on the first unlabeled batch of a fresh run."""
        if self.m1 is not None and self.cfg.m1_active_threshold is not None:
            with torch.no_grad():
                mu = self.m1(batch.x_u).float()  # (B_u, D1) posterior means
            self.m1_keep.copy_(active_dims(mu, self.cfg.m1_active_threshold))

    def m1_inputs(self, z1: torch.Tensor) -> torch.Tensor:
        """M1 latents with the inactive dims zeroed (when m1_active_threshold is set)."""
        return z1 if self.m1_keep is None else z1 * self.m1_keep.to(z1.dtype)

    def _log_likelihood(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x | params) over the modelled dims: all of them, or M1's active ones."""
        if self.m1_keep is not None:
            params, x = params[..., self.m1_keep], x[..., self.m1_keep]
        return log_likelihood(self.likelihood, params, x, len(self.input_shape))

    def _kl(self, mu: torch.Tensor, logvar: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """KL(q(z | x, y) || p(z | y)) per row; y (R,) the class of each row of mu, logvar (R, D)."""
        if self.cfg.prior == "mixture":
            return losses.gaussian_kl(mu, logvar, self.prior_mu[y], self.prior_logvar[y])
        return losses.gaussian_kl_standard(mu, logvar)

    def prior_sample(self, y: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """z ~ p(z | y) for the classes y (...,); eps (..., D) standard normal noise (drawn when None)."""
        if eps is None:
            eps = torch.randn(*y.shape, self.cfg.z_dim, device=y.device)
        if self.cfg.prior == "mixture":
            return self.prior_mu[y] + torch.exp(0.5 * self.prior_logvar[y]) * eps
        return eps

    # ------------------------------------------------------------------ the bounds
    def neg_labeled_bound(self, x: torch.Tensor, y: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """-L(x, y), eq. 6, for one given class per image: x (B, ...), y (B,) -> (B,). The reference path; the
        training step computes the same quantity fused with the enumeration in `bounds`."""
        y_code = F.one_hot(y, self.spec.num_classes).float()
        mu, logvar = self.encoder.posterior(x, y_code)
        z = reparameterize(mu, logvar) if sample else mu
        rec = self._log_likelihood(self.decoder(z, y_code), x.float())
        return rec + self.log_prior_y - self._kl(mu, logvar, y)

    def bounds(self, x_l: torch.Tensor, y_l: torch.Tensor, x_u: torch.Tensor, sample: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """-L(x_l, y_l) (B_l,) and -L(x_u, y) for every class y (B_u, K), in one pass over B_l + B_u*K rows."""
        K, n_l, n_u = self.spec.num_classes, x_l.shape[0], x_u.shape[0]
        mu, logvar = self.encoder.posterior_labeled_and_all(x_l, y_l, x_u)  # (R, D), R = B_l + B_u*K
        eye = losses.class_conditions(K, x_l.device)
        y_rows = torch.cat([y_l, torch.arange(K, device=y_l.device).repeat(n_u)])  # (R,) the class of each row
        y_code = eye[y_rows]  # (R, K)
        z = reparameterize(mu, logvar) if sample else mu
        params = self.decoder(z, y_code)  # (R, P, *shape)
        rec_l = self._log_likelihood(params[:n_l], x_l.float())  # (B_l,)
        params_u = params[n_l:].unflatten(0, (n_u, K))  # (B_u, K, P, *shape)
        rec_u = self._log_likelihood(params_u, x_u.float()[:, None])  # (B_u, K), no copy of x
        kl = self._kl(mu, logvar, y_rows)  # (R,)
        neg_L_l = rec_l + self.log_prior_y - kl[:n_l]
        neg_L_u = rec_u + self.log_prior_y - kl[n_l:].unflatten(0, (n_u, K))
        return neg_L_l, neg_L_u, {"rec_l": rec_l, "rec_u": rec_u, "kl_l": kl[:n_l],
                                  "kl_u": kl[n_l:].unflatten(0, (n_u, K))}

    def objective(self, x_l, y_l, x_u, sample: bool = True, beta: float = 1.0,
                  x_strong: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The per-step loss (module docstring) and its terms. `beta` < 1 down-weights the KL terms (warm-up);
        the bounds reported are always the true ones. `x_strong` (B_u, ...): the strong views of x_u, for the
        hybrid's consistency term."""
        n_l, n_u = x_l.shape[0], x_u.shape[0]
        x_cls = torch.cat([x_l, x_u] + ([x_strong] if x_strong is not None else []))
        if self.training and self.cfg.cls_input_noise > 0:
            x_cls = x_cls + self.cfg.cls_input_noise * torch.randn_like(x_cls)
        logits = self.classifier(x_cls).float()  # (B_l + B_u [+ B_u], K): one pass, batch norm sees all
        logits_l, logits_u, logits_strong = logits[:n_l], logits[n_l:n_l + n_u], logits[n_l + n_u:]
        neg_L_l, neg_L_u, parts = self.bounds(x_l, y_l, x_u, sample)
        ce_l = F.cross_entropy(logits_l, y_l, reduction="none")  # (B_l,)
        out = {"neg_L_l": neg_L_l.mean(), "ce": ce_l.mean(), "kl_l": parts["kl_l"].mean(),
               "rec_l": parts["rec_l"].mean()}
        out |= step_loss(neg_L_l, parts["kl_l"], ce_l, self.cls_weight, neg_L_u, parts["kl_u"], logits_u, beta,
                         self.cfg.labeled_weight)
        if x_u.shape[0]:
            out["entropy_u"] = losses.entropy_from_logits(logits_u).mean()
            out["rec_gain_y"] = rec_gain(parts["rec_u"], logits_u)
        if x_strong is not None:
            cons, cons_logs = losses.consistency_loss(self.cfg.consistency, logits_u, logits_strong,
                                                      self.cfg.consistency_threshold)
            out["loss"] = out["loss"] + self.cfg.consistency_weight * cons
            out |= cons_logs
        return out

    def stage_loss(self, name, batch, step, carry):
        if self.cfg.consistency == "none":
            return super().stage_loss(name, batch, step, carry)
        # the hybrid: strong views of the unlabeled images, prepared like x_u
        return super().stage_loss(name, batch, step, carry,
                                  x_strong=self.prepare(strong(batch.x_u, flip=self.spec.hflip)))

    def compile_networks(self) -> None:
        """torch.compile the whole objective (networks, bounds and losses in one graph) rather than each network:
        inductor then fuses the likelihood's and KL's elementwise chains over the B*K enumerated rows, which cost
        about as much as the matmuls in bf16. One Xeon core, bf16: 23.0 vs 31.1 CPU ms per step after ~40 s of
        compiling; compiling each network alone gained nothing (benchmarks/README.md)."""
        self.objective = torch.compile(self.objective)

    def classifier_features(self):
        """The classifier's last hidden layer as an exportable encoder (pixel M2 only: encoder_module)."""
        c = self.cfg
        return ClassifierFeatures(c.cls_arch or c.arch, self.input_shape, self.spec.num_classes, c.cls_hidden,
                                  c.cls_dropout, net=self.classifier)

    # ------------------------------------------------------------------ inference
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features_in(x))  # q(y | x) logits

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(self.features_in(x))  # (B, H): the classifier's last hidden layer

    def typicality(self, x: torch.Tensor) -> torch.Tensor:
        """-U(x) = sum_y q(y | x) (-L(x, y)) + H(q(y | x)) per image (eq. 7, -L(x, y) of eq. 6 with one sample of z
        per class): the bound on log p(x) with the class marginalised, (B,). On M1 latents (M1+M2) it bounds
        log p(z1) at M1's posterior mean z1, over the modelled dims. Called through
        genssl.methods.typicality.typicality_scores."""
        x_in = self.features_in(x).float()
        no_labels = torch.zeros(0, dtype=torch.long, device=x.device)
        _, neg_L_u, _ = self.bounds(x_in[:0], no_labels, x_in)  # (B, K)
        return losses.unlabeled_bound(neg_L_u, self.classifier(x_in))

    def generate(self, y: torch.Tensor) -> torch.Tensor:
        """p(x | y, z)'s parameters for z ~ p(z | y) (sample: their likelihood means)."""
        return self.decoder(self.prior_sample(y), F.one_hot(y, self.spec.num_classes).float())

    @torch.no_grad()
    def eval_images(self, x: torch.Tensor):
        if self.m1 is not None:
            return {}  # M2 lives in M1's latent space: no pixels to show without M1's decoder
        K, n, event = self.spec.num_classes, 10, len(self.input_shape)
        x = x[:n]
        y = self.classifier(x).argmax(1)
        mu, _ = self.encoder.posterior(x, F.one_hot(y, K).float())  # (n, D): the "style" of each image
        eye = losses.class_conditions(K, x.device)
        # Analogies (paper fig. 1): row 0 the images, then a row per class, a column per image's z.
        analog = likelihood_mean(self.likelihood, self.decoder(mu[None].expand(K, -1, -1), eye[:, None]), event)
        analog = torch.cat([x[None].float(), analog]).flatten(0, 1)  # ((K + 1) * n, C, H, W)
        # Class-conditional samples: a row per class, a column per shared noise eps ~ N(0, I), z ~ p(z | y).
        eps = torch.randn(n, self.cfg.z_dim, device=x.device)
        ys = torch.arange(K, device=x.device)[:, None].expand(K, n)  # (K, n)
        z = self.prior_sample(ys, eps[None].expand(K, -1, -1))  # (K, n, D)
        grid = likelihood_mean(self.likelihood, self.decoder(z, eye[:, None]), event)
        recon = likelihood_mean(self.likelihood, self.decoder(mu, F.one_hot(y, K).float()), event)
        return {"vae_m2/analogies": (analog.clamp(0, 1), n), "vae_m2/class_samples": (grid.flatten(0, 1).clamp(0, 1), n),
                "vae_m2/reconstructions": (torch.stack([x.float(), recon], 0).flatten(0, 1).clamp(0, 1), n)}
