"""The seeded, stratified labeled / unlabeled / validation split of a training set.

Validation images are held out of both pools (model selection never touches the test set). Labeled images
are drawn class-balanced from the rest: n_labels // K per class, the remainder going to randomly chosen
classes. Whether labeled images also sit in the unlabeled pool is explicit (the papers keep them there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from genssl.data.datasets import check_label_range
from genssl.fileio import atomic_torch_save, safe_torch_load


@dataclass
class Split:
    labeled: torch.Tensor    # (n_labels,) int64 indices into the training set
    unlabeled: torch.Tensor  # (n_unlabeled,)
    val: torch.Tensor        # (n_val,)
    seed: int
    labeled_in_unlabeled: bool

    def state_dict(self) -> dict:
        return {"labeled": self.labeled, "unlabeled": self.unlabeled, "val": self.val, "seed": self.seed,
                "labeled_in_unlabeled": self.labeled_in_unlabeled}

    @classmethod
    def from_state_dict(cls, state: dict) -> "Split":
        return cls(**state)

    def save(self, path: str | Path) -> None:

        atomic_torch_save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> "Split":

        return cls.from_state_dict(safe_torch_load(path))

    def check_against(self, n_train: int, path: str = "split") -> None:
        for name in ("labeled", "unlabeled", "val"):
            idx = getattr(self, name)
            if idx.numel() and (idx.min() < 0 or idx.max() >= n_train):
                raise ValueError(f"{path}: {name} indices out of range for a training set of {n_train} images; "
                                 f"the split belongs to other data")


def make_split(labels: torch.Tensor, num_classes: int, n_labels: int, n_val: int, seed: int,
               labeled_in_unlabeled: bool = True) -> Split:
    labels = torch.as_tensor(labels)
    if labels.dim() != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    labels = labels.long()
    n = labels.shape[0]
    if not isinstance(n_labels, int) or isinstance(n_labels, bool) or n_labels <= 0:
        raise ValueError(f"n_labels must be a positive integer, got {n_labels!r}")
    if not isinstance(n_val, int) or isinstance(n_val, bool) or n_val < 0:
        raise ValueError(f"n_val must be a non-negative integer, got {n_val!r}")
    check_label_range(labels, num_classes, "make_split")
    if n_labels < num_classes:
        raise ValueError(f"n_labels={n_labels} is fewer than the {num_classes} classes; a class-balanced split "
                         f"needs at least one label per class")
    if n_val + n_labels > n:
        raise ValueError(f"asked for {n_labels} labels and {n_val} validation images, but the training set has "
                         f"only {n} images")
    labels = labels.cpu()
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    # Validation: stratified in proportion to class frequency, so small val sets are not skewed.
    val_parts, rest_parts = [], []
    counts = torch.bincount(labels, minlength=num_classes)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"class(es) {empty} have no examples in the training set")
    val_quota = _proportional_quota(counts, n_val, gen)
    assert int(val_quota.sum()) == n_val, (val_quota, n_val)
    by_class = [perm[labels[perm] == k] for k in range(num_classes)]  # each in random order
    for k, idx in enumerate(by_class):
        val_parts.append(idx[: val_quota[k]])
        rest_parts.append(idx[val_quota[k]:])
    per_class = n_labels // num_classes
    extra = torch.randperm(num_classes, generator=gen)[: n_labels - per_class * num_classes]
    quota = torch.full((num_classes,), per_class, dtype=torch.long)
    quota[extra] += 1
    labeled_parts, unlabeled_parts = [], []
    for k, idx in enumerate(rest_parts):
        if idx.numel() < quota[k]:
            raise ValueError(f"class {k} has only {idx.numel()} training images outside the validation set, "
                             f"fewer than the {quota[k].item()} labels asked of it (n_labels={n_labels})")
        labeled_parts.append(idx[: quota[k]])
        unlabeled_parts.append(idx if labeled_in_unlabeled else idx[quota[k]:])
    labeled = torch.cat(labeled_parts)
    unlabeled = torch.cat(unlabeled_parts)
    val = torch.cat(val_parts)
    # Shuffle within each pool so the class-grouped order never leaks into anything that slices them.
    return Split(
        labeled=labeled[torch.randperm(labeled.numel(), generator=gen)],
        unlabeled=unlabeled[torch.randperm(unlabeled.numel(), generator=gen)],
        val=val[torch.randperm(val.numel(), generator=gen)],
        seed=seed,
        labeled_in_unlabeled=labeled_in_unlabeled,
    )


def _proportional_quota(counts: torch.Tensor, total: int, gen: torch.Generator) -> torch.Tensor:
    """Integer quotas summing to `total`, proportional to counts (largest-remainder rounding)."""
    exact = counts.double() * total / counts.sum()
    quota = exact.floor().long()
    short = total - int(quota.sum())
    if short:
        remainder = exact - quota
        # random tie-breaking keeps the assignment seeded but unbiased
        order = torch.argsort(remainder + 1e-9 * torch.rand(len(counts), generator=gen, dtype=torch.double),
                              descending=True)
        quota[order[:short]] += 1
    return torch.minimum(quota, counts)
