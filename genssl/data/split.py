"""The seeded, stratified labeled / unlabeled / validation split of a training set.

Validation images are held out of both pools (model selection never touches the test set). Labeled images
are drawn class-balanced from the rest: n_labels // K per class, the remainder going to randomly chosen
classes. Whether labeled images also sit in the unlabeled pool is explicit (the papers keep them there).

Unlabeled data as users have it (Oliver et al. 2018, sec. 4.4-4.5): `n_unlabeled` draws a pool of that size at
random from the images outside the labeled and validation sets; `classes` restricts the task (labeled and
validation images) to some classes, and `mismatch` makes that share of the pool images of the others, either in
place of in-class images (`mismatch_mode` replace: a fixed pool size) or added to a fixed in-class draw (add).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from genssl.config import MISMATCH_MODES
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
               labeled_in_unlabeled: bool = True, n_unlabeled: int | None = None,
               classes: list[int] | None = None, mismatch: float = 0.0, mismatch_mode: str = "replace") -> Split:
    """Indices into the training set. With `classes`, the labeled and validation images come from those classes
    only, and the unlabeled pool (n_unlabeled set) mixes in images of the other classes by `mismatch_mode`:

      replace: round(mismatch * n_unlabeled) of the other classes, the rest of the n_unlabeled from the task's (a
               fixed pool size whose composition changes, as in Oliver et al.'s fig. 2);
      add:     n_unlabeled of the task's classes, exactly those mismatch 0 draws for this seed (the in-class data
               is held fixed across mismatch levels), plus round(mismatch * n_unlabeled / (1 - mismatch)) of the
               others, so they are the `mismatch` share of the pool; mismatch must be below 1.
    """
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
    task = _task_classes(classes, num_classes)
    held_out = [k for k in range(num_classes) if k not in task]
    if n_unlabeled is not None and (not isinstance(n_unlabeled, int) or isinstance(n_unlabeled, bool)
                                    or n_unlabeled <= 0):
        raise ValueError(f"n_unlabeled must be a positive integer or None, got {n_unlabeled!r}")
    if not 0.0 <= mismatch <= 1.0:
        raise ValueError(f"mismatch must be a share in [0, 1], got {mismatch!r}")
    if mismatch_mode not in MISMATCH_MODES:
        raise ValueError(f"mismatch_mode must be one of {', '.join(MISMATCH_MODES)}, got {mismatch_mode!r}")
    if mismatch_mode == "add" and mismatch >= 1.0:
        raise ValueError(f"mismatch={mismatch} in add mode would add infinitely many out-of-class images; use a "
                         f"mismatch below 1, or mismatch_mode='replace' for a pool of out-of-class images only")
    if mismatch > 0 and (not held_out or n_unlabeled is None):
        raise ValueError(f"mismatch={mismatch} needs classes outside the task (classes=...) and a pool size "
                         f"(n_unlabeled=...)")
    if n_labels < len(task):
        raise ValueError(f"n_labels={n_labels} is fewer than the {len(task)} classes; a class-balanced split "
                         f"needs at least one label per class")
    labels = labels.cpu()
    counts = torch.bincount(labels, minlength=num_classes)
    n_task = int(counts[task].sum())
    if n_val + n_labels > n_task:
        raise ValueError(f"asked for {n_labels} labels and {n_val} validation images, but the training set has "
                         f"only {n_task} images" + (f" of classes {task}" if held_out else ""))
    empty = [k for k in task if counts[k] == 0]
    if empty:
        raise ValueError(f"class(es) {empty} have no examples in the training set")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    # Validation: stratified in proportion to class frequency, so small val sets are not skewed.
    val_parts, rest_parts = [], []
    val_quota = _proportional_quota(counts[task], n_val, gen)
    assert int(val_quota.sum()) == n_val, (val_quota, n_val)
    by_class = {k: perm[labels[perm] == k] for k in range(num_classes)}  # each in random order
    for j, k in enumerate(task):
        val_parts.append(by_class[k][: val_quota[j]])
        rest_parts.append(by_class[k][val_quota[j]:])
    per_class = n_labels // len(task)
    extra = torch.randperm(len(task), generator=gen)[: n_labels - per_class * len(task)]
    quota = torch.full((len(task),), per_class, dtype=torch.long)
    quota[extra] += 1
    labeled_parts, remainder_parts, whole_parts = [], [], []
    for j, idx in enumerate(rest_parts):
        if idx.numel() < quota[j]:
            raise ValueError(f"class {task[j]} has only {idx.numel()} training images outside the validation set, "
                             f"fewer than the {quota[j].item()} labels asked of it (n_labels={n_labels})")
        labeled_parts.append(idx[: quota[j]])
        remainder_parts.append(idx[quota[j]:])
        whole_parts.append(idx if labeled_in_unlabeled else idx[quota[j]:])
    labeled = torch.cat(labeled_parts)
    remainder = torch.cat(remainder_parts)  # task-class images in neither the labeled nor the validation set
    val = torch.cat(val_parts)
    if n_unlabeled is None:  # the whole pool, in the order earlier releases drew it (same runs, same numbers)
        unlabeled = torch.cat(whole_parts)
    else:
        if mismatch_mode == "add":  # the same in-class draw as mismatch 0, then the strays on top
            n_in = n_unlabeled
            n_out = round(mismatch * n_unlabeled / (1.0 - mismatch))
        else:
            n_out = round(mismatch * n_unlabeled)
            n_in = n_unlabeled - n_out
        others = torch.cat([by_class[k] for k in held_out]) if held_out else remainder[:0]
        if n_in > remainder.numel():
            raise ValueError(f"n_unlabeled={n_unlabeled} with mismatch={mismatch} ({mismatch_mode}) asks for {n_in} "
                             f"unlabeled images of the task's classes, but only {remainder.numel()} are outside the "
                             f"labeled and validation sets; lower n_unlabeled (or n_val)")
        if n_out > others.numel():
            raise ValueError(f"n_unlabeled={n_unlabeled} with mismatch={mismatch} ({mismatch_mode}) asks for {n_out} "
                             f"unlabeled images of the other classes {held_out}, but they hold only "
                             f"{others.numel()}; lower n_unlabeled or mismatch")
        drawn = torch.cat([_draw(remainder, n_in, gen), _draw(others, n_out, gen)])
        unlabeled = torch.cat([labeled, drawn]) if labeled_in_unlabeled else drawn
    # Shuffle within each pool so the class-grouped order never leaks into anything that slices them.
    return Split(
        labeled=labeled[torch.randperm(labeled.numel(), generator=gen)],
        unlabeled=unlabeled[torch.randperm(unlabeled.numel(), generator=gen)],
        val=val[torch.randperm(val.numel(), generator=gen)],
        seed=seed,
        labeled_in_unlabeled=labeled_in_unlabeled,
    )


def _task_classes(classes: list[int] | None, num_classes: int) -> list[int]:
    if classes is None:
        return list(range(num_classes))
    task = [int(k) for k in classes]
    bad = [k for k in task if not 0 <= k < num_classes]
    if bad:
        raise ValueError(f"classes {bad} are not class indices of this dataset (0..{num_classes - 1})")
    if len(set(task)) != len(task) or len(task) < 2:
        raise ValueError(f"classes must name at least two distinct classes, got {task}")
    return task


def _draw(pool: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    return pool[torch.randperm(pool.numel(), generator=gen)[:k]]


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
