"""Writers for small dataset files in the real formats (IDX, CIFAR-10 python batches, SVHN .mat), so tests
exercise the same readers as real data without ever touching the network or the shared data folder."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np



def idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def noisy_images(n: int, seed: int, signal: float = 0.15, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """(n, size, size) uint8 images and (n,) labels in 0..9: each class brightens its own square a little
    under heavy noise, so accuracy is well above chance but far from 100% (a metric that can differ)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10)
    x = rng.random((n, size, size)) * 0.8
    cell = size // 4
    for k in range(10):
        r, c = divmod(k, 4)
        x[labels == k, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] += signal
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8), labels.astype(np.uint8)


def write_idx_dataset(folder: Path, n_train: int = 300, n_test: int = 100, gz: bool = True, seed: int = 0,
                      signal: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """The four files of an MNIST-style release in `folder`; returns the training images and labels."""
    suffix = ".gz" if gz else ""
    for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        images, labels = noisy_images(n, s, signal)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        if prefix == "train":
            out = images, labels
    return out


def write_cifar10(folder: Path, per_batch: int = 20, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in np.arange(per_batch) % 10], "batch_label": name}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


def write_svhn(folder: Path, n: int = 30, seed: int = 0) -> None:
    import scipy.io

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(-1, 1)  # SVHN's labels are 1..10, 10 meaning the digit 0
        scipy.io.savemat(str(folder / f"{split}_32x32.mat"), {"X": x, "y": y})
