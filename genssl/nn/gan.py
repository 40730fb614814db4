"""Networks of the semi-supervised GAN (Salimans et al. 2016, "Improved Techniques for Training GANs",
and its code, openai/improved-gan): weight-normalized layers with data-dependent initialization, Gaussian
noise layers, the MNIST MLP pair and the 32x32 conv pair used for SVHN / CIFAR-10.

Weight normalization (Salimans & Kingma 2016, eq. 2): w = g * v / ||v||, so a unit's output is
g * <v, x> / ||v|| + b. Data-dependent init (their sec. 3): on a first batch, with t = <v, x> / ||v||,
set g = s / std(t) and b = -s * mean(t) / std(t), so every pre-activation starts with mean 0 and std s.
As in the original, the scale g is frozen after initialization except in the layers the paper trains it
(`train_scale=True`: the classifier head and the generator's output layer).

Discriminators expose `features(x)` (the layer the generator's feature matching uses) and `head(f)`;
`forward(x)` is `head(features(x))`.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn


class _WeightNorm(nn.Module):
    """Shared parts of the weight-normalized layers. Subclasses set `_norm_dims` (the axes of v reduced
    per output unit), `_stat_dims` (the axes of the output averaged per unit) and `_unit_dim` of v."""

    _norm_dims: tuple[int, ...]
    _unit_dim: int

    def __init__(self, v_shape: tuple[int, ...], out_units: int, train_scale: bool, init_scale: float,
                 init_std: float):
        super().__init__()
        self.v = nn.Parameter(torch.randn(v_shape) * init_std)
        self.b = nn.Parameter(torch.zeros(out_units))
        if train_scale:
            self.g = nn.Parameter(torch.ones(out_units))
        else:
            self.register_buffer("g", torch.ones(out_units))
        self.init_scale = init_scale
        self.initializing = False  # set by data_dependent_init for one forward pass

    def unit_scale(self) -> torch.Tensor:
        """s = g / ||v|| per output unit, (units,) in float32: w = v * s along the unit dim. One fused norm
        (torch.linalg.vector_norm) instead of a pow, a sum and a sqrt over the whole weight and back."""
        return self.g / torch.linalg.vector_norm(self.v, dim=self._norm_dims, dtype=torch.float32).add(1e-12)

    def weight(self) -> torch.Tensor:
        shape = [1] * self.v.dim()
        shape[self._unit_dim] = -1
        return self.v * self.unit_scale().view(shape).to(self.v.dtype)

    def _apply_op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.initializing:
            return self._apply_op(x, self.weight(), self.b)
        with torch.no_grad():
            self.g.fill_(1.0)
            t = self._apply_op(x, self.weight(), None).float()  # (B, out, ...) normalized-direction outputs
            dims = (0,) + tuple(range(2, t.dim()))
            m = t.mean(dims)
            s = self.init_scale / (t.var(dims, unbiased=False) + 1e-8).sqrt()
            self.g.copy_(s)
            self.b.copy_(-m * s)
            shape = (1, -1) + (1,) * (t.dim() - 2)
            return ((t - m.view(shape)) * s.view(shape)).to(x.dtype)


class WNLinear(_WeightNorm):
    _norm_dims, _unit_dim = (1,), 0

    def __init__(self, in_features: int, out_features: int, train_scale: bool = False, init_scale: float = 1.0,
                 init_std: float = 0.1):
        super().__init__((out_features, in_features), out_features, train_scale, init_scale, init_std)

    def _apply_op(self, x, w, b):
        return F.linear(x, w, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x (v s)^T + b = (x v^T) * s + b: the scale goes on the (B, out) outputs instead of the (out, in) weight,
        # so the weight is never materialized, which is cheaper whenever B < in (every MLP layer here).
        if self.initializing:
            return super().forward(x)
        v, g, b = self.v, self.g, self.b
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else v.dtype
        if torch._C._functorch.is_functorch_wrapped_tensor(v) or torch.compiler.is_compiling():
            y = F.linear(x, v)  # (..., out); stacked seeds (vmap) and compiled graphs: plain autograd
            return torch.addcmul(b.to(y.dtype), y, self.unit_scale().to(y.dtype))
        if torch.is_grad_enabled() and (v.requires_grad or g.requires_grad or b.requires_grad):
            return _WNLinearFn.apply(x, v, g, b, dtype)
        with torch.no_grad():  # frozen weights (a GAN's generator step, evaluation): gradients reach x only
            v_lp, s_lp, b_lp = v.to(dtype), self.unit_scale().to(dtype), b.to(dtype)
        return torch.addcmul(b_lp, F.linear(x.to(dtype), v_lp), s_lp)


class _WNLinearFn(torch.autograd.Function):
    """y = (x v^T) * s + b with s = g / ||v|| (a trainable WNLinear). Its backward writes v's gradient in two passes
    (the matmul's low-precision gradient cast to float32, then addcmul_ of the norm's term -(g_s s / ||v||^2) v, g_s
    the gradient of s), where autograd would cast, divide, multiply, mask and accumulate in five passes over the
    (out, in) weight. `dtype`: the autocast dtype the matmuls run in (v's own dtype without autocast)."""

    @staticmethod
    def forward(ctx, x, v, g, b, dtype):
        n = torch.linalg.vector_norm(v, dim=1, dtype=torch.float32).add(1e-12)  # (out,)
        s = g / n  # (out,)
        x_lp, v_lp = x.to(dtype), v.to(dtype)
        u = F.linear(x_lp, v_lp)  # (..., out)
        ctx.save_for_backward(x_lp, v, v_lp, n, s, u)
        ctx.x_dtype = x.dtype
        return torch.addcmul(b.to(dtype), u, s.to(dtype))

    @staticmethod
    def backward(ctx, grad_y):
        x_lp, v, v_lp, n, s, u = ctx.saved_tensors
        need_x, need_v, need_g, need_b, _ = ctx.needs_input_grad
        grad_y = grad_y.reshape(-1, grad_y.shape[-1]).to(u.dtype)  # (N, out)
        grad_u = grad_y * s.to(grad_y.dtype)  # (N, out)
        gx = gv = gg = gb = None
        if need_x:
            gx = (grad_u @ v_lp).to(ctx.x_dtype).reshape(*u.shape[:-1], v.shape[1])  # (..., in)
        if need_v or need_g:
            g_s = (grad_y * u.reshape(grad_y.shape)).sum(0, dtype=torch.float32)  # (out,) d loss / d s
            if need_g:
                gg = g_s / n
            if need_v:
                coef = (-g_s * s / n.square())[:, None]  # (out, 1)
                gv = (grad_u.t() @ x_lp.reshape(-1, v.shape[1])).to(v.dtype).addcmul_(v, coef)  # (out, in)
        if need_b:
            gb = grad_y.sum(0, dtype=torch.float32)
        return gx, gv, gg, gb, None


class WNConv2d(_WeightNorm):
    _norm_dims, _unit_dim = (1, 2, 3), 0

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0,
                 train_scale: bool = False, init_scale: float = 1.0, init_std: float = 0.05):
        super().__init__((out_ch, in_ch, kernel, kernel), out_ch, train_scale, init_scale, init_std)
        self.stride, self.padding = stride, padding

    def _apply_op(self, x, w, b):
        return F.conv2d(x, w, b, self.stride, self.padding)


