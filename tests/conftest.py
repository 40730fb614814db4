"""Shared fixtures: tiny synthetic image data (learnable, class-dependent blobs) and small run configs."""

from __future__ import annotations

import os

import pytest
import torch

from genssl.config import build_run_config, merge
from genssl.data.datasets import ImageData

torch.set_num_threads(int(os.environ.get("GENSSL_TEST_THREADS", "1")))


def synthetic_images(n: int, num_classes: int = 10, shape=(1, 28, 28), seed: int = 0) -> ImageData:
    """Each class is a bright square at its own position plus noise: learnable in a few steps, never trivial."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    x = torch.rand(n, c, h, w, generator=g) * 0.3
    cells = int(num_classes ** 0.5 + 0.999)
    size = h // cells
    for k in range(num_classes):
        r, col = divmod(k, cells)
        x[labels == k, :, r * size:(r + 1) * size, col * size:(col + 1) * size] += 0.6
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageData(images, labels.long(), num_classes, "synthetic")


@pytest.fixture(scope="session")
def tiny_data():
    """(train, test) with 600 / 200 images of 1x28x28."""
    return synthetic_images(600, seed=0), synthetic_images(200, seed=1)


@pytest.fixture(scope="session")
def tiny_data_rgb32():
    return synthetic_images(400, shape=(3, 32, 32), seed=0), synthetic_images(100, shape=(3, 32, 32), seed=1)


def tiny_run_config(method: str, out_dir, method_overrides: dict | None = None, **sections):
    """A RunConfig with few steps for `method`; `sections` merge into data/train (e.g. train={'steps': 4})."""
    raw = {
        "out_dir": str(out_dir),
        "method": {"name": method, **(method_overrides or {})},
        "data": {"dataset": "synthetic", "n_labels": 20, "n_val": 100},
        "train": {"steps": 6, "batch_size": 32, "labeled_batch_size": 16, "eval_every": 3, "log_every": 2,
                  "ckpt_every": 3, "eval_batch_size": 128, "progress": False, "threads": 0,
                  "precision": "fp32",  # auto (the default) would differ between machines
                  "select": "best"},  # the tests of selection and resume check the max; test_realistic the rest
    }
    return build_run_config(merge(raw, sections))


@pytest.fixture
def run_config_factory(tmp_path):
    def make(method: str, method_overrides: dict | None = None, **sections):
        return tiny_run_config(method, tmp_path / "runs", method_overrides, **sections)

    return make
