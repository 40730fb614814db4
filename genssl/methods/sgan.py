"""Semi-supervised GAN with a K+1-class discriminator and feature matching (Salimans, Goodfellow, Zaremba,
Cheung, Radford & Chen 2016, "Improved Techniques for Training GANs", Sec. 5 and Sec. 3.1; recipe from their
code, openai/improved-gan).

The discriminator is a K+1-way classifier whose class K+1 means "generated". Its fake logit is fixed at 0
(`fake_logit: implicit`, the paper's choice), so with Z(x) = sum_k exp(l_k(x)), D(x) = Z(x) / (Z(x) + 1) and
it is trained on (Sec. 5)

    L_D = L_supervised + w * L_unsupervised
    L_supervised   = -E_{x,y ~ p_data} log p(y | x, y < K+1)                 (cross-entropy on the K logits)
    L_unsupervised = -E_{x ~ p_data} log D(x) - E_{z} log(1 - D(G(z)))
                   =  E_real[-lse(l) + softplus(lse(l))] + E_fake[softplus(lse(l))]

(w = 0.5 in the original code). `fake_logit: explicit` learns a (K+1)-th logit instead (a plain K+1 softmax).
The generator minimizes feature matching (Sec. 3.1) on the discriminator's last hidden layer f:

    L_G = || E_{x ~ p_data} f(x) - E_z f(G(z)) ||^2

Each step: one fused discriminator pass over [labeled; unlabeled; generated] (the discriminator has no
batch-coupled layers, so fusing changes nothing but the speed), a discriminator update, an update of the
EMA of its weights, then the generator update through the *updated* discriminator (its parameters frozen,
so no gradient is computed for them). The same generated batch serves both updates. Evaluation uses the
EMA weights (the original's parameter averaging). The learning rate follows the original: Adam
(lr 0.003, beta1 0.5) held constant, then decayed linearly to 0 from `lr_decay_start` of the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genssl.data.augment import random_translate
from genssl.nn.ema import EMA
from genssl.nn.gan import GAN_ARCHS, data_dependent_init, frozen, make_gan
from genssl.losses import (entropy_from_logits, feature_matching_loss, sgan_d_prob, sgan_supervised_loss,
                      sgan_unsupervised_loss, sgan_unsupervised_loss_explicit)
from genssl.registry import register_method
from genssl.data.spec import DataSpec
from genssl.methods.base import Method

FAKE_LOGITS = ("implicit", "explicit")
FM_REAL = ("fresh", "d_step")


@register_method("sgan")
class SGAN(Method):
    @dataclass
    class Config:
        arch: str = "mlp"
        """mlp (the paper's MNIST model) | conv (the paper's 32x32 SVHN/CIFAR-10 model)."""
        d_hidden: tuple[int, ...] = (1000, 500, 250, 250, 250)
        g_hidden: tuple[int, ...] = (500, 500)
        z_dim: int = 100
        input_noise: float = 0.3
        """Std of the Gaussian noise added to the discriminator's input (mlp)."""
        hidden_noise: float = 0.5
        """Std of the Gaussian noise after each hidden layer (mlp)."""
        conv_width: int = 96
        """Channels of the first conv stage (96 CIFAR-10, 64 SVHN); the later stages use twice as many."""
        fake_logit: str = "implicit"
        """implicit (fixed at 0, the paper) | explicit (a learned K+1-th logit)."""
        unsup_weight: float = 0.5
        """w in L_D = L_supervised + w * L_unsupervised."""
        entropy_weight: float = 0.0
        """Optional extra term lambda * E_unlabeled H(p(y | x, y < K+1)) in L_D: the conditional-entropy
        penalty of Dai et al. 2017 ("Good Semi-supervised Learning That Requires a Bad GAN"); 0 = the paper."""
        augment_shift: int = 0
        """Random translation (pixels) of the real images the discriminator sees; 0 = the paper."""
        fm_norm: str = "l2"
        """l2 (squared, the original for MNIST) | l1 (the original for SVHN/CIFAR-10)."""
        fm_real: str = "fresh"
        """Real features for feature matching: fresh (recomputed with the updated D, as the original) |
        d_step (reused from the discriminator's pass, one forward fewer per step)."""
        lr: float = 0.003
        beta1: float = 0.5
        lr_decay_start: float = 1.0
        """Fraction of the run after which the lr decays linearly to 0 (2/3 for SVHN/CIFAR-10; 1.0 never)."""
        ema_decay: float = 0.999
        """Decay of the evaluation weights' moving average (0 evaluates the raw weights)."""
        collapse_threshold: float = 1e-3
        """check_health stops the run when train/unsup_loss stays below this ..."""
        collapse_window: int = 2000
        """... for this many steps (the discriminator separates real from generated perfectly)."""
        n_samples: int = 100
        """Images in the fixed-noise sample grid shown at each evaluation."""

    def __init__(self, cfg: Config, spec: DataSpec):
        super().__init__(cfg, spec)
        for key, value, valid in (("fake_logit", cfg.fake_logit, FAKE_LOGITS), ("fm_real", cfg.fm_real, FM_REAL),
                                  ("fm_norm", cfg.fm_norm, ("l2", "l1")), ("arch", cfg.arch, GAN_ARCHS)):
            if value not in valid:
                raise ValueError(f"sgan {key}={value!r} is not one of {', '.join(valid)}")
        if not 0.0 < cfg.lr_decay_start <= 1.0:
            raise ValueError(f"sgan lr_decay_start must be in (0, 1], got {cfg.lr_decay_start}")
        self.explicit = cfg.fake_logit == "explicit"
        k = spec.num_classes
        self.disc, self.gen = make_gan(cfg.arch, spec.image_shape, k + 1 if self.explicit else k, cfg.z_dim,
                                       cfg.d_hidden, cfg.g_hidden, cfg.input_noise, cfg.hidden_noise, cfg.conv_width)
        self.ema = EMA(self.disc, cfg.ema_decay)
        # A fixed noise batch makes the evaluation grids comparable across steps (and resumes).
        self.register_buffer("fixed_z", torch.rand(cfg.n_samples, cfg.z_dim))
        self._low_unsup_since: int | None = None

    # ------------------------------------------------------------------ set-up
    def configure_optimizers(self):
        kw = dict(lr=self.cfg.lr, betas=(self.cfg.beta1, 0.999))
        if self.fixed_z.device.type in ("cpu", "cuda"):
            kw["fused"] = True  # one kernel per step instead of several per parameter
        return {"d": torch.optim.Adam(self.disc.parameters(), **kw), "g": torch.optim.Adam(self.gen.parameters(), **kw)}

    @torch.no_grad()
    def initialize(self, batch) -> None:
        """Data-dependent init of the weight-normalized layers (generator on noise, discriminator on real
        images), then the EMA starts from the initialized weights."""
        x = torch.cat([batch.x_l, batch.x_u])
        data_dependent_init(self.gen, self.noise(x.shape[0], x.device))
        data_dependent_init(self.disc, x)
        self.ema.reset(self.disc)

    def noise(self, n: int, device=None) -> torch.Tensor:
        return torch.rand(n, self.cfg.z_dim, device=device if device is not None else self.fixed_z.device)

    def lr_at(self, step: int) -> float:
        start = self.cfg.lr_decay_start * self.total_steps
        if step < start:
            return self.cfg.lr
        return self.cfg.lr * max(0.0, (self.total_steps - step) / max(self.total_steps - start, 1.0))

    # ------------------------------------------------------------------ the step
    def class_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, :-1] if self.explicit else logits  # (B, K)

    def stage_loss(self, name, batch, step, carry):
        """The step's two losses apart from their updates ("d", then "g"), so that genssl.training.stacked can train
        seeds together; `carry` hands the generated batch (with the generator's graph) from "d" to "g"."""
        if name == "d":
            lr = self.lr_at(step)
            self.set_lr("d", lr)
            self.set_lr("g", lr)
            n_l, n_u = batch.x_l.shape[0], batch.x_u.shape[0]
            x_l = random_translate(batch.x_l, self.cfg.augment_shift)
            x_u = random_translate(batch.x_u, self.cfg.augment_shift)
            x_fake = self.gen(self.noise(n_u, batch.x_u.device))  # (B_u, C, H, W), keeps G's graph for its step

            # Discriminator: one pass over labeled, unlabeled and generated images.
            feats = self.disc.features(torch.cat([x_l, x_u, x_fake.detach()]))  # (B_l+2B_u, F)
            logits = self.disc.head(feats).float()  # (B_l+2B_u, K or K+1)
            l_lab, l_unl, l_fake = logits.split([n_l, n_u, n_u])
            sup = sgan_supervised_loss(self.class_logits(l_lab), batch.y_l)
            unsup_fn = sgan_unsupervised_loss_explicit if self.explicit else sgan_unsupervised_loss
            unsup = unsup_fn(l_unl, l_fake)
            loss = sup + self.cfg.unsup_weight * unsup
            if self.cfg.entropy_weight:
                loss = loss + self.cfg.entropy_weight * entropy_from_logits(self.class_logits(l_unl)).mean()
            with torch.no_grad():
                acc = (self.class_logits(l_lab).argmax(1) == batch.y_l).float().mean()
                d_real = sgan_d_prob(l_unl, self.explicit).mean()
                d_fake = sgan_d_prob(l_fake, self.explicit).mean()
            logs = {"train/sup_loss": sup.detach(), "train/unsup_loss": unsup.detach(), "train/d_real": d_real,
                    "train/d_fake": d_fake, "train/lab_acc": acc, "train/lr": torch.tensor(lr)}
            return loss, logs, {"x_u": x_u, "x_fake": x_fake, "f_unl": feats[n_l:n_l + n_u].detach()}

        # Generator: feature matching through the updated discriminator (the caller freezes its weights).
        if self.cfg.fm_real == "fresh":
            with torch.no_grad():
                f_real = self.disc.features(carry["x_u"])  # (B_u, F)
        else:
            f_real = carry["f_unl"]
        f_fake = self.disc.features(carry["x_fake"])  # (B_u, F)
        fm = feature_matching_loss(f_real.float(), f_fake.float(), self.cfg.fm_norm)
        return fm, {"train/fm_loss": fm.detach()}, carry

    def after_update(self, name):
        if name == "d":
            self.ema.update(self.disc)

    def train_step(self, batch, step):
        loss, logs, carry = self.stage_loss("d", batch, step, {})
        self.update(loss, "d")
        self.after_update("d")
        with frozen(self.disc):  # the generator's step computes no gradient for the discriminator's weights
            fm, g_logs, _ = self.stage_loss("g", batch, step, carry)
            self.update(fm, "g")
        return logs | g_logs

    # ------------------------------------------------------------------ health
    def check_health(self, means, step):
        """A discriminator that tells real from generated perfectly drives L_unsupervised to ~0; feature
        matching then no longer moves the generator toward the data and the semi-supervised signal is gone."""
        u = means.get("train/unsup_loss")
        if u is None:
            return None
        if u >= self.cfg.collapse_threshold:
            self._low_unsup_since = None
            return None
        if self._low_unsup_since is None:
            self._low_unsup_since = step
        if step - self._low_unsup_since >= self.cfg.collapse_window:
            d_fake = means.get("train/d_fake", float("nan"))
            return (f"discriminator collapse: train/unsup_loss has stayed below {self.cfg.collapse_threshold:g} "
                    f"since step {self._low_unsup_since} (now {u:.3g} at step {step}); the discriminator separates "
                    f"real from generated images perfectly (mean D(fake) = {d_fake:.3g}), so the generator has "
                    f"stopped learning")
        return None

    # ------------------------------------------------------------------ inference
    def _eval_net(self):
        return self.ema.shadow if self.cfg.ema_decay > 0 else self.disc

    def predict(self, x):
        return self.class_logits(self._eval_net()(x))  # (B, K)

    def encode(self, x):
        return self._eval_net().features(x)  # (B, F)

    @torch.no_grad()
    def sample(self, n: int, y=None) -> torch.Tensor:
        """n generated images (N, C, H, W) in [0, 1]. The generator is unconditional: label them with
        `predict` (see genssl.downstream.samples)."""
        if y is not None:
            raise ValueError("sgan's generator is unconditional: sample(n, y) with labels is not supported; "
                             "call sample(n) and label the images with predict()")
        return self.gen(self.noise(n)).float()

    @torch.no_grad()
    def eval_images(self, x):
        grid = self.gen(self.fixed_z).float()  # (n_samples, C, H, W)
        return {"samples/fixed_noise": (grid, 10)}
