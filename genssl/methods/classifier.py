"""Shared pieces of the purely discriminative methods (supervised, the pseudo-labeling baselines, FixMatch):
one classifier network, Adam, augmentation (genssl.data.augment) and a fused forward over labeled and
unlabeled images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genssl.data.augment import AUGMENT_KINDS, random_translate, resolve_hflip
from genssl.data.augment import augment as augment_images
from genssl.data.spec import DataSpec
from genssl.methods.base import Method
from genssl.nn.classifiers import ClassifierFeatures, make_classifier

WEAK_SHIFT = 2
"""Pixels of the weak/strong views' shift when augment_shift is 0 (FixMatch: 12.5% of 32 px; ~2 of 28)."""


@dataclass
class ClassifierConfig:
    arch: str = "mlp"
    """mlp | conv"""
    hidden: tuple[int, ...] = (500, 500)
    """MLP hidden widths."""
    dropout: float = 0.3
    lr: float = 1e-3
    weight_decay: float = 5e-4
    augment_shift: int = 0
    """Random translation (pixels) of the training images. With augment: none it is the original zero-filled
    shift (0 disables); with weak or strong it is their reflection-padded shift (0 = their default, 2)."""
    augment: str = "none"
    """none | weak (flip where the dataset allows it, shift) | strong (weak, RandAugment, Cutout): the
    augmentation of the training images (genssl.data.augment)."""
    hflip: bool | None = None
    """Horizontal flips in weak/strong augmentation: null follows the dataset (DataSpec.hflip: fashion_mnist
    and cifar10 yes, digits no); true on a dataset that forbids flips is an error; false never flips."""
    strong_ops: int = 2
    """RandAugment operations per image in strong augmentation."""
    cutout: float = 0.5
    """Largest Cutout square in strong augmentation, as a fraction of the image size (0 disables)."""

    def __post_init__(self):
        if self.augment not in AUGMENT_KINDS:
            raise ValueError(f"augment={self.augment!r} is not one of {', '.join(AUGMENT_KINDS)}")
        if self.augment_shift < 0:
            raise ValueError(f"augment_shift must be >= 0 pixels, got {self.augment_shift}")
        if self.strong_ops < 0 or not 0.0 <= self.cutout <= 1.0:
            raise ValueError(f"need strong_ops >= 0 and cutout in [0, 1], got {self.strong_ops} and {self.cutout}")


class ClassifierMethod(Method):
    has_encoder = True
    # precision: auto stays fp32 for the classifier methods unless a subclass shows bf16 accurate and faster for an
    # architecture (supervised and fixmatch with the ConvNet: their files). The ConvNet step, CPU ms fp32 -> bf16,
    # one thread, channels_last, one process, interleaved rounds (benchmarks/conv_step.py, AMD EPYC with
    # avx512_bf16, 2026-12-07; benchmarks/README.md "Conv rows"): fixmatch (16 + 2 x 112 images) 660 -> 350
    # (1.89x), pseudo_label (100 + 100) 474 -> 264 (1.79x), self_training (100 + 100) 204 -> 120 (1.70x),
    # supervised (64 labeled) 127 -> 78 (1.62x); the MLP's bf16 step is 0.96x-1.13x fp32's, not worth it.
    # pseudo_label and self_training with the ConvNet are faster in bf16 but their accuracy was not checked.
    auto_bf16 = False

    @classmethod
    def precision_arch(cls, cfg) -> str:
        return cfg.arch

    def __init__(self, cfg: ClassifierConfig, spec: DataSpec):
        super().__init__(cfg, spec)
        self.net = make_classifier(cfg.arch, spec.image_shape, spec.num_classes, cfg.hidden, cfg.dropout)
        self.flip = resolve_hflip(cfg.hflip, spec.hflip, f"{type(self).__name__} (method.hflip)")

    def configure_optimizers(self):
        return {"main": torch.optim.AdamW(self.net.parameters(), lr=self.cfg.lr,
                                          weight_decay=self.cfg.weight_decay)}

    def augment(self, x: torch.Tensor, kind: str | None = None) -> torch.Tensor:
        """Training images (B, C, H, W) -> their `kind` view (default: the config's `augment`)."""
        c = self.cfg
        kind = c.augment if kind is None else kind
        if kind == "none":
            return random_translate(x, c.augment_shift)
        return augment_images(x, kind, flip=self.flip, max_shift=c.augment_shift or WEAK_SHIFT, n_ops=c.strong_ops,
                              cutout=c.cutout)

    def logits_lu(self, x_l: torch.Tensor, x_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass over labeled and unlabeled images together (one set of kernels, and batch norm
        sees both)."""
        logits = self.net(torch.cat([x_l, x_u]))
        return logits[: x_l.shape[0]], logits[x_l.shape[0]:]

    def supervised_loss(self, logits_l: torch.Tensor, y_l: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits_l.float(), y_l)

    def predict(self, x):
        return self.net(x)

    def encode(self, x):
        return self.net.features(x)

    def encoder_module(self):
        """The feature extractor as an exportable net (shares this method's weights; see genssl.encoders.format)."""
        c = self.cfg
        return ClassifierFeatures(c.arch, self.spec.image_shape, self.spec.num_classes, c.hidden, c.dropout,
                                  net=self.net)
