"""Readers for the built-in dataset file formats: IDX (MNIST, Fashion-MNIST), CIFAR-10 pickles (with an
unpickler that accepts arrays only) and SVHN's MATLAB files.

We read the files ourselves rather than through torchvision's dataset classes because those check MD5 sums
of the full releases (so small or re-packed files fail) and, for CIFAR, unpickle with the unrestricted
pickle module.
"""

from __future__ import annotations

import gzip
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

from genssl.data.images import ImageData


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), checking the header against the payload size."""
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    if ndim < 1 or len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: IDX header truncated")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    expected = math.prod(dims)  # exact: numpy's int64 product could overflow on a forged header
    payload = len(raw) - 4 - 4 * ndim
    if payload != expected:
        raise ValueError(f"{path}: IDX file is corrupt or truncated: header says {dims} "
                         f"({expected} bytes) but the file holds {payload} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: cannot read (corrupt or truncated file): {e}") from e


def _find_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx_split(folder: Path, prefix: str, num_classes: int, name: str) -> ImageData | None:
    img_path = _find_file(folder, f"{prefix}-images-idx3-ubyte")
    lab_path = _find_file(folder, f"{prefix}-labels-idx1-ubyte")
    if img_path is None or lab_path is None:
        return None
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise ValueError(f"{img_path}: expected (N, H, W) images and (N,) labels, got {images.shape} and "
                         f"{labels.shape} in {lab_path}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{folder}: {images.shape[0]} images in {img_path.name} but {labels.shape[0]} "
                         f"labels in {lab_path.name}")
    return ImageData(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                     num_classes, f"{name}/{prefix}")


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches are pickled dicts of numpy arrays; anything else in the pickle is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR batches hold only arrays")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArrayOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a readable CIFAR batch: {e}") from e
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path}: a CIFAR batch must be a dict with 'data' and 'labels'")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: CIFAR data must be (N, 3072), got {data.shape}")
    return data.reshape(-1, 3, 32, 32), np.asarray(batch["labels"], dtype=np.int64)


def read_cifar10(folder: Path, train: bool) -> ImageData | None:
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    paths = [folder / n for n in names]
    if not all(p.is_file() for p in paths):
        return None
    parts = [read_cifar_batch(p) for p in paths]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return ImageData(torch.from_numpy(x), torch.from_numpy(y), 10, f"cifar10/{'train' if train else 'test'}")


def read_svhn(folder: Path, train: bool) -> ImageData | None:
    path = folder / f"{'train' if train else 'test'}_32x32.mat"
    if not path.is_file():
        return None
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
        x, y = mat["X"], mat["y"]
    except Exception as e:  # scipy raises a zoo of types on damaged files
        raise ValueError(f"{path}: not a readable SVHN .mat file: {e}") from e
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise ValueError(f"{path}: SVHN X must be (32, 32, 3, N), got {x.shape}")
    y = np.asarray(y, dtype=np.int64).reshape(-1) % 10  # SVHN stores digit 0 as label 10
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8))
    return ImageData(images, torch.from_numpy(y), 10, f"svhn/{'train' if train else 'test'}")