class WNConvTranspose2d(_WeightNorm):
    """Doubles the spatial size with a 5x5 kernel (the paper's 'deconvolution')."""
    _norm_dims, _unit_dim = (0, 2, 3), 1

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 5, train_scale: bool = False,
                 init_scale: float = 1.0, init_std: float = 0.05):
        super().__init__((in_ch, out_ch, kernel, kernel), out_ch, train_scale, init_scale, init_std)
        self.padding = kernel // 2

    def _apply_op(self, x, w, b):
        return F.conv_transpose2d(x, w, b, stride=2, padding=self.padding, output_padding=1)


@torch.no_grad()
def data_dependent_init(module: nn.Module, *inputs: torch.Tensor) -> None:
    """Initialize every weight-normalized layer of `module` from one forward pass over `inputs`, in order,
    so each layer sees the already-normalized outputs of the layers below it."""
    layers = [m for m in module.modules() if isinstance(m, _WeightNorm)]
    if not layers:
        return
    for m in layers:
        m.initializing = True
    try:
        module(*inputs)
    finally:
        for m in layers:
            m.initializing = False


class GaussianNoise(nn.Module):
    """x + N(0, sigma^2) in training mode; the identity in eval mode."""

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.sigma == 0:
            return x
        # float32 normals cast to x's dtype: on CPU drawing bf16 normals directly is ~2x slower.
        return torch.add(x, torch.randn(x.shape, device=x.device).to(x.dtype), alpha=self.sigma)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


