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


# ---------------------------------------------------------------- semi-supervised GAN (Salimans et al. 2016)
