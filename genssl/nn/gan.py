"""Networks of the semi-supervised GAN (Salimans et al. 2016, "Improved Techniques for Training GANs", and its
code, openai/improved-gan): the MNIST MLP pair, the 32x32 conv pair used for SVHN / CIFAR-10, our 28x28 conv
pair, `make_gan` (`make_discriminator` alone), and `DiscriminatorFeatures`, a discriminator's feature layer as an
exportable encoder. Their layers (weight norm, noise) are in genssl.nn.layers.

Discriminators expose `features(x)` (the layer the generator's feature matching uses) and `head(f)`;
`forward(x)` is `head(features(x))`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genssl.nn.layers import BatchNorm1dFP32, ByteDropout, GaussianNoise, WNConv2d, WNConvTranspose2d, WNLinear
from genssl.registry import register_encoder_arch


# ---------------------------------------------------------------- MNIST (the paper's permutation-invariant model)
class MLPDiscriminator(nn.Module):
    """Gaussian noise (sigma 0.3) on the input, then weight-normalized ReLU layers 1000-500-250-250-250 each
    followed by noise (sigma 0.5), then a linear head with `out_dim` logits. `features` is the last hidden
    layer before its noise, the layer the original matches features on."""

    def __init__(self, in_dim: int, out_dim: int, hidden: tuple[int, ...] = (1000, 500, 250, 250, 250),
                 input_noise: float = 0.3, hidden_noise: float = 0.5):
        super().__init__()
        if not hidden:
            raise ValueError("MLPDiscriminator needs at least one hidden layer for feature matching")
        layers: list[nn.Module] = [nn.Flatten(), GaussianNoise(input_noise)]
        d = in_dim
        for i, h in enumerate(hidden):
            if i > 0:
                layers.append(GaussianNoise(hidden_noise))
            layers += [WNLinear(d, h), nn.ReLU()]
            d = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(GaussianNoise(hidden_noise), WNLinear(d, out_dim, train_scale=True))
        self.feature_dim = d

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # (B, out_dim)


class MLPGenerator(nn.Module):
    """z (uniform, z_dim) -> [Linear -> batch norm -> softplus] * len(hidden) -> weight-normalized Linear
    -> sigmoid, reshaped to the image shape (pixels in [0, 1])."""

    def __init__(self, image_shape: tuple[int, int, int], z_dim: int = 100, hidden: tuple[int, ...] = (500, 500)):
        super().__init__()
        layers: list[nn.Module] = []
        d = z_dim
        for h in hidden:
            layers += [nn.Linear(d, h, bias=False), BatchNorm1dFP32(h), nn.Softplus()]
            d = h
        layers += [WNLinear(d, math.prod(image_shape), train_scale=True), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)
        self.image_shape, self.z_dim = tuple(image_shape), z_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.image_shape)  # (B, C, H, W)


# ---------------------------------------------------------------- SVHN / CIFAR-10 (32x32 conv)
class ConvDiscriminator(nn.Module):
    """The paper's conv discriminator: dropout 0.2 on the input; three 3x3 weight-normalized conv layers of
    `width` channels (the last with stride 2); dropout 0.5; three of 2*width (stride 2 last); dropout 0.5;
    a 3x3 valid conv and two 1x1 (network-in-network) layers of 2*width; global average pooling (the
    feature layer); a weight-normalized linear head. Leaky ReLU (0.2) throughout. width = 96 for CIFAR-10,
    64 for SVHN. Images in [0, 1] are mapped to [-1, 1] first, as the original's data were."""

    def __init__(self, in_channels: int, out_dim: int, width: int = 96, dropout: tuple[float, float] = (0.2, 0.5)):
        super().__init__()
        w1, w2 = width, 2 * width

        def block(cin, cout, k, stride=1, pad=1):
            return [WNConv2d(cin, cout, k, stride, pad), nn.LeakyReLU(0.2)]

        self.body = nn.Sequential(
            nn.Dropout(dropout[0]),
            *block(in_channels, w1, 3), *block(w1, w1, 3), *block(w1, w1, 3, stride=2),
            nn.Dropout(dropout[1]),
            *block(w1, w2, 3), *block(w2, w2, 3), *block(w2, w2, 3, stride=2),
            nn.Dropout(dropout[1]),
            *block(w2, w2, 3, pad=0), *block(w2, w2, 1, pad=0), *block(w2, w2, 1, pad=0),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = WNLinear(w2, out_dim, train_scale=True, init_scale=0.1, init_std=0.05)
        self.feature_dim = w2

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x * 2 - 1)  # (B, 2*width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, out_dim)


