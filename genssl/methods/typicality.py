"""How typical an image is of a run's training data: the generative methods' scores, the classifier-confidence
baseline every method has, and how a score is judged (AUROC) and turned into a flag (a validation quantile).

Every score is higher for more typical images. A method that has a generative model declares it
(`Method.typicality_score` names the score, `Method.typicality(x)` computes it per image):

- `elbo`, vae_m1: the ELBO (Kingma & Welling 2014, AEVB eq. 10), or with `samples=k` the importance-weighted
  bound (Burda, Grosse & Salakhutdinov 2016, eq. 8), both lower bounds on log p(x).
- `elbo`, vae_m2, adgm, sdgm: the unlabeled bound -U(x) = sum_y q(y|x) (-L(x, y)) + H(q(y|x)) (Kingma et al. 2014,
  eq. 7; Maaloe et al. 2016, sec. 2.3 with the auxiliary a), the bound on log p(x) with the class y marginalised.
- `log_d`, sgan: log D(x), the discriminator's log-probability that x is real rather than generated (Salimans et
  al. 2016, sec. 5: D(x) = Z(x) / (Z(x) + 1), Z = sum_k exp l_k(x), with the fake logit fixed at 0).

Classifiers without a generative model (supervised, fixmatch, pseudo_label, self_training) declare none. For
every method, this one included, `confidence_scores` gives the standard baseline: the maximum softmax
probability of `predict` (Hendrycks & Gimpel 2017), a classifier's confidence and not a model of the images;
tables compare the generative scores against it.

Known failure: a likelihood ranks images by how simple they are as well as by how typical: Nalisnick et al. 2019
found Fashion-MNIST models giving MNIST digits higher likelihood than Fashion-MNIST's own test images.
`complexity_bits` gives the input-complexity correction of Serra et al. 2020 (experiments/typicality_v1.md measures
it): S(x) = log2 p(x) + L(x) with L(x) the bits of a lossless compression of x.

Scores are computed by `typicality_scores` / `confidence_scores`: in eval mode, without gradients, in fp32 (autocast
off), in batches, with the noise of the stochastic bounds drawn from a fixed seed per batch (outside the global
random stream), so a model's scores of a batch are a function of its weights. `threshold_from_validation` picks
a threshold as a quantile of validation images' scores; an image scoring below it is flagged atypical.
genssl.methods.detectors puts these scores, the energy and a feature density behind one interface, with the gate
`genssl predict` applies by default.
"""

from __future__ import annotations

import math
import zlib

import torch

from genssl.data.batching import to_float
from genssl.methods.base import Method

EVAL_SEED = 0  # the noise of the stochastic bounds: batch i draws from seed EVAL_SEED + i
CONFIDENCE_SCORE = "max_softmax"  # the classifier-confidence baseline's name (Hendrycks & Gimpel 2017)
SCORE_KINDS = ("model", "confidence")  # the method's own generative score | the classifier-confidence baseline


def can_score_typicality(method: Method | type[Method]) -> bool:
    """Whether the method declares a generative typicality score (Method.typicality_score)."""
    cls = method if isinstance(method, type) else type(method)
    return cls.typicality_score is not None


def typicality_refusal(method: Method | type[Method]) -> str | None:
    """Why the method cannot score typicality, or None when it can."""
    cls = method if isinstance(method, type) else type(method)
    if cls.typicality_score is not None:
        return None
    return (f"{cls.name} has no generative model, so it cannot score how typical an image is of its training data "
            f"(it declares no typicality_score); the classifier-confidence baseline ({CONFIDENCE_SCORE}, the "
            f"maximum softmax probability, Hendrycks & Gimpel 2017) works for any method")


def score_name(method: Method | type[Method], kind: str = "model") -> str:
    """The name of the score `score_images(method, ..., kind)` computes."""
    cls = method if isinstance(method, type) else type(method)
    _check_kind(kind)
    if kind == "confidence":
        return CONFIDENCE_SCORE
    if cls.typicality_score is None:
        raise ValueError(typicality_refusal(cls))
    return cls.typicality_score


def _check_kind(kind: str) -> None:
    if kind not in SCORE_KINDS:
        raise ValueError(f"unknown typicality score kind {kind!r}; choose one of {', '.join(SCORE_KINDS)}")


# ------------------------------------------------------------------ scoring images
def max_softmax_probability(logits: torch.Tensor) -> torch.Tensor:
    """max_k softmax(l)_k per row (Hendrycks & Gimpel 2017, sec. 2: the baseline score of a classifier's
    confidence); (B, K) logits -> (B,)."""
    return torch.softmax(logits.float(), dim=1).amax(1)


