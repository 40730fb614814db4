"""Atypical-input detectors behind one interface, and the gate `genssl predict` applies by default.

A detector scores how typical images are of a trained run's training data, higher = more typical, from the run's
model alone (and, for the feature density, the density fitted at the end of training). Each is a registered class
(`DETECTORS`) that says whether it applies to a run (`refusal`) and scores uint8 images (`scores`):

- `max_softmax`: max_k softmax(l)_k of the class logits (Hendrycks & Gimpel 2017); every method.
- `energy`: logsumexp_k l_k, minus the free energy of the logits (Liu, Wang, Owens & Li 2020, eq. 4, T = 1); every
  method.
- `feature_density`: log p(f) of a class-conditional Gaussian with a shared covariance on the method's features
  `encode(x)` (Lee et al. 2018; DDU; genssl.encoders.density): the classifier's last hidden layer (the SSL-GAN's
  discriminator's, M2's / ADGM's classifier's), M1's latent means (what its readout reads); methods with features
  (`has_features`), fitted at the end of training.
- `model`: the method's own generative score, `Method.typicality_score`: the ELBO (vae_m1), the bound with the
  class marginalised (vae_m2, adgm, sdgm), log D(x) (sgan), the OVA inlier score (openmatch); methods that declare
  one.
- `elbo_complexity`: log2 p(x) + L(x), the ELBO in bits plus the image's zlib-compressed bits (Serra et al. 2020);
  methods whose score is an ELBO of the pixels.

Input statistics (`input_statistics`: the mean and standard deviation of the pixels and the zlib-compressed bits,
`complexity_bits`) are not a learned score: `InputRange` flags an image whose statistics fall outside the range of
the validation images' and (a draw of at most 5,000 of) the unlabeled pool's (`range_images`; two-sided: below the
0.001 quantile or above the 0.999 quantile from 1,000 images on, else their min and max), which needs no model and
so works for a run of any method. Why the pool: the statistics need no labels, and the range of a realistic
validation set alone refuses typical images (with 60 validation images, 10 a class of six garments, 13.0% of the
test images fall outside it; with 5,000 pool images at the 0.001 quantiles 0.75%, min and max 0.33%; the quantiles
keep a few odd images a user's pool may hold from widening it; issue 39's study, 2026-12-07).

The default gate (`default_detector`, and `InputRange` beside it): an image is atypical where the run's best
detector scores it below the conformal `quantile` (0.01) cut of the validation images' scores, or where its input
statistics fall outside the range of the validation and pool images'. The best detector, chosen by the typicality study
(experiments/typicality.md: runs of every method on Fashion-MNIST's six garments, 100 labels, 120 s, seeds 0-2,
2026-12-07; AUROC of the test images against held-out garments / MNIST digits / upscaled 8x8 digits / noise /
constant images, mean over seeds; each choice also made leaving each set out, so no set picks what it reports):
- `model` for M1 under a Gaussian decoder, its raw ELBO: 0.982 / 0.925 / 0.955 / 1.000 / 0.908, the best of its
  detectors when any one set is left out but the 8x8 digits (there the complexity-corrected ELBO,
  0.943 / 1.000 / 0.602 / 0.995 / 1.000, which fails on those smooth images);
- else `feature_density`, fitted on the labeled and the confidently pseudo-labeled pool images
  (`fit_feature_density`): FixMatch 0.989 / 0.990 / 0.986 / 0.984 / 0.939, supervised 0.982 / 0.979 / 0.968 /
  0.978 / 0.952, OpenMatch 0.994 / 0.991 / 0.977 / 0.994 / 0.971, M2's classifier 0.983 / 0.982 / 0.936 / 1.000
  / 0.908, the SSL-GAN's discriminator 0.898 / 0.832 / 0.796 / 0.898 / 0.921; the best of every such run's
  detectors whichever set is left out. Fitted on the labeled and validation images only it scores FixMatch's
  0.966 / 0.975 / 0.983 / 0.960 / 0.880; max_softmax 0.909 / 0.689 / 0.658 / 0.958 / 0.944; the SSL-GAN's log D(x)
  0.286 / 0.814 / 0.732 / 0.045 / 0.152 (it calls noise real); M2's bound 0.754 / 0.320 / 0.902 / 1.000 / 0.921
  (Nalisnick et al.'s failure on digits);
- else `max_softmax` (a method without features).
No generative detector beats the best discriminative one there: M1's ELBO against OpenMatch's pseudo-labeled
density is -1.2 / -6.6 / -37 (its complexity-corrected ELBO, chosen without that set) / +0.6 / -6.3 AUROC points,
undecided by the paired test over 3 seeds (the sign-flip p cannot go below 0.25), ahead only on noise.
The input statistics catch what the learned scores miss for some runs (constant images: 0.88-0.97; an SSL-GAN's
noise): on Fashion-MNIST every noise and constant image falls outside the range, and 0.8% of the test images.

The threshold of a learned detector is the conformal `quantile` cut of the validation images' scores (`gate_cut`,
genssl.methods.typicality.conformal_threshold: its expected in-distribution flag rate is stated, at least
1 / (n_val + 1)), as for `--flag-atypical`; the pool filter cuts at their interpolated quantile (`gate_threshold`).
The feature density's validation scores are of images it was not fitted on (held out of the pseudo-labeled fit; cross-fitted, each scored by a
density fitted without it, in the labeled-only fit: genssl.encoders.density.crossfit_scores), so that its threshold
flags new typical images at the stated rate.

`fit_gate` computes, at the end of training, all a run needs to gate without its dataset: the density, every
applicable detector's validation scores and the validation images' input statistics (written as <run>/gate.pt by
the Trainer; genssl.encoders.density).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from genssl.encoders.density import FORMAT_VERSION, GATE_FORMAT, FeatureDensity, fit_with_validation
from genssl.methods.base import Method
from genssl.methods.typicality import (
    CONFIDENCE_SCORE,
    EVAL_SEED,
    batch_features,
    complexity_bits,
    complexity_corrected,
    confidence_scores,
    conformal_threshold,
    map_batches,
    score_batches,
    threshold_from_validation,
    typicality_refusal,
    typicality_scores,
)
from genssl.registry import DETECTOR_ALIASES, DETECTORS, detector_kinds

ALIASES = DETECTOR_ALIASES  # --flag-atypical's older names; the method's own score's name -> model (resolve_kind)
DEFAULT_PREFERENCE = ("model", "feature_density", "max_softmax")  # the first that may be the run's default is
INPUT_STATISTICS = ("mean", "std", "bits")
RANGE_POOL_IMAGES = 5000  # at most this many unlabeled images (drawn with RANGE_SEED) join the input-range images
RANGE_SEED = 0
RANGE_TAIL, RANGE_TAIL_MIN_IMAGES = 0.001, 1000  # the range's tail quantile where it has at least this many images
PSEUDO_LABEL_CONFIDENCE = 0.95  # pool images the feature density is fitted on: the classifier this sure of their class


class Detector:
    """A score of how typical images are of a run's training data, higher = more typical. Subclasses are registered
    in DETECTORS and implement `scores`; `refusal` says why a run cannot have the detector."""

    name: ClassVar[str]  # set by DETECTORS.register

    @classmethod
    def method_refusal(cls, method: Method) -> str | None:
        """Why the method cannot have this detector whatever was fitted, or None (checked before a dataset is
        read)."""
        return None

    @classmethod
    def refusal(cls, method: Method, density: FeatureDensity | None) -> str | None:
        """Why the run cannot score with this detector, or None when it can."""
        return cls.method_refusal(method)

    @classmethod
    def default_refusal(cls, method: Method, density: FeatureDensity | None) -> str | None:
        """Why the detector, though it applies, is not the run's default (module docstring), or None."""
        return cls.refusal(method, density)

    @classmethod
    def score_name(cls, method: Method) -> str:
        """The name of the score in predict's messages."""
        return cls.name

    @classmethod
    def scores(cls, method: Method, images: torch.Tensor, density: FeatureDensity | None,
               batch_size: int = 256) -> torch.Tensor:
        """(N, C, H, W) uint8 images -> (N,) float64 on the CPU."""
        raise NotImplementedError


