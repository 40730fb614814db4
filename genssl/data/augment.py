"""Batched, device-side augmentation (no per-sample Python)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_translate(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Shift each image by an independent integer offset in [-max_shift, max_shift]^2, zero-filling the border."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p))
    dy = torch.randint(0, 2 * p + 1, (b, 1), device=x.device)
    dx = torch.randint(0, 2 * p + 1, (b, 1), device=x.device)
    rows = torch.arange(h, device=x.device)[None] + dy  # (B, H)
    cols = torch.arange(w, device=x.device)[None] + dx  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()
