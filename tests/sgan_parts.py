"""A tiny SGAN and batch shared by the SGAN test modules, each of which passes its own DataSpec."""

from __future__ import annotations

import torch

from genssl.data.batching import SSLBatch
from genssl.methods import create_method

SMALL = {"d_hidden": [64, 32], "g_hidden": [32], "z_dim": 8, "n_samples": 20}


def tiny_sgan(spec, **overrides):
    torch.manual_seed(0)
    m = create_method("sgan", {**SMALL, **overrides}, spec)
    m.setup(100)
    return m


def tiny_batch(spec, n_l=10, n_u=16) -> SSLBatch:
    g = torch.Generator().manual_seed(1)
    return SSLBatch(torch.rand(n_l, *spec.image_shape, generator=g), torch.arange(n_l) % spec.num_classes,
                    torch.rand(n_u, *spec.image_shape, generator=g))
