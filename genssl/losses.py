"""Pure loss functions, each citing the equation it implements. No modules, no state.

Shapes: B batch, K classes, D latent size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H(q) = -sum_k q_k log q_k for q = softmax(logits); (B, K) -> (B,)."""
    log_q = F.log_softmax(logits, dim=-1)
    return -(log_q.exp() * log_q).sum(-1)


# ---------------------------------------------------------------- VAE family (Kingma et al. 2014)
# Kingma & Welling 2014 ("Auto-Encoding Variational Bayes", AEVB) and Kingma, Rezende, Mohamed & Welling
# 2014 ("Semi-Supervised Learning with Deep Generative Models", SSL). All log-densities are summed over every
# non-batch dimension and returned per row, in float32 whatever the autocast dtype of the inputs.


def gaussian_kl_standard(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) = -1/2 sum_j (1 + logvar_j - mu_j^2 - exp(logvar_j)), AEVB
    appendix B (the analytic KL of eq. 10). (..., D) -> (...)."""
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(-1)


def gaussian_kl(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor,
                logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, diag exp(logvar_q)) || N(mu_p, diag exp(logvar_p)))
    = 1/2 sum_j (logvar_p - logvar_q + (exp(logvar_q) + (mu_q - mu_p)^2) / exp(logvar_p) - 1), the analytic KL
    between diagonal Gaussians (AEVB appendix B with a learned prior, e.g. M2's class-mixture p(z | y)); equals
    `gaussian_kl_standard` for mu_p = 0, logvar_p = 0. Broadcasting; (..., D) -> (...)."""
    mu_q, logvar_q, mu_p, logvar_p = mu_q.float(), logvar_q.float(), mu_p.float(), logvar_p.float()
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) * torch.exp(-logvar_p) - 1.0).sum(-1)


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor, event_dims: int) -> torch.Tensor:
    """log p(x|logits) = sum_i x_i log s(l_i) + (1 - x_i) log(1 - s(l_i)) = sum_i x_i l_i - softplus(l_i),
    AEVB appendix C.1. `x` may be fractional (the usual relaxation for grey levels) and broadcasts against
    `logits`, so an enumerated (B, K, ...) reconstruction is scored against (B, 1, ...) targets without a copy.
    The last `event_dims` dimensions are summed. Computed as -BCE-with-logits: one fused kernel forward and one
    backward instead of four each (M2 scores B*K*784 enumerated pixels per step)."""
    logits = logits.float()
    ll = -F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype).expand_as(logits), reduction="none")
    return ll.sum(dim=tuple(range(-event_dims, 0)))


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
                            event_dims: int) -> torch.Tensor:
    """log N(x; mean, diag exp(logvar)) = -1/2 sum_i (log 2pi + logvar_i + (x_i - mean_i)^2 / exp(logvar_i)),
    AEVB appendix C.2; broadcasting as in `bernoulli_log_likelihood`."""
    mean, logvar = mean.float(), logvar.float()
    ll = -0.5 * (LOG_2PI + logvar + (x - mean).pow(2) * torch.exp(-logvar))
    return ll.sum(dim=tuple(range(-event_dims, 0)))


