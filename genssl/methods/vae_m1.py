"""M1: a latent-feature VAE (Kingma, Rezende, Mohamed & Welling 2014, sec. 2.1), with a downstream classifier.

Generative story (SSL eq. 1):   z ~ N(0, I),   x ~ p_theta(x | z)   (Bernoulli for grey images, Gaussian else)
Inference model:                q_phi(z | x) = N(mu_phi(x), diag sigma^2_phi(x))
Objective, maximized on every unlabeled image (AEVB eq. 10):
    ELBO(x) = E_q[log p(x | z)] - beta_t * KL(q(z | x) || p(z))
with one reparameterized sample and the analytic KL; beta_t ramps 0 -> 1 over `kl_warmup` of the run
(KL warm-up, Sonderby et al. 2016) and is 1 without it. Labels are never used for training: before each
evaluation `fit_readout` fits a classifier (linear | mlp | knn, genssl.nn.probes) on the posterior means
of the labeled images, and `predict` applies it, so the trainer's accuracy is "M1 + downstream".
With `binarize`, each image is re-binarized x ~ Bernoulli(x) at every step (the paper's dynamic binarization).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genssl import losses
from genssl.data.spec import DataSpec
from genssl.methods.base import Method
from genssl.methods.schedules import kl_weight
from genssl.methods.typicality import importance_weighted_bound
from genssl.nn.probes import fit_classifier
from genssl.nn.vae import (
    Decoder,
    GaussianEncoder,
    likelihood_mean,
    log_likelihood,
    n_params,
    reparameterize,
    resolve_likelihood,
)
from genssl.registry import register_method

READOUTS = ("linear", "mlp", "knn")


@register_method("vae_m1")
class VAEM1(Method):
    has_encoder = True
    supports_stacking = True
    capturable = True
    typicality_score = "elbo"
    @dataclass
    class Config:
        arch: str = "mlp"
        """mlp | conv (28x28 or 32x32 images)."""
        hidden: tuple[int, ...] = (500, 500)
        """Hidden widths of encoder and decoder (the decoder mirrors them); conv uses hidden[0] for its dense layer."""
        z_dim: int = 50
        likelihood: str = "auto"
        """auto (Bernoulli for 1 channel, Gaussian otherwise) | bernoulli | gaussian."""
        binarize: bool = False
        """Dynamic binarization x ~ Bernoulli(x) at every step (Bernoulli likelihood only)."""
        kl_warmup: float = 0.0
        """Fraction of the run over which the KL weight ramps from 0 to 1."""
        lr: float = 1e-3
        readout: str = "linear"
        """Downstream classifier on the latent means: linear | mlp | knn."""
        readout_k: int | None = None
        """Neighbours for readout=knn; None uses genssl.nn.probes's default."""

    def __init__(self, cfg: Config, spec: DataSpec):
        super().__init__(cfg, spec)
        if cfg.readout not in READOUTS:
            raise ValueError(f"unknown readout {cfg.readout!r}; choose one of {', '.join(READOUTS)}")
        self.likelihood = resolve_likelihood(cfg.likelihood, spec.image_shape)
        if cfg.binarize and self.likelihood != "bernoulli":
            raise ValueError(f"binarize=True needs likelihood='bernoulli', got {self.likelihood!r}")
        shape = spec.image_shape
        self.encoder = GaussianEncoder(shape, cfg.z_dim, cfg.arch, cfg.hidden)
        self.decoder = Decoder(shape, cfg.z_dim, cfg.arch, tuple(reversed(cfg.hidden)),
                               n_params=n_params(self.likelihood))
        # The readout is refitted before every evaluation from the labeled images' latent means. Those means,
        # the labels and the seed are the method's extra state, so a checkpoint rebuilds the fitted readout
        # without the dataset; the readout's own weights never enter the state_dict.
        self._readout_data: dict = {}
        self._readouts: list = []  # a plain list keeps the fitted classifier out of the module tree

    def configure_optimizers(self):
        return {"main": torch.optim.Adam(self.parameters(), lr=self.cfg.lr)}

    def encoder_module(self) -> GaussianEncoder:
        return self.encoder

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bernoulli(x) if self.cfg.binarize and self.training else x

    def elbo_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction log-likelihood, KL) per image, (B,) each, one reparameterized sample."""
        mu, logvar = self.encoder.posterior(x)  # (B, D)
        params = self.decoder(reparameterize(mu, logvar))  # (B, P, C, H, W)
        rec = log_likelihood(self.likelihood, params, x.float(), len(self.spec.image_shape))
        return rec, losses.gaussian_kl_standard(mu, logvar)

    def stage_loss(self, name, batch, step, carry):
        """The negative ELBO of the unlabeled batch, its KL weighted by the warm-up (one stage)."""
        x = self.prepare(batch.x_u)
        rec, kl = self.elbo_terms(x)
        beta = self.step_values(step)["kl_weight"]
        loss = (beta * kl - rec).mean()
        logs = {"train/elbo": (rec - kl).mean().detach(), "train/rec": rec.mean().detach(),
                "train/kl": kl.mean().detach(), "train/kl_weight": self.log_value(beta)}
        return loss, logs, carry

    def schedule(self, step: int) -> dict[str, float]:
        return {"kl_weight": kl_weight(step, self.total_steps, self.cfg.kl_warmup)}

    # ------------------------------------------------------------------ inference
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # posterior mean (B, D)

    def typicality(self, x: torch.Tensor, samples: int = 1) -> torch.Tensor:
        """A lower bound on log p(x) per image, (B,): samples = 1, the ELBO (AEVB eq. 10) E_q[log p(x | z)] -
        KL(q(z | x) || p(z)) with one sample and the analytic KL (the KL weight 1, whatever the warm-up); samples =
        k > 1, the importance-weighted bound (Burda et al. 2016, eq. 8) log (1/k) sum_i p(x | z_i) p(z_i) / q(z_i | x),
        z_i ~ q(z | x). Called through genssl.methods.typicality.typicality_scores."""
        if samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        x = x.float()
        if samples == 1:
            rec, kl = self.elbo_terms(x)
            return rec - kl
        mu, logvar = self.encoder.posterior(x)  # (B, D)
        mu, logvar = mu.float(), logvar.float()
        z = mu + torch.exp(0.5 * logvar) * torch.randn(samples, *mu.shape, device=x.device)  # (k, B, D)
        params = self.decoder(z.flatten(0, 1)).unflatten(0, (samples, x.shape[0]))  # (k, B, P, C, H, W)
        log_px = log_likelihood(self.likelihood, params, x[None], len(self.spec.image_shape))  # (k, B)
        log_pz = losses.gaussian_log_likelihood(z, torch.zeros_like(z), torch.zeros_like(z), 1)
        log_qz = losses.gaussian_log_likelihood(z, mu, logvar, 1)
        return importance_weighted_bound(log_px + log_pz - log_qz)

    @torch.no_grad()
    def fit_readout(self, x_l: torch.Tensor, y_l: torch.Tensor, seed: int = 0) -> None:
        was_training = self.training
        self.eval()
        feats = torch.cat([self.encode(x).float() for x in x_l.split(1000)])  # (N_l, D)
        self.train(was_training)
        self._fit_readout_on(feats, y_l, seed)

    def _fit_readout_on(self, feats: torch.Tensor, y_l: torch.Tensor, seed: int) -> None:
        extra = {"k": self.cfg.readout_k} if self.cfg.readout == "knn" and self.cfg.readout_k else {}
        self._readouts = [fit_classifier(feats, y_l, self.spec.num_classes, self.cfg.readout, seed, **extra)]
        self._readout_data = {"features": feats.detach(), "labels": y_l.detach(), "seed": int(seed)}

    def get_extra_state(self) -> dict:
        return dict(self._readout_data)

    def set_extra_state(self, state: dict) -> None:
        if state:  # a checkpoint saved after a readout was fitted: refit it (deterministic for the seed)
            device = next(self.parameters()).device
            self._fit_readout_on(state["features"].to(device), state["labels"].to(device), state["seed"])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if not self._readouts:
            raise RuntimeError("vae_m1 predicts through its downstream classifier: call fit_readout(x_l, y_l) first")
        return self._readouts[0](self.encode(x).float())

    @torch.no_grad()
    def eval_images(self, x: torch.Tensor):
        n = min(32, x.shape[0])
        event = len(self.spec.image_shape)
        recon = likelihood_mean(self.likelihood, self.decoder(self.encoder(x[:n])), event)
        pairs = torch.stack([x[:n].float(), recon], 1).flatten(0, 1)  # original, reconstruction, ...
        z = torch.randn(64, self.cfg.z_dim, device=x.device)
        samples = likelihood_mean(self.likelihood, self.decoder(z), event)
        return {"vae_m1/reconstructions": (pairs.clamp(0, 1), 16), "vae_m1/samples": (samples.clamp(0, 1), 8)}