@DETECTORS.register(CONFIDENCE_SCORE)
class MaxSoftmax(Detector):
    """max_k softmax(l)_k (genssl.methods.typicality.confidence_scores)."""

    @classmethod
    def scores(cls, method, images, density, batch_size=256):
        return confidence_scores(method, images, batch_size)


@DETECTORS.register("energy")
class Energy(Detector):
    """-E(x) = logsumexp_k l_k(x), the negative free energy of the class logits (Liu et al. 2020, eq. 4, T = 1);
    unlike the maximum softmax it keeps the logits' scale, which softmax divides out."""

    @classmethod
    def scores(cls, method, images, density, batch_size=256):
        return score_batches(method, images, batch_size, 0, lambda x: torch.logsumexp(method.predict(x).float(), 1))


@DETECTORS.register("feature_density")
class FeatureDensityScore(Detector):
    """log p(f) of the run's class-conditional Gaussian on its features encode(x) (genssl.encoders.density)."""

    @classmethod
    def method_refusal(cls, method):
        if not method.has_features:
            return f"{method.name} has no features (has_features is False), so it has no feature density"
        return None

    @classmethod
    def refusal(cls, method, density):
        if (refusal := cls.method_refusal(method)) is not None:
            return refusal
        if density is None:
            return (f"the run has no fitted feature density (it is fitted on the labeled and validation images at "
                    f"the end of training, into gate.pt)")
        return None

    @classmethod
    def scores(cls, method, images, density, batch_size=256):
        return density.log_density(batch_features(method, images, batch_size))