def class_conditions(num_classes: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The one-hot code of every class, (K, K): row k conditions the networks on y = k. Broadcasting a
    (B, 1, H) activation against the (1, K, H) image of these rows enumerates all B*K (x, y) pairs in one
    batched pass (SSL eq. 7 needs -L(x, y) for every y)."""
    return torch.eye(num_classes, device=device, dtype=dtype)


def unlabeled_bound(neg_L: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """-U(x) = sum_y q(y|x) (-L(x, y)) + H(q(y|x)), SSL eq. 7, from the enumerated labeled bounds
    neg_L (B, K) and the classifier's logits (B, K) -> (B,)."""
    log_q = F.log_softmax(logits_q.float(), dim=-1)
    q = log_q.exp()
    return (q * (neg_L - log_q)).sum(-1)




# ---------------------------------------------------------------- semi-supervised GAN (Salimans et al. 2016)
#
# The discriminator has K class logits l_1..l_K and the fake class K+1 as an implicit logit fixed at 0
# (Sec. 5: subtracting f(x) from every logit leaves the softmax unchanged, so l_{K+1} = 0 loses nothing).
# With Z(x) = sum_k exp(l_k(x)):
#     p(y = K+1 | x) = 1 / (Z + 1),   D(x) = 1 - p(y = K+1 | x) = Z / (Z + 1)
#     log D(x)      = lse(l) - softplus(lse(l))        log (1 - D(x)) = -softplus(lse(l))
# which stay finite for any logit magnitude, unlike log(Z / (Z + 1)) computed directly.


def sgan_supervised_loss(class_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L_supervised = -E_{x,y ~ p_data} log p_model(y | x, y < K+1) (Sec. 5): cross-entropy over the K class
    logits only (with an explicit fake logit, pass the first K columns). (B, K), (B,) -> scalar."""
    return F.cross_entropy(class_logits, y)


def sgan_log_d(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log D(x), log(1 - D(x))) for K class logits with the implicit fake logit 0; (B, K) -> (B,), (B,)."""
    lse = torch.logsumexp(logits, dim=1)  # (B,) log Z(x)
    log_one_minus_d = -F.softplus(lse)
    return lse + log_one_minus_d, log_one_minus_d


def sgan_unsupervised_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """L_unsupervised = -E_{x ~ p_data} log D(x) - E_{z ~ noise} log(1 - D(G(z)))   (Sec. 5)
                      = E_real[-lse(l) + softplus(lse(l))] + E_fake[softplus(lse(l))],
    with the fake class an implicit logit fixed at 0. (B_r, K), (B_f, K) -> scalar."""
    log_d_real, _ = sgan_log_d(logits_real)
    _, log_one_minus_d_fake = sgan_log_d(logits_fake)
    return -log_d_real.mean() - log_one_minus_d_fake.mean()


def sgan_unsupervised_loss_explicit(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """The same L_unsupervised with an explicit, learned fake logit in the last column: a K+1-way softmax,
    log D(x) = log(1 - p(K+1 | x)) = lse(l_1..l_K) - lse(l_1..l_{K+1}) and log(1 - D(x)) = log p(K+1 | x).
    (B_r, K+1), (B_f, K+1) -> scalar. With the last column zero it equals `sgan_unsupervised_loss`."""
    log_d_real = torch.logsumexp(logits_real[:, :-1], 1) - torch.logsumexp(logits_real, 1)
    log_p_fake = F.log_softmax(logits_fake, dim=1)[:, -1]
    return -log_d_real.mean() - log_p_fake.mean()


def sgan_d_prob(logits: torch.Tensor, explicit: bool = False) -> torch.Tensor:
    """D(x) = P(real | x) per row, (B, K) or (B, K+1) -> (B,); for monitoring."""
    if explicit:
        return 1.0 - F.softmax(logits, dim=1)[:, -1]
    return torch.sigmoid(torch.logsumexp(logits, dim=1))  # Z / (Z + 1) = sigmoid(log Z)


def feature_matching_loss(f_real: torch.Tensor, f_fake: torch.Tensor, norm: str = "l2") -> torch.Tensor:
    """|| E_x f(x) - E_z f(G(z)) ||^2 (Sec. 3.1), f an intermediate discriminator layer; averaged (not summed)
    over the feature dimension as in the original code. norm="l1" is the mean absolute difference the
    original uses for SVHN and CIFAR-10. (B_r, F), (B_f, F) -> scalar."""
    diff = f_real.mean(0) - f_fake.mean(0)  # (F,)
    if norm == "l2":
        return diff.pow(2).mean()
    if norm == "l1":
        return diff.abs().mean()
    raise ValueError(f"feature matching norm {norm!r} is not one of 'l2', 'l1'")


# ---------------------------------------------------------------- levers on the semi-supervised GAN
# Optional terms added to the SGAN's losses (genssl.methods.sgan): conditional entropy and the pull-away term
# of Bad GAN (Dai, Yang, Yang, Cohen & Salakhutdinov 2017, "Good Semi-supervised Learning That Requires a Bad
# GAN"), manifold regularization through the generator (Lecouat, Foo, Zenati & Chandrasekhar 2018,
# "Semi-Supervised Learning With GANs: Revisiting Manifold Regularization"), and two-view consistency of the
# class distribution (UDA: Xie, Dai, Hovy, Luong & Le 2020; FixMatch: Sohn et al. 2020), the last making the
# GAN a hybrid. Every term is computed in float32 whatever the autocast dtype of its inputs.


def conditional_entropy_loss(class_logits: torch.Tensor) -> torch.Tensor:
    """R_ent = E_{x ~ p_data} H(p(y | x, y < K+1)) = -E_x sum_k p_k(x) log p_k(x), the conditional-entropy term of
    Bad GAN (Dai et al. 2017, Sec. 5: "conditional entropy", after Grandvalet & Bengio 2005) on unlabeled images:
    minimizing it pushes the class boundaries away from the data. (B, K) -> scalar."""
    return entropy_from_logits(class_logits.float()).mean()


def pull_away_loss(features: torch.Tensor) -> torch.Tensor:
    """The pull-away term of EBGAN (Zhao, Mathieu & LeCun 2017, Sec. 2.4), used on generated samples' features by
    Bad GAN (Dai et al. 2017, Sec. 5) to keep the generator from collapsing:

        PT = 1 / (N (N - 1)) * sum_i sum_{j != i} ( f_i^T f_j / (||f_i|| ||f_j||) )^2

    (N, F) -> scalar in [0, 1]; an all-zero row counts as orthogonal to everything (F.normalize's epsilon)."""
    n = features.shape[0]
    if n < 2:
        raise ValueError(f"the pull-away term needs at least 2 samples, got {n}")
    f = F.normalize(features.float(), dim=1)  # (N, F) unit rows
    cos2 = (f @ f.t()).pow(2)  # (N, N)
    return (cos2.sum() - cos2.diagonal().sum()) / (n * (n - 1))


def manifold_loss(logits: torch.Tensor, logits_perturbed: torch.Tensor) -> torch.Tensor:
    """Manifold regularization through the generator (Lecouat et al. 2018, Sec. 3): the Laplacian norm of the
    classifier f along the data manifold, estimated by Monte Carlo on generated points and a finite difference
    in latent space,

        Omega = E_{z, r ~ N(0, I)} || f(g(z)) - f(g(z + eps * r / ||r||)) ||_2^2,

    with f the discriminator's logits. Takes the logits of g(z) and of g(z + eps * r / ||r||) (computed by the
    caller; `perturb_unit` makes the perturbed code). (B, L), (B, L) -> scalar."""
    return (logits.float() - logits_perturbed.float()).pow(2).sum(1).mean()


def perturb_unit(z: torch.Tensor, eps: float) -> torch.Tensor:
    """z + eps * r / ||r|| with r ~ N(0, I) per row: a step of length eps in a uniformly random direction (the
    perturbation of Lecouat et al. 2018, Sec. 3). (B, D) -> (B, D)."""
    r = torch.randn_like(z)
    return z + eps * F.normalize(r, dim=1)


def kl_consistency_loss(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The UDA consistency loss (Xie et al. 2020, Sec. 2.2, eq. 1) between two views of an unlabeled image,

        L_cons = E_x KL( p_~theta(y | weak(x)) || p_theta(y | strong(x)) ),

    where ~theta is a fixed copy: the target distribution gets no gradient (it is detached here). Both are the
    class distributions over the K classes (B, K), (B, K) -> scalar."""
    log_p = F.log_softmax(target_logits.detach().float(), dim=1)  # (B, K)
    log_q = F.log_softmax(logits.float(), dim=1)  # (B, K)
    return (log_p.exp() * (log_p - log_q)).sum(1).mean()


def fixmatch_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor,
                  threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's unlabeled loss (Sohn et al. 2020, Sec. 3.1, l_u): with q_b = p(y | weak(u_b)) (no gradient)
    and its hard label q^_b = argmax q_b,

        l_u = 1 / B * sum_b 1(max q_b >= tau) H(q^_b, p(y | strong(u_b))).

    Returns (l_u, the fraction of the batch above the threshold). (B, K), (B, K) -> scalar, scalar."""
    with torch.no_grad():
        conf, hard = F.softmax(weak_logits.float(), dim=1).max(1)  # (B,), (B,)
        mask = (conf >= threshold).float()  # (B,)
    ce = F.cross_entropy(strong_logits.float(), hard, reduction="none")  # (B,)
    return (ce * mask).mean(), mask.mean()


CONSISTENCY = ("none", "kl", "fixmatch")


def consistency_loss(kind: str, weak_logits: torch.Tensor, strong_logits: torch.Tensor,
                     threshold: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The two-view consistency term of the hybrids (sgan, vae_m2 with `consistency` set): `kl` (UDA,
    kl_consistency_loss) or `fixmatch` (fixmatch_loss at `threshold`), weak view the target. (B, K), (B, K) ->
    (scalar loss, detached logs: consistency_loss, and mask_rate for fixmatch)."""
    if kind == "kl":
        loss = kl_consistency_loss(weak_logits, strong_logits)
        return loss, {"consistency_loss": loss.detach()}
    if kind == "fixmatch":
        loss, mask = fixmatch_loss(weak_logits, strong_logits, threshold)
        return loss, {"consistency_loss": loss.detach(), "mask_rate": mask.detach()}
    raise ValueError(f"consistency must be kl or fixmatch here, got {kind!r}")
