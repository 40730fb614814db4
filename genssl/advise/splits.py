"""The repeats of `genssl advise`: repeated stratified splits of the user's labeled images into a training part
and a held-out part, written as CSV files of path,label rows (a `dataset: folder` labeled or test source).

Repeat r is the "seed" r of the paired statistics: every candidate of repeat r trains on train.csv of r (each run
then holds `val_fraction` of it out to pick its weights, with seed r, the same images for every candidate) and is
scored once on heldout.csv of r. The held-out part is round(HELDOUT_FRACTION * n_k) images of each class k (at
least 1, leaving at least 2 to train and pick on), drawn with torch.Generator seeded with the repeat index, so the
same labels give the same splits on every machine and every rerun. all.csv lists every label, for the final run.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from genssl.fileio import atomic_write_text

HELDOUT_FRACTION = 0.25
TRAIN_FILE, HELDOUT_FILE, ALL_FILE = "train.csv", "heldout.csv", "all.csv"


def heldout_counts(per_class: dict[str, int], fraction: float = HELDOUT_FRACTION) -> dict[str, int]:
    """Held-out images of each class: round(fraction * n), at least 1, at most n - 2."""
    return {c: min(n - 2, max(1, round(fraction * n))) for c, n in per_class.items()}


def repeat_split(labels: list[str], classes: list[str], repeat: int,
                 fraction: float = HELDOUT_FRACTION) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices) into `labels` for repeat `repeat`, stratified by class."""
    gen = torch.Generator().manual_seed(repeat)
    per_class = {c: [i for i, y in enumerate(labels) if y == c] for c in classes}
    quota = heldout_counts({c: len(ix) for c, ix in per_class.items()}, fraction)
    train, held = [], []
    for c in classes:
        ix = per_class[c]
        order = torch.randperm(len(ix), generator=gen).tolist()
        held += [ix[j] for j in order[:quota[c]]]
        train += [ix[j] for j in order[quota[c]:]]
    return sorted(train), sorted(held)


def _csv(paths: list[Path], labels: list[str], idx: list[int]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "label"])
    for i in idx:
        writer.writerow([str(Path(paths[i]).resolve()), labels[i]])
    return out.getvalue()


def write_splits(folder: Path, paths: list[Path], labels: list[str], classes: list[str], repeats: int,
                 fraction: float = HELDOUT_FRACTION) -> dict:
    """Write folder/r<k>/{train,heldout}.csv for k < repeats and folder/all.csv; returns their sizes."""
    sizes = {}
    for r in range(repeats):
        train, held = repeat_split(labels, classes, r, fraction)
        atomic_write_text(_csv(paths, labels, train), folder / f"r{r}" / TRAIN_FILE)
        atomic_write_text(_csv(paths, labels, held), folder / f"r{r}" / HELDOUT_FILE)
        sizes[r] = {"train": len(train), "heldout": len(held)}
    atomic_write_text(_csv(paths, labels, list(range(len(paths)))), folder / ALL_FILE)
    return sizes