@DETECTORS.register("model")
class ModelScore(Detector):
    """The method's own generative score (Method.typicality, named by Method.typicality_score)."""

    @classmethod
    def method_refusal(cls, method):
        return typicality_refusal(method)

    @classmethod
    def score_name(cls, method):
        return type(method).typicality_score or cls.name

    @classmethod
    def default_refusal(cls, method, density):
        refusal = cls.refusal(method, density)
        if refusal is None and not (method.name == "vae_m1" and getattr(method, "likelihood", None) == "gaussian"):
            return (f"{method.name}'s own score is not its best detector (experiments/typicality.md): only M1's "
                    f"ELBO under a Gaussian decoder is")
        return refusal

    @classmethod
    def scores(cls, method, images, density, batch_size=256):
        return typicality_scores(method, images, batch_size)


@DETECTORS.register("elbo_complexity")
class ElboComplexity(Detector):
    """log2 p(x) + L(x): the ELBO in bits plus the zlib-compressed bits of the image (Serra et al. 2020's input
    complexity correction, sign turned; genssl.methods.typicality.complexity_corrected)."""

    @classmethod
    def method_refusal(cls, method):
        if type(method).typicality_score != "elbo":
            return f"{method.name} has no ELBO, so no complexity-corrected ELBO"
        if not _models_pixels(method):
            return (f"this {method.name} bounds the density of M1 latents, not of the pixels, so the images' "
                    f"compressed length does not correct it")
        return None

    @classmethod
    def default_refusal(cls, method, density):
        refusal = cls.refusal(method, density)
        if refusal is None:  # M1's raw ELBO beat it on 4 of 5 held-out sets (experiments/typicality.md)
            return ("the complexity correction fails on smooth images (upscaled 8x8 digits: AUROC 0.60 against the "
                    "raw ELBO's 0.96) and, under a Bernoulli decoder, on noise (0.00): not a default")
        return refusal

    @classmethod
    def scores(cls, method, images, density, batch_size=256):
        if images.dtype != torch.uint8:
            raise ValueError(f"elbo_complexity compresses 8-bit images, got dtype {images.dtype}")
        return complexity_corrected(typicality_scores(method, images, batch_size), images)


def _models_pixels(method: Method) -> bool:
    """Whether the method's generative model is of the pixels: the enumerated models (vae_m2, adgm, sdgm) may sit on
    a frozen M1's latents (`m1` set), vae_m1 always models pixels."""
    return getattr(method, "m1", None) is None