def typicality_scores(method: Method, images: torch.Tensor, batch_size: int = 256, seed: int = EVAL_SEED,
                      **kwargs) -> torch.Tensor:
    """The method's generative score (Method.typicality) of every image: images (N, C, H, W) uint8 or floats in
    [0, 1] -> (N,) float64 on the CPU, higher = more typical. `kwargs` go to the method's typicality (vae_m1:
    samples=k). A method without a generative score is a ValueError saying so (typicality_refusal)."""
    refusal = typicality_refusal(method)
    if refusal is not None:
        raise ValueError(refusal)
    return score_batches(method, images, batch_size, seed, lambda x: method.typicality(x, **kwargs))


def confidence_scores(method: Method, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The classifier-confidence baseline for any method: the maximum softmax probability of predict(x)
    (max_softmax_probability) of every image, (N, C, H, W) -> (N,) float64 on the CPU."""
    return score_batches(method, images, batch_size, EVAL_SEED, lambda x: max_softmax_probability(method.predict(x)))


def score_images(method: Method, images: torch.Tensor, kind: str = "model", batch_size: int = 256) -> torch.Tensor:
    """`typicality_scores` (kind "model") or `confidence_scores` (kind "confidence")."""
    _check_kind(kind)
    if kind == "confidence":
        return confidence_scores(method, images, batch_size)
    return typicality_scores(method, images, batch_size)


def score_batches(method: Method, images: torch.Tensor, batch_size: int, seed: int, fn) -> torch.Tensor:
    """fn (B, C, H, W) floats in [0, 1] -> (B,) over batches of images (uint8 or floats), in eval mode, without
    gradients, autocast off, each batch's noise from seed + its index; (N,) float64 on the CPU. The one loop behind
    typicality_scores and confidence_scores, for a score of one's own."""
    out = map_batches(method, images, batch_size, seed, fn, check=_one_per_image)
    return torch.cat([s.double() for s in out]) if out else torch.zeros(0, dtype=torch.float64)


def batch_features(method: Method, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """method.encode of every image (its features, the classifier's last hidden layer for most methods), in eval
    mode, without gradients, in fp32: (N, C, H, W) uint8 or floats in [0, 1] -> (N, D) float64 on the CPU."""
    out = map_batches(method, images, batch_size, EVAL_SEED, method.encode, check=_two_dims)
    return torch.cat([f.double() for f in out]) if out else torch.zeros(0, 0, dtype=torch.float64)


def _one_per_image(out: torch.Tensor, n: int) -> None:
    if out.shape != (n,):
        raise AssertionError(f"a score gave shape {tuple(out.shape)} for {n} images")


def _two_dims(out: torch.Tensor, n: int) -> None:
    if out.dim() != 2 or out.shape[0] != n:
        raise AssertionError(f"encode gave shape {tuple(out.shape)} for {n} images; features are (B, D)")


def map_batches(method: Method, images: torch.Tensor, batch_size: int, seed: int, fn, check) -> list[torch.Tensor]:
    """[fn(batch) on the CPU] over batches of images (uint8 or floats, converted to floats in [0, 1]), in eval mode,
    without gradients, autocast off, each batch's noise from seed + its index; `check(out, batch size)` raises on
    an output of the wrong shape."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if images.dim() != 1 + len(method.spec.image_shape):
        raise ValueError(f"images of shape {tuple(images.shape)}: expected (N, *{tuple(method.spec.image_shape)})")
    device = next(method.parameters()).device
    fork = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    was_training = method.training
    method.eval()
    out = []
    try:
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            for i, xb in enumerate(images.split(batch_size)):
                xb = xb.to(device)
                xb = to_float(xb) if xb.dtype == torch.uint8 else xb.float()
                with torch.random.fork_rng(devices=fork, device_type=device.type):
                    torch.manual_seed(seed + i)
                    result = fn(xb)
                check(result, xb.shape[0])
                out.append(result.cpu())
    finally:
        method.train(was_training)
    return out


# ------------------------------------------------------------------ helpers of the scores
def importance_weighted_bound(log_w: torch.Tensor) -> torch.Tensor:
    """log (1/k) sum_i w_i from the log importance weights log w_i = log p(x, z_i) - log q(z_i | x) of k samples
    z_i ~ q(z | x) (Burda et al. 2016, eq. 8; k = 1 is the ELBO); (k, B) -> (B,)."""
    return torch.logsumexp(log_w.double(), 0) - math.log(log_w.shape[0])


def complexity_bits(images_u8: torch.Tensor, level: int = 9) -> torch.Tensor:
    """L(x): the length in bits of each image's raw uint8 bytes compressed by zlib (DEFLATE, the compressor inside
    PNG); (N, ...) uint8 -> (N,) float64. The input complexity of Serra et al. 2020, whose OOD score
    S(x) = -l_M(x) - L(x) (l_M the model's log-likelihood in bits) this module uses with the sign turned,
    log2 p(x) + L(x), so that higher = more typical."""
    if images_u8.dtype != torch.uint8:
        raise ValueError(f"complexity_bits reads 8-bit images, got dtype {images_u8.dtype}")
    flat = images_u8.reshape(images_u8.shape[0], -1).cpu().numpy()
    return torch.tensor([8.0 * len(zlib.compress(row.tobytes(), level)) for row in flat], dtype=torch.float64)


def complexity_corrected(log_p_nats: torch.Tensor, images_u8: torch.Tensor) -> torch.Tensor:
    """log2 p(x) + L(x) (Serra et al. 2020's S(x), sign turned): a bound on log p(x) in nats (N,) converted
    to bits plus the images' compressed length in bits (complexity_bits); (N,) float64."""
    return log_p_nats.double() / math.log(2) + complexity_bits(images_u8)


# ------------------------------------------------------------------ judging and thresholding a score
def _as_scores(scores, what: str) -> torch.Tensor:
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if s.numel() == 0:
        raise ValueError(f"{what}: no scores")
    if bool(torch.isnan(s).any()):
        raise ValueError(f"{what}: {int(torch.isnan(s).sum())} of {s.numel()} scores are NaN")
    return s


def auroc(scores_in, scores_out) -> float:
    """The area under the ROC curve of telling in-distribution images (higher scores expected) from atypical
    ones: P(s_in > s_out) + P(s_in = s_out) / 2 over all pairs, the Mann-Whitney U statistic divided by
    n_in * n_out, from average ranks (ties count half). 1: every typical image scores above every atypical one;
    0.5: chance; below 0.5: the score ranks the atypical images as more typical."""
    a, b = _as_scores(scores_in, "auroc scores_in"), _as_scores(scores_out, "auroc scores_out")
    values, inverse, counts = torch.unique(torch.cat([a, b]), sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()  # 1-based rank of each distinct value's last occurrence
    ranks = (ends - (counts.double() - 1) / 2)[inverse]  # average rank of each score
    n_in, n_out = a.numel(), b.numel()
    u = ranks[:n_in].sum() - n_in * (n_in + 1) / 2
    return float(u / (n_in * n_out))


def threshold_from_validation(scores_val, quantile: float = 0.01) -> float:
    """The `quantile` of the validation images' scores (linear interpolation between order statistics, numpy's
    default), the cut of the pool filter and advise's pool check. On the validation images themselves the share
    below it is within 1 / n_val of `quantile`; on new in-distribution images it is not: with n_val = 60 and
    `quantile` 0.01 it falls between the two lowest scores and flags ~2.6% in expectation. The gate of `genssl
    predict` cuts at `conformal_threshold` instead, whose expected rate is stated."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"the atypical quantile must be in (0, 1), got {quantile}")
    return float(torch.quantile(_as_scores(scores_val, "validation scores"), quantile))


def conformal_threshold(scores_val, rate: float = 0.01) -> tuple[float, float]:
    """(threshold, expected rate): the k-th lowest of the n validation images' scores, k = max(1, floor(rate *
    (n + 1))), so that a new image exchangeable with them scores below it with probability k / (n + 1), the
    expected share of in-distribution images flagged (split conformal prediction; Vovk et al. 2005, Angelopoulos
    & Bates 2021, eq. 1). That is at most `rate` once n >= 1 / rate - 1; with fewer images k = 1 (the lowest
    score) and the rate is 1 / (n + 1): 10 validation images per class of 6 classes flag ~1.6% of good images, not
    1%, which the returned rate says. The realized rate of one split varies around it (Beta(k, n + 1 - k)); issue
    39's study saw 1.5-8% on three splits of 60 images with the interpolated quantile this replaced."""
    if not 0.0 < rate < 1.0:
        raise ValueError(f"the atypical quantile must be in (0, 1), got {rate}")
    scores = torch.sort(_as_scores(scores_val, "validation scores")).values
    n = scores.numel()
    k = max(1, math.floor(rate * (n + 1)))
    return float(scores[k - 1]), k / (n + 1)


def flag_atypical(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N,) bool: the images scoring below the threshold."""
    return torch.as_tensor(scores, dtype=torch.float64) < threshold
