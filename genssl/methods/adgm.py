"""ADGM and SDGM: auxiliary deep generative models for semi-supervised learning (Maaloe, Sonderby, Sonderby &
Winther 2016, "Auxiliary Deep Generative Models", ICML; arXiv:1602.05473). Section numbers below are the
paper's; the equations are written out in full.

An auxiliary latent a (sec. 2.2) makes the variational posterior a continuous mixture,
q(z | x) = int q(z | a, x) q(a | x) da, richer than M2's diagonal Gaussian, while the generative model of x is
unchanged: a enters it only through a density p(a | ...) that the bound needs (it is not needed to sample x).
The classifier q(y | a, x) sees x and a sample of a, which carries what q(a | x) learned from all images.

Inference model (both, sec. 2.3; fig. 1):
    q(a | x) = N(a; mu(x), diag sigma^2(x)),   q(y | a, x) = Cat(y; pi(a, x)),
    q(z | a, y, x) = N(z; mu(a, y, x), diag sigma^2(a, y, x)),   so   q(a, y, z | x) = q(z | a, y, x) q(y | a, x) q(a | x)
Generative model, ADGM (sec. 2.3):   p(y) = Cat(1/K),  p(z) = N(0, I),  p(a | x, y, z) Gaussian,  p(x | y, z)
    p(x, y, a, z) = p(a | x, y, z) p(x | y, z) p(y) p(z)
Generative model, SDGM (sec. 2.4, "two stochastic layers with skip connections"): a becomes a second latent
layer above x, p(a | z, y) Gaussian and p(x | a, z, y):
    p(x, y, a, z) = p(x | a, z, y) p(a | z, y) p(y) p(z)

Labeled bound (sec. 2.3):
    log p(x, y) >= E_q(a,z|x,y) [ log p(a | .) + log p(x | .) + log p(y) + log p(z) - log q(a | x) - log q(z | a, y, x) ]
                =: -L(x, y)
Unlabeled bound (sec. 2.3), y enumerated:
    log p(x) >= E_q(a|x) [ sum_y q(y | a, x) ( -L(x, y; a) ) + H(q(y | a, x)) ] =: -U(x)
Objective (sec. 2.3):   J^alpha = sum_l L(x_l, y_l) + sum_u U(x_u) + alpha * E_l[ -log q(y_l | a, x_l) ].

Estimation: one sample a ~ q(a | x) per image, shared by all K classes (q(a | x) does not depend on y), one
z ~ q(z | a, y, x) per (image, class) row; E_q(z)[log p(z) - log q(z | .)] is the analytic -KL, the auxiliary
term log p(a | .) - log q(a | x) a one-sample estimate (logged as train/kl_a_*, an estimate of
KL(q(a | x) || p(a | .))). All K classes of every unlabeled image and the labeled images go through the networks
in one batched pass of B_l + B_u * K rows (genssl.nn.adgm: per-image inputs are mapped once and broadcast).
The step's loss, its classification weight w = alpha * N / N_l and `labeled_weight` are M2's
(genssl.methods.enumerated). Predictions average q(y | a, x) over `eval_samples` draws of a ~ q(a | x) (the
paper's Monte Carlo estimate of E_q(a|x)[q(y | a, x)]), with noise from a fixed seed so that a model's
predictions are a function of its weights.

Following the original code (github.com/larsmaaloee/auxiliary-deep-generative-models): no batch
normalization (its BN variant went NaN on unlabeled data; `cls_arch: conv` is the one exception, see
genssl.nn.adgm), gradients clipped to a global norm of 5, Adam at
3e-4, a = z = 100 dims, MLPs of two 500-unit layers. Not taken over: its elementwise gradient clip at 1, the
N(0, 1) weight prior (scaled by 1/N, negligible) and the learning-rate annealing over 1000s of epochs.
With `encoder:` set to an M1 run or export the model runs on M1's latents (like M1+M2): z1 ~ q(z1 | x) is
re-sampled every step, Gaussian p(z1 | .), posterior means when predicting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genssl import losses
from genssl.data.spec import DataSpec
from genssl.methods.enumerated import EnumeratedConfig, EnumeratedModel, rec_gain, step_loss
from genssl.nn.adgm import AuxClassifier, SumMLP, gaussian_params
from genssl.nn.vae import likelihood_mean, log_likelihood, n_params, reparameterize
from genssl.registry import register_method

EVAL_SEED = 0  # the noise of predict()'s samples of a: fixed, so predictions depend on the weights only


class AuxiliaryDGM(EnumeratedModel):
    """The shared machinery of ADGM and SDGM; a subclass names the inputs of p(a | .) and p(x | .). Exports,
    samples and trains stacked as EnumeratedModel says (stacked: without gradient clipping, stacking_refusal)."""

    PA_INPUTS: tuple[str, ...] = ()
    PX_INPUTS: tuple[str, ...] = ()
    typicality_score = "elbo"

    @dataclass
    class Config(EnumeratedConfig):
        """EnumeratedConfig's options (likelihood, binarize, alpha, cls_weight_pool, classifier_weight,
        labeled_weight, kl_warmup, lr, encoder: on M1's latents) and the auxiliary models' own."""
        a_dim: int = 100
        z_dim: int = 100
        hidden: tuple[int, ...] = (500, 500)
        """Hidden widths of q(a|x), q(z|a,y,x), p(a|.) and p(x|.) (and of q(y|a,x) unless cls_hidden is set)."""
        cls_hidden: tuple[int, ...] | None = None
        """Hidden widths of the classifier q(y|a,x); None follows hidden."""
        cls_arch: str = "mlp"
        """mlp (the paper) | conv: x enters q(y|a,x) through the classifiers' ConvNet (genssl.nn.adgm.AuxClassifier),
        the network FixMatch and M2's conv classifier use; pixels only (not on M1 latents)."""
        lr: float = 3e-4
        grad_clip: float | None = 5.0
        """Clip the gradients' global norm (the original code's 5); None: no clipping."""
        eval_samples: int = 10
        """Samples of a ~ q(a|x) averaged in predictions; 0 uses the mean of q(a|x)."""

    @classmethod
    def stacking_refusal(cls, cfg) -> str | None:
        if cfg.grad_clip is not None:
            return (f"{cls.name}: gradient clipping by global norm (grad_clip={cfg.grad_clip}) couples the seeds; "
                    f"grad_clip: null lets them train stacked")
        return super().stacking_refusal(cfg)

    def __init__(self, cfg: Config, spec: DataSpec):
        if cfg.eval_samples < 0:
            raise ValueError(f"eval_samples must be >= 0 (0: the mean of q(a|x)), got {cfg.eval_samples}")
        if cfg.grad_clip is not None and not cfg.grad_clip > 0:
            raise ValueError(f"grad_clip must be a positive norm or None, got {cfg.grad_clip}")
        super().__init__(cfg, spec, "mlp", cfg.cls_arch)
        K = spec.num_classes
        F_in, A, D, h = math.prod(self.input_shape), cfg.a_dim, cfg.z_dim, tuple(cfg.hidden)
        self.n_params = n_params(self.likelihood)
        dims = {"x": F_in, "a": A, "y": K, "z": D}
        self.aux = AuxClassifier(self.input_shape, K, A, h, tuple(cfg.cls_hidden or h),  # q(a|x), q(y|a,x)
                                 cfg.cls_arch)
        self.qz = SumMLP({k: dims[k] for k in ("x", "a", "y")}, h, 2 * D)  # q(z | a, y, x)
        self.pa = SumMLP({k: dims[k] for k in self.PA_INPUTS}, h, 2 * A)  # p(a | .)
        self.px = SumMLP({k: dims[k] for k in self.PX_INPUTS}, h, self.n_params * F_in)  # p(x | .)
        self.grad_clip = cfg.grad_clip

    # ------------------------------------------------------------------ the bounds
    def _x_params(self, out: torch.Tensor) -> torch.Tensor:
        """p(x | .)'s head output (..., P*F) -> likelihood parameters (..., P, *input_shape)."""
        return out.unflatten(-1, (self.n_params, *self.input_shape))

    @staticmethod
    def _rows_pre(net: SumMLP, per_image: dict, per_row: dict, img: torch.Tensor) -> torch.Tensor:
        """First-layer pre-activation (R, H) of `net` for every row: per-image inputs (B, d) are mapped once and
        copied to their rows (`img` (R,) gives each row's image), per-row inputs (R, d) are mapped as they are."""
        pre = 0
        for name in net.inputs:
            pre = pre + (net.part(name, per_image[name]).index_select(0, img) if name in per_image
                         else net.part(name, per_row[name]))
        return pre

    def neg_labeled_bound(self, x: torch.Tensor, y: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """-L(x, y) (sec. 2.3) for one given class per image: x (B, ...), y (B,) -> (B,), with its own a ~ q(a|x)
        (the means when sample=False). The reference path, network by network; `bounds` computes the same
        fused with the enumeration."""
        x_flat = x.flatten(1)
        mu_a, logvar_a = self.aux.posterior_a(x_flat)
        a = reparameterize(mu_a, logvar_a) if sample else mu_a
        y_code = F.one_hot(y, self.spec.num_classes).float()
        mu_z, logvar_z = gaussian_params(self.qz(x=x_flat, a=a, y=y_code))
        z = reparameterize(mu_z, logvar_z) if sample else mu_z
        v = {"x": x_flat, "a": a, "y": y_code, "z": z}
        mu_pa, logvar_pa = gaussian_params(self.pa(**{k: v[k] for k in self.PA_INPUTS}))
        params = self._x_params(self.px(**{k: v[k] for k in self.PX_INPUTS}))
        rec = log_likelihood(self.likelihood, params, x.float(), len(self.input_shape))
        log_pa = losses.gaussian_log_likelihood(a, mu_pa, logvar_pa, 1)
        log_qa = losses.gaussian_log_likelihood(a, mu_a, logvar_a, 1)
        return rec + self.log_prior_y - losses.gaussian_kl_standard(mu_z, logvar_z) + log_pa - log_qa

    def bounds(self, x_l: torch.Tensor, y_l: torch.Tensor, x_u: torch.Tensor, sample: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """-L(x_l, y_l) (B_l,) and -L(x_u, y; a) for every class y (B_u, K), in one pass over R = B_l + B_u*K rows
        (row B_l + b*K + k is (x_u[b], k)); also the classifier's logits q(y | a, x) (B_l + B_u, K) at the same
        samples of a, and the bounds' terms."""
        K, n_l, n_u = self.spec.num_classes, x_l.shape[0], x_u.shape[0]
        dev, event = x_l.device, len(self.input_shape)
        x = torch.cat([x_l, x_u]).flatten(1)  # (B, F), B = B_l + B_u
        mu_a, logvar_a = self.aux.posterior_a(x)  # (B, A)
        a = reparameterize(mu_a, logvar_a) if sample else mu_a  # one a per image, shared by its K rows
        log_qa = losses.gaussian_log_likelihood(a, mu_a, logvar_a, 1)  # (B,)
        logits = self.aux.logits(x, a).float()  # (B, K)
        img = torch.cat([torch.arange(n_l, device=dev), n_l + torch.arange(n_u, device=dev).repeat_interleave(K)])
        y_rows = torch.cat([y_l, torch.arange(K, device=dev).repeat(n_u)])  # (R,)
        y_code = losses.class_conditions(K, dev)[y_rows]  # (R, K)
        per_image = {"x": x, "a": a}
        mu_z, logvar_z = gaussian_params(self.qz.finish(self._rows_pre(self.qz, per_image, {"y": y_code}, img)))
        z = reparameterize(mu_z, logvar_z) if sample else mu_z  # (R, D)
        per_row = {"y": y_code, "z": z}
        mu_pa, logvar_pa = gaussian_params(self.pa.finish(self._rows_pre(self.pa, per_image, per_row, img)))
        params = self._x_params(self.px.finish(self._rows_pre(self.px, per_image, per_row, img)))  # (R, P, *shape)
        rec_l = log_likelihood(self.likelihood, params[:n_l], x_l.float(), event)  # (B_l,)
        rec_u = log_likelihood(self.likelihood, params[n_l:].unflatten(0, (n_u, K)), x_u.float()[:, None],
                               event)  # (B_u, K), no copy of x
        kl_z = losses.gaussian_kl_standard(mu_z, logvar_z)  # (R,)
        kl_a = log_qa.index_select(0, img) - losses.gaussian_log_likelihood(a.index_select(0, img), mu_pa,
                                                                            logvar_pa, 1)  # (R,) one sample
        kl = kl_z + kl_a
        neg_L_l = rec_l + self.log_prior_y - kl[:n_l]
        u = lambda t: t[n_l:].unflatten(0, (n_u, K))  # noqa: E731  (R,) -> (B_u, K)
        neg_L_u = rec_u + self.log_prior_y - u(kl)
        return neg_L_l, neg_L_u, {"logits": logits, "rec_l": rec_l, "rec_u": rec_u, "kl_l": kl[:n_l],
                                  "kl_u": u(kl), "kl_z_l": kl_z[:n_l], "kl_a_l": kl_a[:n_l], "kl_a_u": u(kl_a)}

    def objective(self, x_l, y_l, x_u, sample: bool = True, beta: float = 1.0) -> dict[str, torch.Tensor]:
        """The per-step loss (genssl.methods.enumerated.step_loss on the bounds above) and its terms."""
        n_l = x_l.shape[0]
        neg_L_l, neg_L_u, parts = self.bounds(x_l, y_l, x_u, sample)
        logits_l, logits_u = parts["logits"][:n_l], parts["logits"][n_l:]
        ce_l = F.cross_entropy(logits_l, y_l, reduction="none")  # (B_l,) -log q(y_l | a, x_l)
        out = {"neg_L_l": neg_L_l.mean(), "ce": ce_l.mean(), "rec_l": parts["rec_l"].mean(),
               "kl_z_l": parts["kl_z_l"].mean(), "kl_a_l": parts["kl_a_l"].mean()}
        out |= step_loss(neg_L_l, parts["kl_l"], ce_l, self.cls_weight, neg_L_u, parts["kl_u"], logits_u, beta,
                         self.cfg.labeled_weight)
        if x_u.shape[0]:
            q = F.softmax(logits_u, -1)  # (B_u, K)
            out["kl_a_u"] = (q * parts["kl_a_u"]).sum(-1).mean()
            out["entropy_u"] = losses.entropy_from_logits(logits_u).mean()
            out["rec_gain_y"] = rec_gain(parts["rec_u"], logits_u)
        return out

    # ------------------------------------------------------------------ inference
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """log E_q(a|x)[q(y | a, x)] over `eval_samples` samples of a (fixed noise), or q(y | mean a, x): (B, K)."""
        x_flat = self.features_in(x).flatten(1)
        mu, logvar = self.aux.posterior_a(x_flat)  # (B, A)
        S = self.cfg.eval_samples
        if S == 0:
            return self.aux.logits(x_flat, mu)
        g = torch.Generator(device=x.device).manual_seed(EVAL_SEED)
        eps = torch.randn((S, *mu.shape), generator=g, device=x.device)  # (S, B, A)
        a = mu + torch.exp(0.5 * logvar) * eps
        log_q = F.log_softmax(self.aux.logits(x_flat, a).float(), -1)  # (S, B, K)
        return torch.logsumexp(log_q, 0) - math.log(S)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.aux(self.features_in(x))  # (B, H): q(y|a,x)'s last hidden layer at a = mean of q(a|x)

    def typicality(self, x: torch.Tensor) -> torch.Tensor:
        """-U(x) = sum_y q(y | a, x) (-L(x, y; a)) + H(q(y | a, x)) per image (sec. 2.3, the unlabeled bound of the
        module docstring), one a ~ q(a | x) per image shared by its K classes and one z per class: the bound on
        log p(x) with the class marginalised, (B,). On M1 latents it bounds log p(z1) at M1's posterior mean.
        Called through genssl.methods.typicality.typicality_scores."""
        x_in = self.features_in(x).float()
        no_labels = torch.zeros(0, dtype=torch.long, device=x.device)
        _, neg_L_u, parts = self.bounds(x_in[:0], no_labels, x_in)  # (B, K)
        return losses.unlabeled_bound(neg_L_u, parts["logits"])

    def classifier_features(self) -> AuxClassifier:
        """q(a|x) and q(y|a,x) as an exportable encoder: the classifier's last hidden layer at a = E_q(a|x)[a]."""
        return self.aux

    # ------------------------------------------------------------------ generation
    def _generate(self, z: torch.Tensor, y_code: torch.Tensor) -> torch.Tensor:
        """Likelihood parameters of p(x | .) for latents z (..., D) and one-hot classes (..., K); SDGM first draws
        a ~ p(a | z, y) (ancestral sampling)."""
        v = {"y": y_code, "z": z}
        if "a" in self.PX_INPUTS:
            mu_pa, logvar_pa = gaussian_params(self.pa(**{k: v[k] for k in self.PA_INPUTS}))
            v["a"] = reparameterize(mu_pa, logvar_pa)
        return self._x_params(self.px(**{k: v[k] for k in self.PX_INPUTS}))

    def generate(self, y: torch.Tensor) -> torch.Tensor:
        """p(x | .)'s parameters for z ~ N(0, I) and the classes y (n,) (sample: their likelihood means)."""
        z = torch.randn(y.shape[0], self.cfg.z_dim, device=y.device)
        return self._generate(z, F.one_hot(y, self.spec.num_classes).float())

    @torch.no_grad()
    def eval_images(self, x: torch.Tensor):
        if self.m1 is not None:
            return {}  # M1 latents: no pixels to show without M1's decoder
        K, n, event = self.spec.num_classes, 10, len(self.input_shape)
        eye = losses.class_conditions(K, x.device)
        # Class-conditional samples: a row per class, a column per shared z ~ N(0, I).
        z = torch.randn(n, self.cfg.z_dim, device=x.device)
        grid = likelihood_mean(self.likelihood, self._generate(z[None].expand(K, -1, -1),
                                                               eye[:, None].expand(-1, n, -1)), event)
        # Reconstructions through the means: a = E q(a|x), y = argmax q(y|a,x), z = E q(z|a,y,x).
        x = x[:n]
        x_flat = x.flatten(1)
        mu_a, _ = self.aux.posterior_a(x_flat)
        y_code = eye[self.aux.logits(x_flat, mu_a).argmax(1)]
        mu_z, _ = gaussian_params(self.qz(x=x_flat, a=mu_a, y=y_code))
        v = {"x": x_flat, "a": mu_a, "y": y_code, "z": mu_z}
        recon = likelihood_mean(self.likelihood, self._x_params(self.px(**{k: v[k] for k in self.PX_INPUTS})),
                                event)
        return {f"{self.name}/class_samples": (grid.flatten(0, 1).clamp(0, 1), n),
                f"{self.name}/reconstructions": (torch.stack([x.float(), recon], 0).flatten(0, 1).clamp(0, 1),
                                                 x.shape[0])}


@register_method("adgm")
class ADGM(AuxiliaryDGM):
    """Auxiliary deep generative model (sec. 2.3): p(a | x, y, z) p(x | y, z) p(y) p(z); a lives only in the
    bound, the classes are generated by p(x | y, z)."""

    PA_INPUTS = ("x", "y", "z")
    PX_INPUTS = ("y", "z")
    Config = AuxiliaryDGM.Config


@register_method("sdgm")
class SDGM(AuxiliaryDGM):
    """Skip deep generative model (sec. 2.4): p(x | a, z, y) p(a | z, y) p(y) p(z), a second stochastic layer
    with skip connections from z and y to x."""

    PA_INPUTS = ("y", "z")
    PX_INPUTS = ("a", "y", "z")
    Config = AuxiliaryDGM.Config