class ByteDropout(nn.Module):
    """Dropout (inverted: kept units scaled by 1 / (1 - p')) whose mask comes from random bytes: each unit is
    dropped when a uniform byte is < round(256 p), so p' = round(256 p) / 256. Drawing uint8 instead of the
    floats nn.Dropout's bernoulli_ draws makes it ~4x faster on CPU, where random numbers are a large share of
    a small conv discriminator's step. The identity in eval mode."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.cut = round(256 * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.cut == 0:
            return x
        keep = torch.randint(0, 256, x.shape, device=x.device, dtype=torch.uint8) >= self.cut
        return x * keep.to(x.dtype) * (256 / (256 - self.cut))

    def extra_repr(self) -> str:
        return f"p={self.cut / 256:g}"


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


class BatchNorm1dFP32(nn.BatchNorm1d):
    """Batch norm computed in fp32 whatever the autocast dtype, returned in the input's dtype: its statistics
    are delicate in bf16, and under torch.vmap (stacked seeds) batch_norm's batching rule refuses the mixed
    bf16-input / fp32-parameter case that the plain kernel accepts. Same parameters and state_dict keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float()).to(x.dtype)


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
        x = self.noise(x) * 2 - 1
        # channels-last: oneDNN's convolutions on CPU run 2-4x faster on it than on NCHW at these widths. vmap
        # (stacked seeds) cannot batch a memory-format change; the functorch check is private but the only one.
        if not torch._C._functorch.is_functorch_wrapped_tensor(x):
            x = x.contiguous(memory_format=torch.channels_last)
        return self.body(x)  # (B, 2*width)

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
        x = self.fc(z).view(z.shape[0], 2 * self.width, 7, 7)
        if not torch._C._functorch.is_functorch_wrapped_tensor(x):  # channels-last, as Conv28Discriminator
            x = x.contiguous(memory_format=torch.channels_last)
        return self.deconv(x).contiguous()  # (B, C, 28, 28) in [0, 1]


GAN_ARCHS = ("mlp", "conv", "conv28")
GENERATORS = ("auto", "mlp", "conv28")


def make_gan(arch: str, image_shape: tuple[int, int, int], d_out: int, z_dim: int = 100,
             d_hidden: tuple[int, ...] = (1000, 500, 250, 250, 250), g_hidden: tuple[int, ...] = (500, 500),
             input_noise: float = 0.3, hidden_noise: float = 0.5, conv_width: int = 96,
             conv_dropout: float = 0.3, generator: str = "auto") -> tuple[nn.Module, nn.Module]:
    """(discriminator, generator) for `arch`. The generator: `auto` is the arch's own (the MLP for mlp and conv28,
    the 32x32 conv one for conv); `mlp` or `conv28` (a 28x28 conv generator of `conv_width`) choose it."""
    if generator not in GENERATORS:
        raise ValueError(f"unknown sgan generator {generator!r}; choose one of {', '.join(GENERATORS)}")
    if arch in ("conv28",) or generator == "conv28":
        if tuple(image_shape[1:]) != (28, 28):
            raise ValueError(f"the conv28 networks take 28x28 images, but the data are "
                             f"{image_shape[1]}x{image_shape[2]}; use arch='mlp' (any size) or 'conv' (32x32)")
    if arch == "mlp":
        disc = MLPDiscriminator(math.prod(image_shape), d_out, tuple(d_hidden), input_noise, hidden_noise)
    elif arch == "conv":
        disc = ConvDiscriminator(image_shape[0], d_out, conv_width)
    elif arch == "conv28":
        disc = Conv28Discriminator(image_shape[0], d_out, conv_width, input_noise, hidden_noise, conv_dropout)
    else:
        raise ValueError(f"unknown sgan arch {arch!r}; choose one of {', '.join(GAN_ARCHS)}")
    if generator == "auto":
        generator = "conv" if arch == "conv" else "mlp"
    if generator == "conv":
        gen = ConvGenerator(image_shape, z_dim)
    elif generator == "conv28":
        gen = Conv28Generator(image_shape, z_dim, conv_width)
    else:
        gen = MLPGenerator(image_shape, z_dim, tuple(g_hidden))
    return disc, gen


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Temporarily stop `module`'s parameters from collecting gradients (inputs still get them), e.g. the
    discriminator during the generator's step."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p in params:
            p.requires_grad_(True)


@contextlib.contextmanager
def noiseless(module: nn.Module):
    """Temporarily switch `module` and its children to eval mode (no Gaussian noise, no dropout), restoring each
    one's own mode afterwards: the deterministic network, e.g. for a finite difference of its outputs."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, mode in modes:
            m.training = mode
