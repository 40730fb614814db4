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
EMA weights (the original's parameter averaging), and so does the exported encoder (`genssl export`): the
discriminator's feature layer f (`encoder_module`). The learning rate follows the original: Adam
(lr 0.003, beta1 0.5) held constant, then decayed linearly to 0 from `lr_decay_start` of the run.

Levers, all off by default (each term is a pure function of genssl.losses, logged under train/):
- `augment_shift`: the real images the discriminator sees (labeled and unlabeled) are augmented by the shared
  weak augmentation (genssl.data.augment.weak: a horizontal flip where the data allow it, DataSpec.hflip, and
  a random reflection-padded translation of up to `augment_shift` pixels). Still a pure GAN.
- `labeled_augment: strong`: the labeled images of the supervised term are seen through the strong view
  (RandAugment + Cutout, genssl.data.augment.strong), as `supervised` with `augment: strong` sees them; the
  real-vs-generated term is unchanged. Augmentation of the labels only: no consistency term, still a pure GAN.
- `arch: conv28`: a weight-normalized 28x28 conv discriminator (genssl.nn.gan.Conv28Discriminator).
- `arch: convnet`: the discriminator matched to FixMatch's conv net (genssl.nn.gan.MatchedConvDiscriminator).
- `entropy_weight` (conditional entropy, Bad GAN) in L_D on the unlabeled images; `pt_weight`: Bad GAN's
  pull-away term on the generated images' features in L_G; `manifold_weight`: manifold regularization
  (Lecouat et al. 2018) of the discriminator's logits along the generator's manifold, in L_D.
- `consistency: kl | fixmatch`: a two-view consistency term on the discriminator's class distribution for
  unlabeled images, the (weakly augmented) view it sees as real against a strongly augmented one
  (genssl.data.augment.strong). This makes the model a **hybrid** (a GAN plus consistency regularization),
  and its config and table row must say so:

    L_D += consistency_weight * L_cons(p(y | weak(x)), p(y | strong(x)))   (KL as UDA, or FixMatch's l_u)

Every term is computed inside `stage_loss`, so the stacked-seed step (genssl.training.stacked) trains them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genssl.data.augment import strong, weak
from genssl.data.spec import DataSpec
from genssl.losses import (
    CONSISTENCY,
    conditional_entropy_loss,
    consistency_loss,
    feature_matching_loss,
    manifold_loss,
    perturb_unit,
    pull_away_loss,
    sgan_d_prob,
    sgan_supervised_loss,
    sgan_unsupervised_loss,
    sgan_unsupervised_loss_explicit,
)
from genssl.methods.base import Method
from genssl.nn.ema import EMA
from genssl.nn.gan import GAN_ARCHS, DiscriminatorFeatures, make_gan
from genssl.nn.layers import data_dependent_init, noiseless
from genssl.registry import register_method

FAKE_LOGITS = ("implicit", "explicit")
FM_REAL = ("fresh", "d_step")
LABELED_AUGMENT = ("same", "strong")


@register_method("sgan")
class SGAN(Method):
    can_sample = True
    has_encoder = True  # the evaluation discriminator's features, every arch (encoder_module)
    supports_stacking = True
    capturable = True
    typicality_score = "log_d"
    # MLP, paired over 10 seeds at equal CPU cost (experiments/realistic/results.md, precision_mlp; AVX-512 EPYC):
    # bf16 - fp32 +1.26 [+0.54, +2.51] at 60 s (better, Holm p 0.039), +0.49 [-0.13, +1.72] at 240 s, 1.43x the
    # steps; worse at no budget. The conv D keeps bf16 on the earlier unpaired check (experiments/README.md).
    auto_bf16 = True

    @dataclass
    class Config:
        arch: str = "mlp"
        """mlp (the paper's MNIST model) | conv (the paper's 32x32 SVHN/CIFAR-10 model) | conv28 (a small 28x28
        conv discriminator with the MLP generator) | convnet (the classifiers' ConvNet stages, FixMatch's conv net,
        with weight norm instead of batch norm: genssl.nn.gan.MatchedConvDiscriminator; MLP generator)."""
        d_hidden: tuple[int, ...] = (1000, 500, 250, 250, 250)
        g_hidden: tuple[int, ...] = (500, 500)
        z_dim: int = 100
        input_noise: float = 0.3
        """Std of the Gaussian noise added to the discriminator's input (mlp)."""
        hidden_noise: float = 0.5
        """Std of the Gaussian noise after each hidden layer (mlp)."""
        conv_width: int = 96
        """Channels of the first conv stage (96 CIFAR-10, 64 SVHN); the later stages use twice as many. Set it
        for conv28 too (32 in experiments/fmnist_sgan_conv.yaml)."""
        conv_dropout: float = 0.3
        """Dropout after each stride-2 stage of the conv28 discriminator."""
        generator: str = "auto"
        """auto (the arch's own: the MLP for mlp and conv28, the 32x32 conv one for conv) | mlp | conv28 (a 28x28
        conv generator of conv_width channels)."""
        fake_logit: str = "implicit"
        """implicit (fixed at 0, the paper) | explicit (a learned K+1-th logit)."""
        unsup_weight: float = 0.5
        """w in L_D = L_supervised + w * L_unsupervised."""
        entropy_weight: float = 0.0
        """Optional extra term lambda * E_unlabeled H(p(y | x, y < K+1)) in L_D: the conditional-entropy
        penalty of Dai et al. 2017 ("Good Semi-supervised Learning That Requires a Bad GAN"); 0 = the paper."""
        augment_shift: int = 0
        """Weak augmentation of the real images the discriminator sees: a random reflection-padded translation
        by up to this many pixels plus a horizontal flip where the data allow it (genssl.data.augment.weak);
        0 = none (the paper)."""
        labeled_augment: str = "same"
        """same (the labeled images get the unlabeled images' view: augment_shift's weak one, or none) | strong
        (RandAugment + Cutout on the labeled images of the supervised term only)."""
        pt_weight: float = 0.0
        """Weight of Bad GAN's pull-away term on the generated images' features in L_G (0.8 in Dai et al. for
        SVHN); 0 = the paper."""
        manifold_weight: float = 0.0
        """lambda of manifold regularization in L_D (Lecouat et al. 2018): lambda * E || l(G(z)) -
        l(G(z + eps r/||r||)) ||^2 over the discriminator's logits l, computed without its noise layers; 0 = off."""
        manifold_eps: float = 0.1
        """eps, the length of the latent perturbation (z is uniform on [0, 1]^z_dim). Under bf16 a much smaller eps
        drowns in rounding: keep it >= ~0.05 there."""
        consistency: str = "none"
        """none (a pure GAN) | kl (UDA: KL(p(y|weak) || p(y|strong))) | fixmatch (cross-entropy of the strong view
        on the weak view's hard label where its confidence >= consistency_threshold). Not none = a hybrid."""
        consistency_weight: float = 1.0
        """Weight of the consistency term in L_D."""
        consistency_threshold: float = 0.95
        """FixMatch's confidence threshold tau on p(y | weak(x)) (ignored by kl)."""
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
        """Decay of the evaluation weights' moving average (0 evaluates the raw weights). The EMA's warm-up caps the
        decay at (1 + t) / (10 + t) after t updates, so 0.9999 is reached only after ~90k steps: over 20k steps it
        averages like ~0.9995 (measured: the same as 0.999 within a seed's noise, experiments/README.md)."""
        collapse_threshold: float = 1e-3
        """check_health stops the run when train/unsup_loss stays below this ..."""
        collapse_window: int = 2000
        """... for this many steps (the discriminator separates real from generated perfectly)."""
        n_samples: int = 100
        """Images in the fixed-noise sample grid shown at each evaluation."""

    def __init__(self, cfg: Config, spec: DataSpec):
        super().__init__(cfg, spec)
        for key, value, valid in (("fake_logit", cfg.fake_logit, FAKE_LOGITS), ("fm_real", cfg.fm_real, FM_REAL),
                                  ("fm_norm", cfg.fm_norm, ("l2", "l1")), ("arch", cfg.arch, GAN_ARCHS),
                                  ("consistency", cfg.consistency, CONSISTENCY),
                                  ("labeled_augment", cfg.labeled_augment, LABELED_AUGMENT)):
            if value not in valid:
                raise ValueError(f"sgan {key}={value!r} is not one of {', '.join(valid)}")
        if not 0.0 < cfg.lr_decay_start <= 1.0:
            raise ValueError(f"sgan lr_decay_start must be in (0, 1], got {cfg.lr_decay_start}")
        for key in ("entropy_weight", "pt_weight", "manifold_weight", "consistency_weight", "augment_shift"):
            if getattr(cfg, key) < 0:
                raise ValueError(f"sgan {key} must be >= 0, got {getattr(cfg, key)}")
        if cfg.manifold_weight and cfg.manifold_eps <= 0:
            raise ValueError(f"sgan manifold_eps must be > 0 with manifold_weight on, got {cfg.manifold_eps}")
        if not 0.0 <= cfg.consistency_threshold <= 1.0:
            raise ValueError(f"sgan consistency_threshold must be in [0, 1], got {cfg.consistency_threshold}")
        self.explicit = cfg.fake_logit == "explicit"
        k = spec.num_classes
        self.disc, self.gen = make_gan(cfg.arch, spec.image_shape, k + 1 if self.explicit else k, cfg.z_dim,
                                       cfg.d_hidden, cfg.g_hidden, cfg.input_noise, cfg.hidden_noise, cfg.conv_width,
                                       cfg.conv_dropout, cfg.generator)
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

    def schedule(self, step: int) -> dict[str, float]:
        return {"lr": self.lr_at(step)}

    # ------------------------------------------------------------------ the step
    def class_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, :-1] if self.explicit else logits  # (B, K)

    def augment_real(self, x: torch.Tensor) -> torch.Tensor:
        """The real images as the discriminator sees them: the shared weak augmentation, or as they are."""
        if not self.cfg.augment_shift:
            return x
        return weak(x, flip=self.spec.hflip, max_shift=self.cfg.augment_shift)

    def stage_loss(self, name, batch, step, carry):
        """The step's two losses apart from their updates ("d", then "g"), so that genssl.training.stacked can train
        seeds together; `carry` hands the generated batch (with the generator's graph) from "d" to "g". Every
        optional term is computed here, none in train_step."""
        cfg = self.cfg
        if name == "d":
            lr = self.step_values(step)["lr"]
            self.set_lr("d", lr)
            self.set_lr("g", lr)
            n_l, n_u = batch.x_l.shape[0], batch.x_u.shape[0]
            x_l = (strong(batch.x_l, flip=self.spec.hflip) if cfg.labeled_augment == "strong"
                   else self.augment_real(batch.x_l))
            x_u = self.augment_real(batch.x_u)  # the weak view when consistency is on
            z = self.noise(n_u, batch.x_u.device)
            x_fake = self.gen(z)  # (B_u, C, H, W), keeps G's graph for its step
            parts = [x_l, x_u, x_fake.detach()]
            if cfg.consistency != "none":
                parts.append(strong(batch.x_u, flip=self.spec.hflip))  # (B_u, C, H, W) the strong view

            # Discriminator: one pass over labeled, unlabeled, generated (and strongly augmented) images.
            feats = self.disc.features(torch.cat(parts))  # (B_l+2B_u[+B_u], F)
            logits = self.disc.head(feats).float()  # (B_l+2B_u[+B_u], K or K+1)
            l_lab, l_unl, l_fake, *l_strong = logits.split([n_l] + [n_u] * (len(parts) - 1))
            sup = sgan_supervised_loss(self.class_logits(l_lab), batch.y_l)
            unsup_fn = sgan_unsupervised_loss_explicit if self.explicit else sgan_unsupervised_loss
            unsup = unsup_fn(l_unl, l_fake)
            loss = sup + cfg.unsup_weight * unsup
            logs = {}
            if cfg.entropy_weight:
                ent = conditional_entropy_loss(self.class_logits(l_unl))
                loss = loss + cfg.entropy_weight * ent
                logs["train/cond_entropy"] = ent.detach()
            if cfg.consistency != "none":
                cons, cons_logs = consistency_loss(cfg.consistency, self.class_logits(l_unl),
                                                   self.class_logits(l_strong[0]), cfg.consistency_threshold)
                loss = loss + cfg.consistency_weight * cons
                logs |= {f"train/{k}": v for k, v in cons_logs.items()}
            if cfg.manifold_weight:
                with torch.no_grad():
                    x_pert = self.gen(perturb_unit(z, cfg.manifold_eps))  # (B_u, C, H, W)
                with noiseless(self.disc):  # the same deterministic function at both points
                    l_m, l_m_pert = self.disc(torch.cat([x_fake.detach(), x_pert])).float().chunk(2)
                man = manifold_loss(l_m, l_m_pert)
                loss = loss + cfg.manifold_weight * man
                logs["train/manifold_loss"] = man.detach()
            with torch.no_grad():
                acc = (self.class_logits(l_lab).argmax(1) == batch.y_l).float().mean()
                d_real = sgan_d_prob(l_unl, self.explicit).mean()
                d_fake = sgan_d_prob(l_fake, self.explicit).mean()
            logs = {"train/sup_loss": sup.detach(), "train/unsup_loss": unsup.detach(), "train/d_real": d_real,
                    "train/d_fake": d_fake, "train/lab_acc": acc, "train/lr": self.log_value(lr)} | logs
            return loss, logs, {"x_u": x_u, "x_fake": x_fake, "f_unl": feats[n_l:n_l + n_u].detach()}

        # Generator: feature matching through the updated discriminator (the caller freezes its weights).
        if cfg.fm_real == "fresh":
            with torch.no_grad():
                f_real = self.disc.features(carry["x_u"])  # (B_u, F)
        else:
            f_real = carry["f_unl"]
        f_fake = self.disc.features(carry["x_fake"])  # (B_u, F)
        fm = feature_matching_loss(f_real.float(), f_fake.float(), cfg.fm_norm)
        loss, logs = fm, {"train/fm_loss": fm.detach()}
        if cfg.pt_weight:
            pt = pull_away_loss(f_fake)
            loss = loss + cfg.pt_weight * pt
            logs["train/pt_loss"] = pt.detach()
        return loss, logs, carry

    def after_update(self, name):
        if name == "d":
            self.ema.update(self.disc)

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

    def encoder_module(self):
        """The evaluation discriminator's features, as `encode` gives them (the EMA weights where ema_decay > 0), as
        an exportable net that shares its weights (genssl.encoders.format)."""
        c = self.cfg
        return DiscriminatorFeatures(c.arch, self.spec.image_shape, self.spec.num_classes + self.explicit, c.d_hidden,
                                     c.input_noise, c.hidden_noise, c.conv_width, c.conv_dropout, net=self._eval_net())

    def typicality(self, x: torch.Tensor) -> torch.Tensor:
        """log D(x), the evaluation discriminator's log-probability that x is real (Sec. 5), (B,): with the fake logit
        fixed at 0, D(x) = Z(x) / (Z(x) + 1), Z = sum_k exp l_k(x), so log D(x) = lse(l) - softplus(lse(l)) =
        log sigmoid(lse(l)); with an explicit fake logit l_{K+1}, log D(x) = log sigmoid(lse(l_1..l_K) - l_{K+1}).
        Computed as log sigmoid in float64, which does not round to 0 where D(x) is near 1 (the difference form
        does in fp32 once lse(l) > ~17, and would tie every such image). Called through
        genssl.methods.typicality.typicality_scores."""
        logits = self._eval_net()(x.float()).double()  # (B, K) or (B, K + 1)
        fake = logits[:, -1] if self.explicit else 0.0
        return torch.nn.functional.logsigmoid(torch.logsumexp(self.class_logits(logits), 1) - fake)

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
