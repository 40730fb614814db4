"""Built-in datasets by name: root resolution ($GENSSL_DATA, the cache, Debian's /usr/share/datasets), the
file readers of genssl.data.formats, and torchvision download as a fallback. Everything returns an `ImageData`
(genssl.data.images, re-exported here). Your own image folders: genssl.data.folder (`load_image_folder`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from genssl.data.formats import read_cifar10, read_idx, read_idx_split, read_svhn
from genssl.data.images import DatasetNotFoundError, ImageData, check_label_range, from_arrays, validate_images_labels

__all__ = ["BUILTIN", "DatasetNotFoundError", "HFLIP_DATASETS", "ImageData", "allows_hflip", "candidate_roots",
           "check_label_range", "from_arrays", "load_dataset", "read_idx",
           "validate_images_labels"]

DEBIAN_ROOT = Path("/usr/share/datasets")

# ---------------------------------------------------------------- built-in datasets

@dataclass(frozen=True)
class _Builtin:
    folders: tuple[str, ...]   # sub-folders of a root to look in (ours, torchvision's, Debian's)
    reader: object             # (folder, train) -> ImageData | None
    torchvision_class: str
    torchvision_subdir: str    # where torchvision's download lands the raw files, relative to its root


def _idx_reader(name):
    return lambda folder, train: read_idx_split(folder, "train" if train else "t10k", 10, name)


BUILTIN = {
    "mnist": _Builtin(("mnist", "MNIST/raw"), _idx_reader("mnist"), "MNIST", "MNIST/raw"),
    "fashion_mnist": _Builtin(("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"), _idx_reader("fashion_mnist"),
                              "FashionMNIST", "FashionMNIST/raw"),
    "cifar10": _Builtin(("cifar10", "cifar-10-batches-py"), read_cifar10, "CIFAR10", "cifar-10-batches-py"),
    "svhn": _Builtin(("svhn", "SVHN"), read_svhn, "SVHN", "SVHN"),
}


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "genssl" / "data"


def candidate_roots(root: str | Path | None) -> list[Path]:
    roots = []
    if root is not None:
        roots.append(Path(root))
    if os.environ.get("GENSSL_DATA"):
        roots.append(Path(os.environ["GENSSL_DATA"]))
    roots += [cache_root(), DEBIAN_ROOT]
    return roots


HFLIP_DATASETS = frozenset({"fashion_mnist", "cifar10"})
"""Built-in datasets whose classes survive a horizontal flip (not digits: MNIST, SVHN)."""


def allows_hflip(name: str) -> bool:
    return name in HFLIP_DATASETS


def load_dataset(name: str, root: str | Path | None = None, download: bool = True) -> tuple[ImageData, ImageData]:
    """(train, test) for a built-in dataset, read from the first root that holds it, else downloaded."""
    if name not in BUILTIN:
        raise ValueError(f"unknown dataset {name!r}; built-in datasets: {', '.join(sorted(BUILTIN))}")
    spec = BUILTIN[name]
    looked = []
    for base in candidate_roots(root):
        folders = [base / sub for sub in spec.folders]
        if root is not None and base == Path(root):
            folders.append(base)  # an explicit root may point straight at the files
        for folder in folders:
            looked.append(str(folder))
            if not folder.is_dir():
                continue
            train = spec.reader(folder, True)
            if train is None:
                continue
            test = spec.reader(folder, False)
            if test is None:
                raise DatasetNotFoundError(f"{name}: found training files in {folder} but not the test files")
            return train, test
    if download:
        tried = _download(name, spec)
        if tried is None:
            folder = cache_root() / spec.torchvision_subdir
            train, test = spec.reader(folder, True), spec.reader(folder, False)
            if train is not None and test is not None:
                return train, test
            tried = f"download finished but no files appeared in {folder}"
    else:
        tried = "download disabled"
    raise DatasetNotFoundError(
        f"dataset {name!r} not found. Looked in: {', '.join(looked)}. Download: {tried}.\n"
        f"Provide the files by setting GENSSL_DATA (or data.root) to a folder containing one of "
        f"{', '.join(spec.folders)} with the original release files"
        + (" (e.g. `apt install dataset-fashion-mnist` installs them to /usr/share/datasets)"
           if name == "fashion_mnist" else "") + "."
    )


def _download(name: str, spec: _Builtin) -> str | None:
    """Download through torchvision into the cache; returns None on success, else why it failed."""
    try:
        import torchvision.datasets as tvd

        cls = getattr(tvd, spec.torchvision_class)
        kwargs = {"split": "train"} if name == "svhn" else {"train": True}
        root = cache_root() / ("SVHN" if name == "svhn" else "")
        cls(root=str(root), download=True, **kwargs)
        kwargs = {"split": "test"} if name == "svhn" else {"train": False}
        cls(root=str(root), download=True, **kwargs)
        return None
    except Exception as e:  # offline machines fail in many ways (URLError, socket errors, RuntimeError)
        return f"failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"