# ------------------------------------------------------------------ choosing and running a detector
def resolve_kind(kind: str, method: Method) -> str:
    """A detector name from a --flag-atypical KIND: a registered name, `confidence` (max_softmax), or the name of
    the method's own score (elbo, log_d, ...: model)."""
    if kind in DETECTORS:
        return kind
    if kind in ALIASES:
        return ALIASES[kind]
    if kind is not None and kind == type(method).typicality_score:
        return "model"
    raise ValueError(f"unknown detector {kind!r}; choose one of {', '.join(detector_kinds())}")


def detector_refusal(kind: str, method: Method, density: FeatureDensity | None = None) -> str | None:
    return DETECTORS.get(resolve_kind(kind, method)).refusal(method, density)


def available_detectors(method: Method, density: FeatureDensity | None = None) -> list[str]:
    """The detectors the run has."""
    return [n for n in DETECTORS.names() if DETECTORS.get(n).refusal(method, density) is None]


def default_detector(method: Method, density: FeatureDensity | None = None) -> str:
    """The run's best detector: the first of DEFAULT_PREFERENCE it has (the module docstring gives the figures)."""
    for name in DEFAULT_PREFERENCE:
        if DETECTORS.get(name).default_refusal(method, density) is None:
            return name
    raise AssertionError("max_softmax applies to every method")


def detector_scores(kind: str, method: Method, images: torch.Tensor, density: FeatureDensity | None = None,
                    batch_size: int = 256) -> torch.Tensor:
    """Detector `kind`'s scores of uint8 images (N, C, H, W): (N,) float64, higher = more typical; a ValueError
    saying why where the run cannot have it."""
    cls = DETECTORS.get(resolve_kind(kind, method))
    refusal = cls.refusal(method, density)
    if refusal is not None:
        raise ValueError(refusal)
    return cls.scores(method, images, density, batch_size)


def score_name(kind: str, method: Method) -> str:
    return DETECTORS.get(resolve_kind(kind, method)).score_name(method)


