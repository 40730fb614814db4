"""Writers of small image-file datasets for the folder-data, predict and TensorBoard tests: each class is a bright
square at its own place on a noisy background (learnable in a few steps), saved as real image files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def class_image(k: int, size=(16, 16), seed: int = 0, channels: int = 1) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8: class k's square (2 x 2 grid of places) over noise."""
    rng = np.random.default_rng(seed)
    h, w = size
    x = rng.integers(0, 60, (h, w, channels), dtype=np.uint8)
    r, c = divmod(k % 4, 2)
    x[r * h // 2:(r + 1) * h // 2, c * w // 2:(c + 1) * w // 2] += 180
    return x[..., 0] if channels == 1 else x


def save(array: np.ndarray, path: Path, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array)
    if mode is not None:
        im = im.convert(mode)
    im.save(path)
    return path


def write_class_folders(root: Path, classes: dict[str, int], n: int, size=(16, 16), seed: int = 0,
                        ext: str = ".png", channels: int = 1) -> Path:
    """root/<class>/<i>.png for every class name -> class index (which square), n images each."""
    for name, k in classes.items():
        for i in range(n):
            save(class_image(k, size, seed * 100_000 + k * 1000 + i, channels), root / name / f"{i:03d}{ext}")
    return root


def write_unlabeled(root: Path, n: int, n_classes: int = 2, size=(16, 16), seed: int = 7, nested: bool = True) -> Path:
    for i in range(n):
        sub = root / f"batch{i % 3}" / "deeper" if nested else root
        save(class_image(i % n_classes, size, seed * 100_000 + i), sub / f"u{i:04d}.png")
    return root


def write_dataset(root: Path, classes=("cat", "dog"), n_labeled: int = 5, n_test: int = 3, n_unlabeled: int = 12,
                  size=(16, 16)) -> dict:
    """A complete folder dataset under root; returns the `data:` config section for it."""
    index = {c: k for k, c in enumerate(classes)}
    write_class_folders(root / "labeled", index, n_labeled, size, seed=1)
    write_class_folders(root / "test", index, n_test, size, seed=2)
    write_unlabeled(root / "unlabeled", n_unlabeled, len(classes), size)
    return {"dataset": "folder", "labeled": str(root / "labeled"), "unlabeled": str(root / "unlabeled"),
            "test": str(root / "test"), "image_size": list(size), "channels": 1}
