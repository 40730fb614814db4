"""Classifier networks: an MLP and a small conv net, and `ClassifierFeatures`, their penultimate layer as an
exportable encoder. Generative networks live in genssl.nn.vae and genssl.nn.gan."""

from __future__ import annotations

import math

import torch
from torch import nn

from genssl.registry import register_encoder_arch


class MLP(nn.Module):
    """Flatten -> [Linear -> BN? -> ReLU -> Dropout] * len(hidden) -> Linear. `features` is the last hidden layer."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], out_dim: int, dropout: float = 0.0,
                 batch_norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h)] + ([nn.BatchNorm1d(h)] if batch_norm else []) + [nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, out_dim)
        self.feature_dim = d

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


CONV_MIN_SIZE = 4
"""ConvNet's smallest input side: its two 2x poolings need 4 pixels to leave one."""


def check_conv_input(image_shape: tuple[int, ...], what: str = "arch='conv'") -> None:
    """Raise a ValueError naming the sizes ConvNet takes when (C, H, W) is not one of them."""
    if len(image_shape) != 3 or min(image_shape[1:]) < CONV_MIN_SIZE or image_shape[0] < 1:
        raise ValueError(f"{what} takes (C, H, W) images of any channel count with H, W >= {CONV_MIN_SIZE} "
                         f"(global average pooling makes the size otherwise free), got {tuple(image_shape)}; "
                         f"use larger images (data.image_size) or arch='mlp', which takes any size")


class ConvNet(nn.Module):
    """Three conv stages (32, 64, 128 channels; BN, ReLU, 2x pooling) -> global average -> linear head.
    Works for inputs of any channel count and any size from 4x4 up (`check_conv_input`)."""

    def __init__(self, in_channels: int, out_dim: int, width: int = 32, dropout: float = 0.0):
        super().__init__()
        chans = [in_channels, width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False), nn.BatchNorm2d(chans[i + 1]),
                       nn.ReLU(), nn.Conv2d(chans[i + 1], chans[i + 1], 3, padding=1, bias=False),
                       nn.BatchNorm2d(chans[i + 1]), nn.ReLU()]
            layers.append(nn.MaxPool2d(2) if i < 2 else nn.AdaptiveAvgPool2d(1))
        layers.append(nn.Flatten())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], out_dim)
        self.feature_dim = chans[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


ARCHS = ("mlp", "conv")


def make_classifier(arch: str, image_shape: tuple[int, int, int], num_classes: int, hidden: tuple[int, ...] = (500, 500),
                    dropout: float = 0.0) -> nn.Module:
    if arch == "mlp":
        return MLP(math.prod(image_shape), tuple(hidden), num_classes, dropout)
    if arch == "conv":
        check_conv_input(tuple(image_shape))
        return ConvNet(image_shape[0], num_classes, dropout=dropout)
    raise ValueError(f"unknown classifier arch {arch!r}; choose one of {', '.join(ARCHS)}")


@register_encoder_arch("classifier_features")
class ClassifierFeatures(nn.Module):
    """The penultimate layer of a discriminative method's classifier (genssl.nn.classifiers.MLP or ConvNet)."""

    def __init__(self, arch: str, image_shape, num_classes: int, hidden=(500, 500), dropout: float = 0.0,
                 net: nn.Module | None = None):
        super().__init__()
        self.args = {"arch": arch, "image_shape": [int(d) for d in image_shape], "num_classes": int(num_classes),
                     "hidden": [int(h) for h in hidden], "dropout": float(dropout)}
        # `net` lets a live method share its classifier instead of copying it
        self.net = net if net is not None else make_classifier(arch, tuple(image_shape), num_classes,
                                                               tuple(hidden), dropout)
        self.out_dim = self.net.feature_dim

    def spec_args(self) -> dict:
        return dict(self.args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, feature_dim)
        return self.net.features(x)

