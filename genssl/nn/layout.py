"""Memory layout of the convolutional networks: channels_last (NHWC) or the default NCHW.

oneDNN (CPU) and cuDNN (GPU) run convolutions, batch norm and pooling faster on channels_last activations; on
an AVX-512 EPYC the FixMatch ConvNet step runs 1.1-1.35x faster than NCHW (fp32 and bf16), the matched SSL-GAN's
1.3x, the conv28 one's about the same (benchmarks/README.md, "Conv rows"). A network is converted
once, when its method is set up (`Method.setup` -> `Method.lay_out`): `to_channels_last` gives every 4-D
parameter and buffer (conv kernels) exact NHWC strides. Linear and batch-norm parameters are not 4-D and stay as
they are, so an MLP is untouched.

The batches need no conversion of their own: a convolution whose kernel is channels_last returns a
channels_last output whatever its input's layout (oneDNN and cuDNN pick the layout from the input or the
weight), so the first convolution converts the images once per forward pass and every later layer stays
NHWC. Single-channel images (MNIST, Fashion-MNIST) have the same bytes in both layouts, and the augmentation
module returns NCHW images anyway, so converting batches as they are drawn would only add a copy for colour
images before augmentation rewrites them. Shapes are unchanged: a channels_last tensor is an ordinary
(B, C, H, W) tensor with other strides, so callers that pass contiguous inputs (`predict`, exported encoders,
`load_encoder`) get the same logits, and code that flattens it must use reshape/flatten, never view.

What a layout costs is mostly in the elementwise ops: two operands of different layouts make the CPU kernel
walk one with strides (up to 12x slower), so noise and dropout masks are made in their input's layout
(`in_layout_of`), and a kernel's strides must be exactly NHWC (`is_channels_last`).
"""

from __future__ import annotations

import torch
from torch import nn

from genssl.config import CHANNELS_LAST_CHOICES  # auto (channels_last for a net with any convolution), on, off


def has_conv(module: nn.Module) -> bool:
    """Whether `module` holds any convolution (nn.Conv*/ConvTranspose*, or a layer with a 4-D kernel parameter,
    such as genssl.nn.layers.WNConv2d)."""
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules()) or any(
        p.dim() == 4 for p in module.parameters())


def channels_last_strides(shape: torch.Size) -> tuple[int, ...]:
    """The strides of a dense NHWC tensor of (N, C, H, W) `shape`."""
    n, c, h, w = shape
    return (h * w * c, 1, w * c, c)


def is_channels_last(x: torch.Tensor) -> bool:
    """`x` is a 4-D tensor with exactly NHWC strides. Exactly: `is_contiguous(memory_format=channels_last)` also holds
    for an NCHW tensor with one channel (a size-1 dimension's stride is ignored), but oneDNN and cuDNN read the
    strides themselves, so a single-channel kernel left with NCHW strides makes the first convolution of a
    grey-image net return NCHW activations, and its backward then mixes layouts (measured: the FixMatch
    ConvNet's first-stage batch norm and ReLU backward several times slower). False inside torch.vmap, where a
    layout cannot be asked (the stacked seeds of genssl.training.stacked train NCHW); the functorch check is
    private but the only one."""
    if x.dim() != 4 or torch._C._functorch.is_functorch_wrapped_tensor(x):
        return False
    return x.stride() == channels_last_strides(x.shape)


def in_layout_of(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`t` (same shape as `x`, e.g. noise or a dropout mask drawn in NCHW order) cast to x's dtype and laid out as
    x, in one copy. An elementwise op on two tensors of different layouts walks one of them with strides, and on a
    CPU that costs up to 12x (measured: leaky_relu_backward of the conv28 discriminator, bf16). Drawing `t` in NCHW
    order keeps each element's random number the same in both layouts."""
    if is_channels_last(x) and not x.is_contiguous():
        return t.to(x.dtype, memory_format=torch.channels_last)
    return t.to(x.dtype)


def use_channels_last(requested: str | bool, module: nn.Module) -> bool:
    """The layout decision for `module`: `requested` is one of CHANNELS_LAST_CHOICES (or a bool, on/off);
    auto is channels_last exactly when the module has a convolution (`has_conv`)."""
    if isinstance(requested, bool):
        return requested
    if requested not in CHANNELS_LAST_CHOICES:
        raise ValueError(f"channels_last={requested!r} is not one of {', '.join(CHANNELS_LAST_CHOICES)}")
    return requested == "on" or (requested == "auto" and has_conv(module))


@torch.no_grad()
def to_channels_last(module: nn.Module) -> nn.Module:
    """Rewrite `module`'s 4-D parameters and buffers (conv kernels) in channels_last order, in place: the Parameter
    objects stay the same, so optimizers built before or after see them; a stacked (N, O, I, kh, kw) kernel is left
    as it is. Returns the module."""
    for t in (*module.parameters(), *module.buffers()):
        if t.dim() == 4 and not is_channels_last(t):
            t.data = t.data.to(memory_format=torch.channels_last)
    return module


@torch.no_grad()
def match_optimizer_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter optimizer state tensor (momenta, Adam's moments) its parameter's strides.

    Needed after `load_state_dict` when the state was saved under the other layout (a checkpoint of an NCHW run
    resumed channels_last, or the reverse): the fused CPU/CUDA optimizers walk parameter, gradient and state
    memory in step, so a moment in NCHW order next to a channels_last parameter would silently update the wrong
    elements (measured: AdamW(fused=True) and SGD(fused=True) both diverge; the foreach ones do not)."""
    for p, state in optimizer.state.items():
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape and v.dim() > 1 and v.stride() != p.stride():
                state[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)
