"""Layers of the semi-supervised GAN's networks (Salimans et al. 2016 and openai/improved-gan): weight-normalized
linear and conv layers with data-dependent initialization, Gaussian-noise and byte-mask dropout layers, an fp32
batch norm, and the `frozen` / `noiseless` contexts.

Weight normalization (Salimans & Kingma 2016, eq. 2): w = g * v / ||v||, so a unit's output is
g * <v, x> / ||v|| + b. Data-dependent init (their sec. 3): on a first batch, with t = <v, x> / ||v||,
set g = s / std(t) and b = -s * mean(t) / std(t), so every pre-activation starts with mean 0 and std s.
As in the original, the scale g is frozen after initialization except in the layers the paper trains it
(`train_scale=True`: the classifier head and the generator's output layer).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from genssl.nn.layout import in_layout_of


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
        # float32 normals cast to x's dtype (on CPU drawing bf16 normals directly is ~2x slower) and x's layout
        return torch.add(x, in_layout_of(torch.randn(x.shape, device=x.device), x), alpha=self.sigma)

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
        return x * in_layout_of(keep, x) * (256 / (256 - self.cut))  # the mask in x's layout: genssl.nn.layout

    def extra_repr(self) -> str:
        return f"p={self.cut / 256:g}"


class BatchNorm1dFP32(nn.BatchNorm1d):
    """Batch norm computed in fp32 whatever the autocast dtype, returned in the input's dtype: its statistics
    are delicate in bf16, and under torch.vmap (stacked seeds) batch_norm's batching rule refuses the mixed
    bf16-input / fp32-parameter case that the plain kernel accepts. Same parameters and state_dict keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float()).to(x.dtype)


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
