"""Tests that catch a method that stops learning (issue #20), parametrized over the registry.

1. Every method trains a few hundred steps on clusters that only the unlabeled images reveal well (see
   `cluster_images`) and must reach a test accuracy far above chance (0.1). Each floor was calibrated on the
   code as it stood (recorded next to it) and sits well below that, but above what a method whose loss has a
   wrong sign or has stopped learning gets (~chance, or the supervised level for the methods marked below).
2. The methods that exploit the unlabeled cloud must beat the supervised baseline on the same data by a clear
   margin: a zeroed or sign-flipped unlabeled term leaves them at (or below) the supervised level.
3. Where a method has an unlabeled term, two steps from the same state with different unlabeled batches must
   give different classifiers (with batch norm frozen, so x_u reaches the update only through the loss); the
   supervised baseline must give the same one.

A run is deterministic on the CPU with a fixed thread count (tests/conftest.py), so each figure below is
reproducible; the margins are there for legitimate changes to the methods.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import tiny_run_config
from genssl import Trainer, create_method, list_methods
from genssl.data.batching import SSLBatch
from genssl.data.datasets import ImageData
from genssl.data.spec import DataSpec
from method_recipes import recipe

K, SIDE, CELL, NOISE = 10, 16, 4, 0.45
N_LABELS = 10  # one labeled image per class
STEPS = 300


def cluster_images(n: int, seed: int, noise: float = NOISE) -> ImageData:
    """(n, 1, 16, 16) uint8 images in K = 10 clusters. Class k's centre is a fixed random pattern of 4x4-pixel cells,
    each bright (0.75) or dark (0.25); an image is its centre plus Gaussian pixel noise of std `noise`, clipped to
    [0, 1]. The centres differ in >= 4 of 16 cells, far apart against the noise once averaged over a cell, so the
    unlabeled cloud is ten clear clusters; but each labeled image is a single noisy draw, and a classifier fitted to
    one per class alone gets ~0.6 on the test images (the supervised baseline below)."""
    cells = SIDE // CELL
    pattern = torch.Generator().manual_seed(1234)
    while True:  # distinct, well-separated centres (deterministic: the generator's seed is fixed)
        bits = (torch.rand(K, cells * cells, generator=pattern) > 0.5).float()
        hamming = (bits[:, None] != bits[None]).sum(-1) + 100 * torch.eye(K)
        if hamming.min() >= 4:
            break
    centres = bits.view(K, 1, cells, cells).repeat_interleave(CELL, 2).repeat_interleave(CELL, 3)
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % K)[torch.randperm(n, generator=g)]
    x = 0.25 + 0.5 * centres[labels] + noise * torch.randn(n, 1, SIDE, SIDE, generator=g)
    return ImageData((x.clamp(0, 1) * 255).round().to(torch.uint8), labels.long(), K, "clusters")


# Test accuracy after STEPS steps (train.seed 0) when the floors were set, and the floor. Chance is 0.1; a floor
# above the supervised level (~0.6) means the method must get something from the unlabeled images.
FLOORS = {
    "supervised": (0.668, 0.40),
    "pseudo_label": (0.900, 0.70),
    "self_training": (0.946, 0.75),
    "fixmatch": (0.988, 0.75),
    "sgan": (0.976, 0.75),
    "vae_m1": (0.876, 0.65),
    "vae_m2": (0.832, 0.60),
    "adgm": (0.810, 0.60),
    "sdgm": (0.836, 0.60),
}
DEFAULT_FLOOR = 0.6
BEATS_SUPERVISED_BY = 0.10
"""Methods calibrated >= 0.2 above the supervised baseline (0.668) must stay this far above it."""
BEATS_SUPERVISED = [m for m in ("pseudo_label", "self_training", "fixmatch", "sgan", "vae_m1") if m in list_methods()]


@pytest.fixture(scope="module")
def cluster_data():
    return cluster_images(1000, seed=0), cluster_images(500, seed=1)


@pytest.fixture(scope="module")
def trained(cluster_data, tmp_path_factory):
    """Test results of one STEPS-step run per method (each trained once per module, on demand)."""
    results: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in results:
            cfg = tiny_run_config(name, tmp_path_factory.mktemp(name), recipe(name),
                                  data={"n_labels": N_LABELS, "n_val": 100},
                                  train={"steps": STEPS, "eval_every": STEPS // 2, "ckpt_every": STEPS,
                                         "log_every": 50})
            results[name] = Trainer(cfg, data=cluster_data).fit()
        return results[name]

    return get


def test_the_clusters_are_what_the_docstring_says(cluster_data):
    train, test = cluster_data
    assert train.image_shape == (1, SIDE, SIDE) and train.num_classes == K
    assert torch.bincount(train.labels, minlength=K).tolist() == [len(train.labels) // K] * K
    # Nearest cluster centre, with the centres estimated from the training images' labels: near perfect. That is
    # the structure the unlabeled cloud holds (10 labels alone give ~0.6, see FLOORS["supervised"]).
    x, xt = train.images.float().flatten(1) / 255, test.images.float().flatten(1) / 255
    centres = torch.stack([x[train.labels == k].mean(0) for k in range(K)])
    assert (torch.cdist(xt, centres).argmin(1) == test.labels).float().mean() >= 0.99


@pytest.mark.parametrize("name", list_methods())
def test_every_method_learns_the_clusters(name, trained):
    acc = trained(name)["test_acc"]
    calibrated, floor = FLOORS.get(name, (None, DEFAULT_FLOOR))
    assert acc >= floor, (f"{name} reached test accuracy {acc:.3f} after {STEPS} steps, below its floor {floor} "
                          f"(chance 0.1; {calibrated} when the floor was set): has it stopped learning?")


@pytest.mark.parametrize("name", BEATS_SUPERVISED)
def test_the_unlabeled_images_lift_accuracy_above_supervised(name, trained):
    acc, sup = trained(name)["test_acc"], trained("supervised")["test_acc"]
    assert acc >= sup + BEATS_SUPERVISED_BY, (
        f"{name} reached {acc:.3f}, not {BEATS_SUPERVISED_BY} above the supervised baseline's {sup:.3f} on the "
        f"same labels: its unlabeled term no longer helps")


# ---------------------------------------------------------------------------------------------- x_u reaches the update

# method -> (config overrides under which its unlabeled term is active at `step` of a 10-step run, step), or None
# for a method without an unlabeled term.
UNLABELED_TERM = {
    "supervised": None,
    "pseudo_label": ({}, 9),                    # alpha(t) is alpha_final after the ramp (0 before it)
    "self_training": ({"threshold": 0.0}, 9),   # round 3 (round 0 is supervised); an untrained teacher is never
    "fixmatch": ({"threshold": 0.0}, 0),        # 0.95 confident, so every pseudo-label is kept
    "sgan": ({}, 0),
    "vae_m1": ({}, 0),
    "vae_m2": ({}, 0),
    "adgm": ({}, 0),
    "sdgm": ({}, 0),
}


def _images(n: int, seed: int) -> torch.Tensor:
    data = cluster_images(n, seed)
    return data.images.float() / 255, data.labels


def _step_with(name: str, overrides: dict, step: int, x_u: torch.Tensor) -> torch.Tensor:
    """A fresh method (same seed, same data-dependent init), one train_step with unlabeled batch x_u, then its
    predictions (and features) on fixed probe images."""
    x_l, y_l = _images(20, seed=5)
    spec = DataSpec((1, SIDE, SIDE), K, 20, 500, hflip=False)
    torch.manual_seed(0)
    method = create_method(name, {**recipe(name), **overrides}, spec)
    method.setup(total_steps=10)
    method.initialize(SSLBatch(x_l, y_l, _images(32, seed=6)[0]))
    method.train()
    for m in method.modules():  # running statistics: x_u can only reach the update through the loss
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    torch.manual_seed(1)  # the same noise (dropout, z, augmentation) in both steps
    method.train_step(SSLBatch(x_l, y_l, x_u), step)
    method.eval()
    method.fit_readout(x_l, y_l, seed=0)
    probe = _images(50, seed=7)[0]
    with torch.no_grad():
        out = [method.predict(probe).float().flatten()]
        if method.has_features:
            out.append(method.encode(probe).float().flatten())
    return torch.cat(out)


@pytest.mark.parametrize("name", list_methods())
def test_the_unlabeled_batch_changes_the_update(name):
    if name not in UNLABELED_TERM:
        pytest.fail(f"add {name!r} to UNLABELED_TERM in tests/test_learning.py (None if it has no unlabeled term)")
    term = UNLABELED_TERM[name]
    overrides, step = term if term is not None else ({}, 0)
    a = _step_with(name, overrides, step, _images(32, seed=8)[0])
    b = _step_with(name, overrides, step, _images(32, seed=9)[0])
    if term is None:
        assert torch.equal(a, b), f"{name} has no unlabeled term, yet the unlabeled batch changed its update"
    else:
        assert not torch.equal(a, b), (f"{name}: two steps that differ only in the unlabeled batch gave the same "
                                       f"classifier: its unlabeled term does not reach the update")