# ------------------------------------------------------------------ input statistics
def input_statistics(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image: the mean and the standard deviation of its pixels in [0, 1] and its zlib-compressed size in bits
    (complexity_bits); (N, C, H, W) uint8 -> {name: (N,) float64}."""
    if images.dtype != torch.uint8:
        raise ValueError(f"input statistics read 8-bit images, got dtype {images.dtype}")
    x = images.reshape(images.shape[0], -1).double().cpu() / 255
    return {"mean": x.mean(1), "std": x.std(1, correction=0), "bits": complexity_bits(images)}


@dataclass
class InputRange:
    """The range of each input statistic over reference images (`source` says which): `lo[name]`, `hi[name]`, the
    `tail` and 1 - `tail` quantiles of their values; an image outside it is atypical whatever a model says."""
    lo: dict[str, float]
    hi: dict[str, float]
    tail: float
    source: str = "validation images"

    @classmethod
    def from_validation(cls, stats: dict[str, torch.Tensor], tail: float = 0.0,
                        source: str = "validation images") -> InputRange:
        """The [tail, 1 - tail] quantile range of the images' statistics (tail 0: their min and max)."""
        if not 0.0 <= tail < 0.5:
            raise ValueError(f"the input statistics' tail must be in [0, 0.5), got {tail}")
        lo = {k: float(torch.quantile(stats[k].double(), tail)) for k in INPUT_STATISTICS}
        hi = {k: float(torch.quantile(stats[k].double(), 1 - tail)) for k in INPUT_STATISTICS}
        n = int(stats[INPUT_STATISTICS[0]].numel())
        return cls(lo, hi, tail, f"{n} {source}")

    @classmethod
    def from_images(cls, images: torch.Tensor, source: str = "validation and unlabeled images") -> InputRange:
        """The range of uint8 images' statistics: their min and max, or the RANGE_TAIL quantiles from
        RANGE_TAIL_MIN_IMAGES images on, so that a few odd images among them (a pool holds what its user put
        there) do not widen it."""
        tail = RANGE_TAIL if images.shape[0] >= RANGE_TAIL_MIN_IMAGES else 0.0
        return cls.from_validation(input_statistics(images), tail, source)

    def state_dict(self) -> dict:
        return {"lo": dict(self.lo), "hi": dict(self.hi), "tail": self.tail, "source": self.source}

    @classmethod
    def from_state(cls, state: dict) -> InputRange:
        return cls(dict(state["lo"]), dict(state["hi"]), float(state["tail"]), str(state["source"]))

    def outside(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """{statistic: (N,) bool, the images below its lo or above its hi}."""
        stats = input_statistics(images)
        return {k: (stats[k] < self.lo[k]) | (stats[k] > self.hi[k]) for k in INPUT_STATISTICS}

    def describe(self) -> str:
        bounds = "min and max" if self.tail == 0 else f"{self.tail:g} and {1 - self.tail:g} quantiles"
        return (f"the {bounds} of {self.source}: "
                + ", ".join(f"{k} in [{self.lo[k]:.4g}, {self.hi[k]:.4g}]" for k in INPUT_STATISTICS))


# ------------------------------------------------------------------ the gate of a run
def range_images(validation: torch.Tensor, pool: torch.Tensor | None) -> torch.Tensor:
    """The images the input range is taken from: the validation images and at most RANGE_POOL_IMAGES of the
    unlabeled pool (drawn with RANGE_SEED), uint8 on the CPU. The statistics need no labels, and a range of a few
    dozen validation images alone refuses typical images: with 60 (10 a class of six garments), 13% of the test
    images fall outside it, against 0.75% for 5,000 pool images at the 0.001 quantiles (issue 39's study)."""
    if pool is None or pool.shape[0] == 0:
        return validation.cpu()
    if pool.dtype != torch.uint8:
        raise ValueError(f"the input range reads the pool as 8-bit images, got dtype {pool.dtype}")
    if pool.shape[0] > RANGE_POOL_IMAGES:
        pool = pool[range_pool_draw(pool.shape[0]).to(pool.device)]
    return torch.cat([validation.cpu(), pool.cpu()])


def range_pool_draw(n_pool: int) -> torch.Tensor:
    """Which of a pool's n_pool images join the input range (at most RANGE_POOL_IMAGES, drawn with RANGE_SEED),
    so that a caller holding the pool as indices gathers only those."""
    if n_pool <= RANGE_POOL_IMAGES:
        return torch.arange(n_pool)
    return torch.randperm(n_pool, generator=torch.Generator().manual_seed(RANGE_SEED))[:RANGE_POOL_IMAGES]


def fit_gate(method: Method, labeled: tuple[torch.Tensor, torch.Tensor], validation: tuple[torch.Tensor, torch.Tensor],
             batch_size: int = 256, step: int | None = None, pool: torch.Tensor | None = None) -> dict:
    """What a run needs to gate images without its dataset (written as <run>/gate.pt): the feature density fitted on
    the labeled and validation images' features (methods with features), the validation images' scores of every
    detector the run has (the density's cross-fitted), their input statistics, and the input range of the
    validation and (a draw of) the unlabeled `pool` images (range_images). `labeled` (x, y) and `validation`
    (x, y): images (N, C, H, W) uint8 or floats in [0, 1] (the validation and pool images uint8: the input
    statistics and the compressed lengths read bytes), labels (N,). A weights_only-loadable dict."""
    (x_l, y_l), (x_v, y_v) = labeled, validation
    if x_v.dtype != torch.uint8:
        raise ValueError(f"fit_gate reads the validation images as 8-bit images, got dtype {x_v.dtype}")
    if x_v.shape[0] == 0:
        raise ValueError("fit_gate needs validation images: the thresholds are quantiles of their scores")
    density, density_fit = None, None
    if method.has_features:
        f_l, f_v = batch_features(method, x_l, batch_size), batch_features(method, x_v, batch_size)
        drawn = None if pool is None or pool.shape[0] == 0 else pool[range_pool_draw(pool.shape[0]).to(pool.device)]
        density, density_fit = fit_feature_density(method, (f_l, y_l), f_v, y_v, drawn, batch_size)
    val_scores = {}
    for name in available_detectors(method, density):
        val_scores[name] = (density.val_scores if name == "feature_density"
                            else detector_scores(name, method, x_v, density, batch_size))
    return {"format": GATE_FORMAT, "format_version": FORMAT_VERSION, "method": method.name,
            "step": -1 if step is None else int(step), "n_val": int(x_v.shape[0]),
            "density": None if density is None else density.state_dict(), "density_fit": density_fit,
            "val_scores": val_scores,
            "val_stats": input_statistics(x_v.cpu()), "default": default_detector(method, density),
            "input_range": InputRange.from_images(range_images(x_v, pool)).state_dict()}


def fit_feature_density(method: Method, labeled_features: tuple[torch.Tensor, torch.Tensor], f_v: torch.Tensor,
                        y_v: torch.Tensor, pool: torch.Tensor | None, batch_size: int = 256
                        ) -> tuple[FeatureDensity, str]:
    """(the run's feature density, how it was fitted). With unlabeled `pool` images (uint8, at most
    RANGE_POOL_IMAGES of them): fitted on the labeled images and the pool images the classifier labels with
    confidence >= PSEUDO_LABEL_CONFIDENCE, under those labels, the validation images held out, so their scores
    (what thresholds are taken from) are of images the density never saw. Without a pool, or where no pool image
    is that confident: fitted on the labeled and validation images, the validation images' scores cross-fitted.
    Why the pool: 100 labeled images are few for a Gaussian per class in D dimensions, and the confident pool images
    multiply them; on the six garments the pseudo-labeled density beat the labeled one on every held-out set for
    every classifier (module docstring)."""
    (f_l, y_l), k = labeled_features, method.spec.num_classes
    if pool is not None and pool.shape[0]:
        probs = torch.softmax(torch.cat([t.float() for t in map_batches(method, pool, batch_size, EVAL_SEED,
                                                                          method.predict, check=_logits_of(k))]), 1)
        confidence, label = probs.max(1)
        keep = confidence >= PSEUDO_LABEL_CONFIDENCE
        if bool(keep.any()):
            f_pool = batch_features(method, pool[keep.to(pool.device)], batch_size)
            density = FeatureDensity.fit(torch.cat([f_l, f_pool]), torch.cat([y_l.cpu(), label[keep]]), k)
            density.val_scores = density.log_density(f_v)
            return density, (f"{f_l.shape[0]} labeled and {int(keep.sum())} of {pool.shape[0]} pool images "
                             f"(confidence >= {PSEUDO_LABEL_CONFIDENCE:g}), the validation images held out")
    density = fit_with_validation(f_l, y_l.cpu(), f_v, y_v.cpu(), k)
    return density, f"{f_l.shape[0]} labeled and {f_v.shape[0]} validation images, the validation scores cross-fitted"


def _logits_of(num_classes: int):
    def check(out: torch.Tensor, n: int) -> None:
        if out.shape != (n, num_classes):
            raise ValueError(f"predict gave shape {tuple(out.shape)}, expected ({n}, {num_classes})")
    return check


def gate_input_range(state: dict) -> InputRange:
    """The gate's input range: the validation and pool images' (fit_gate), or, in a gate written before it held
    one, the validation images' min and max."""
    if state.get("input_range") is not None:
        return InputRange.from_state(state["input_range"])
    return InputRange.from_validation(state["val_stats"])


def gate_val_scores(state: dict, kind: str) -> torch.Tensor:
    """The gate's validation scores of detector `kind` (a registered name)."""
    if kind not in state["val_scores"]:
        raise ValueError(f"the run's gate holds no validation scores of {kind!r} (it has "
                         f"{', '.join(sorted(state['val_scores']))})")
    return state["val_scores"][kind]


def gate_threshold(state: dict, kind: str, quantile: float) -> float:
    """The `quantile` of the gate's validation scores of detector `kind` (the pool filter's cut)."""
    return threshold_from_validation(gate_val_scores(state, kind), quantile)


def gate_cut(state: dict, kind: str, rate: float) -> tuple[float, float]:
    """(threshold, expected in-distribution flag rate) of `genssl predict`'s flag on detector `kind`: the conformal
    cut of the gate's validation scores at `rate` (genssl.methods.typicality.conformal_threshold)."""
    return conformal_threshold(gate_val_scores(state, kind), rate)