class ConvGenerator(nn.Module):
    """z (uniform, 100) -> Linear to 512x4x4 -> batch norm, ReLU -> deconv to 256x8x8 -> BN, ReLU -> deconv to
    128x16x16 -> BN, ReLU -> weight-normalized deconv to Cx32x32 -> tanh, mapped to [0, 1]."""

    def __init__(self, image_shape: tuple[int, int, int], z_dim: int = 100):
        super().__init__()
        c, h, w = image_shape
        if (h, w) != (32, 32):
            raise ValueError(f"ConvGenerator makes 32x32 images, but the data are {h}x{w}; use arch='mlp' "
                             f"(any size) or resize the data to 32x32")
        self.fc = nn.Sequential(nn.Linear(z_dim, 512 * 4 * 4, bias=False), nn.BatchNorm1d(512 * 4 * 4), nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(512, 256, 5, 2, 2, output_padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(),
            nn.ConvTranspose2d(256, 128, 5, 2, 2, output_padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
            WNConvTranspose2d(128, c, 5, train_scale=True, init_scale=0.1), nn.Tanh(),
        )
        self.image_shape, self.z_dim = tuple(image_shape), z_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.deconv(self.fc(z).view(z.shape[0], 512, 4, 4))
        return (x + 1) * 0.5  # (B, C, 32, 32) in [0, 1]


# ---------------------------------------------------------------- 28x28 conv (ours, for MNIST-sized images)
class Conv28Discriminator(nn.Module):
    """A small conv discriminator for 28x28 images, sized to cost about twice the paper's MNIST MLP per step:
    Gaussian noise (`input_noise`) on the input, which is then mapped from [0, 1] to [-1, 1]; a 4x4 stride-2
    weight-normalized conv to `width` channels at 14x14; dropout; a 4x4 stride-2 conv to 2*width at 7x7;
    dropout; a 3x3 valid conv (5x5) and a 1x1 (network-in-network) layer of 2*width; global average pooling
    (the feature layer); Gaussian noise (`hidden_noise`) and a weight-normalized linear head. Leaky ReLU (0.2)
    throughout."""

    def __init__(self, in_channels: int, out_dim: int, width: int = 32, input_noise: float = 0.3,
                 hidden_noise: float = 0.5, dropout: float = 0.3):
        super().__init__()
        w1, w2 = width, 2 * width

        def block(cin, cout, k, stride=1, pad=1):
            return [WNConv2d(cin, cout, k, stride, pad), nn.LeakyReLU(0.2)]

        self.noise = GaussianNoise(input_noise)
        self.body = nn.Sequential(
            *block(in_channels, w1, 4, stride=2),  # (B, w1, 14, 14)
            ByteDropout(dropout),
            *block(w1, w2, 4, stride=2),  # (B, w2, 7, 7)
            ByteDropout(dropout),
            *block(w2, w2, 3, pad=0), *block(w2, w2, 1, pad=0),  # (B, w2, 5, 5)
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(GaussianNoise(hidden_noise), WNLinear(w2, out_dim, train_scale=True))
        self.feature_dim = w2

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # the layout (train.channels_last) comes from the kernels, which Method.setup converts once
        # (genssl.nn.layout): the first convolution returns NHWC activations. On the AVX-512 EPYC this small net
        # runs about as fast in either layout (benchmarks/README.md, "Conv rows")
        return self.body(self.noise(x) * 2 - 1)  # (B, 2*width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, out_dim)


class MatchedConvDiscriminator(nn.Module):
    """The discriminator matched to the classifiers' ConvNet (genssl.nn.classifiers.ConvNet, FixMatch's conv
    net): the same three stages of two 3x3 convs (width, 2*width, 4*width channels) with 2x max pooling between
    stages and global average pooling, so the SSL-GAN and FixMatch compare on one network (Oliver et al. 2018,
    sec. 3). As in the paper's conv discriminators, batch norm is replaced by weight norm (its per-batch
    statistics would mix real and generated images), with Gaussian noise on the input and on the features,
    dropout after each pooling and leaky ReLU (0.2). Any image size from 4x4 up."""

    def __init__(self, in_channels: int, out_dim: int, width: int = 32, input_noise: float = 0.3,
                 hidden_noise: float = 0.5, dropout: float = 0.3):
        super().__init__()
        chans = [in_channels, width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [WNConv2d(chans[i], chans[i + 1], 3, 1, 1), nn.LeakyReLU(0.2),
                       WNConv2d(chans[i + 1], chans[i + 1], 3, 1, 1), nn.LeakyReLU(0.2)]
            layers += [nn.MaxPool2d(2), ByteDropout(dropout)] if i < 2 else [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.noise = GaussianNoise(input_noise)
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(GaussianNoise(hidden_noise), WNLinear(chans[-1], out_dim, train_scale=True))
        self.feature_dim = chans[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.noise(x) * 2 - 1)  # (B, 4*width); channels_last from the kernels (genssl.nn.layout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, out_dim)


class Conv28Generator(nn.Module):
    """z (uniform, z_dim) -> Linear to 2*width x 7 x 7 -> batch norm, ReLU -> 5x5 deconv to width x 14 x 14 -> batch
    norm, ReLU -> weight-normalized 5x5 deconv to C x 28 x 28 -> sigmoid (pixels in [0, 1]): the paper's 32x32
    generator (ConvGenerator) cut to two upsamplings for 28x28 images."""

    def __init__(self, image_shape: tuple[int, int, int], z_dim: int = 100, width: int = 32):
        super().__init__()
        c, h, w = image_shape
        if (h, w) != (28, 28):
            raise ValueError(f"Conv28Generator makes 28x28 images, but the data are {h}x{w}")
        self.width = width
        self.fc = nn.Sequential(nn.Linear(z_dim, 2 * width * 7 * 7, bias=False), nn.BatchNorm1d(2 * width * 7 * 7),
                                nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 5, 2, 2, output_padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(),
            WNConvTranspose2d(width, c, 5, train_scale=True), nn.Sigmoid(),
        )
        self.image_shape, self.z_dim = tuple(image_shape), z_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], 2 * self.width, 7, 7)  # channels_last after the first (converted) deconv
        return self.deconv(x).contiguous()  # (B, C, 28, 28) in [0, 1], NCHW


GAN_ARCHS = ("mlp", "conv", "conv28", "convnet")
GENERATORS = ("auto", "mlp", "conv28")


def make_discriminator(arch: str, image_shape: tuple[int, int, int], d_out: int,
                       d_hidden: tuple[int, ...] = (1000, 500, 250, 250, 250), input_noise: float = 0.3,
                       hidden_noise: float = 0.5, conv_width: int = 96, conv_dropout: float = 0.3) -> nn.Module:
    """The discriminator of `arch` (GAN_ARCHS) with `d_out` logits: K, or K+1 with an explicit fake logit."""
    if arch == "conv28" and tuple(image_shape[1:]) != (28, 28):
        raise ValueError(f"the conv28 networks take 28x28 images, but the data are "
                         f"{image_shape[1]}x{image_shape[2]}; use arch='mlp' (any size) or 'conv' (32x32)")
    if arch == "mlp":
        return MLPDiscriminator(math.prod(image_shape), d_out, tuple(d_hidden), input_noise, hidden_noise)
    if arch == "conv":
        return ConvDiscriminator(image_shape[0], d_out, conv_width)
    if arch == "conv28":
        return Conv28Discriminator(image_shape[0], d_out, conv_width, input_noise, hidden_noise, conv_dropout)
    if arch == "convnet":
        if min(image_shape[1:]) < 4:
            raise ValueError(f"arch='convnet' takes images of 4x4 pixels or more, got {tuple(image_shape)}")
        return MatchedConvDiscriminator(image_shape[0], d_out, conv_width, input_noise, hidden_noise, conv_dropout)
    raise ValueError(f"unknown sgan arch {arch!r}; choose one of {', '.join(GAN_ARCHS)}")


def make_gan(arch: str, image_shape: tuple[int, int, int], d_out: int, z_dim: int = 100,
             d_hidden: tuple[int, ...] = (1000, 500, 250, 250, 250), g_hidden: tuple[int, ...] = (500, 500),
             input_noise: float = 0.3, hidden_noise: float = 0.5, conv_width: int = 96,
             conv_dropout: float = 0.3, generator: str = "auto") -> tuple[nn.Module, nn.Module]:
    """(discriminator, generator) for `arch`. The generator: `auto` is the arch's own (the MLP for mlp and conv28,
    the 32x32 conv one for conv); `mlp` or `conv28` (a 28x28 conv generator of `conv_width`) choose it."""
    if generator not in GENERATORS:
        raise ValueError(f"unknown sgan generator {generator!r}; choose one of {', '.join(GENERATORS)}")
    if generator == "conv28" and tuple(image_shape[1:]) != (28, 28):
        raise ValueError(f"the conv28 networks take 28x28 images, but the data are "
                         f"{image_shape[1]}x{image_shape[2]}; use arch='mlp' (any size) or 'conv' (32x32)")
    disc = make_discriminator(arch, image_shape, d_out, d_hidden, input_noise, hidden_noise, conv_width, conv_dropout)
    if generator == "auto":
        generator = "conv" if arch == "conv" else "mlp"  # convnet too: the generator is not matched to anything
    if generator == "conv":
        gen = ConvGenerator(image_shape, z_dim)
    elif generator == "conv28":
        gen = Conv28Generator(image_shape, z_dim, conv_width)
    else:
        gen = MLPGenerator(image_shape, z_dim, tuple(g_hidden))
    return disc, gen


@register_encoder_arch("gan_discriminator_features")
class DiscriminatorFeatures(nn.Module):
    """The feature layer of an SSL-GAN's discriminator (`features(x)`, the layer feature matching uses), rebuilt
    from `make_discriminator`'s arguments. Its noise and dropout act only in training mode, so the frozen
    (eval-mode) encoder gives the deterministic features that evaluation uses."""

    def __init__(self, arch: str, image_shape, d_out: int, hidden=(1000, 500, 250, 250, 250),
                 input_noise: float = 0.3, hidden_noise: float = 0.5, conv_width: int = 96,
                 conv_dropout: float = 0.3, net: nn.Module | None = None):
        super().__init__()
        self.args = {"arch": arch, "image_shape": [int(d) for d in image_shape], "d_out": int(d_out),
                     "hidden": [int(h) for h in hidden], "input_noise": float(input_noise),
                     "hidden_noise": float(hidden_noise), "conv_width": int(conv_width),
                     "conv_dropout": float(conv_dropout)}
        # `net` lets a live method share its (EMA) discriminator instead of copying it
        self.net = net if net is not None else make_discriminator(arch, tuple(image_shape), d_out, tuple(hidden),
                                                                  input_noise, hidden_noise, conv_width, conv_dropout)
        self.out_dim = self.net.feature_dim

    def spec_args(self) -> dict:
        return dict(self.args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, feature_dim)
        return self.net.features(x)
