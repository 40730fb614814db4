"""Image datasets as uint8 tensors: built-in readers for the IDX, CIFAR and SVHN file formats, root resolution
($GENSSL_DATA, the cache, Debian's /usr/share/datasets), torchvision download as a fallback, and user data.

Everything returns an `ImageData`: images (N, C, H, W) uint8 and labels (N,) int64, validated on the way in.
We read the files ourselves rather than through torchvision's dataset classes because those check MD5 sums
of the full releases (so small or re-packed files fail) and, for CIFAR, unpickle with the unrestricted
pickle module.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEBIAN_ROOT = Path("/usr/share/datasets")


class DatasetNotFoundError(FileNotFoundError):
    """No copy of the dataset was found and it could not be downloaded."""


@dataclass
class ImageData:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    num_classes: int
    name: str = "data"

    def __post_init__(self):
        validate_images_labels(self.images, self.labels, self.num_classes, self.name)

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


def validate_images_labels(images, labels, num_classes: int, name: str = "data") -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"{name}: images must be a uint8 tensor of shape (N, C, H, W), got "
                         f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.dtype != torch.int64:
        raise ValueError(f"{name}: labels must be an int64 tensor of shape (N,), got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{name}: {images.shape[0]} images but {labels.shape[0]} labels")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: the dataset is empty")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"{name}: need an integer num_classes >= 2, got {num_classes!r}")
    if num_classes > 2**31:
        raise ValueError(f"{name}: num_classes={num_classes} is absurd (labels hold values up to "
                         f"{labels.max().item()}); labels must be class indices 0..K-1")
    check_label_range(labels, num_classes, name)


def check_label_range(labels: torch.Tensor, num_classes: int, name: str) -> None:
    """Raise a ValueError naming how many labels (N,) fall outside [0, num_classes) and the first of them."""
    bad = ((labels < 0) | (labels >= num_classes)).nonzero().flatten()
    if bad.numel():
        raise ValueError(f"{name}: labels must be in [0, {num_classes - 1}]; {bad.numel()} are not, e.g. "
                         f"index {bad[0].item()} has label {labels[bad[0]].item()}")


def from_arrays(images, labels, num_classes: int | None = None, name: str = "user data") -> ImageData:
    """User data as arrays or tensors: images (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3};
    uint8 in [0, 255] or float in [0, 1]. Float images containing NaN/inf are rejected, naming the indices."""
    x = _as_tensor(images, name, "images")
    y = _as_tensor(labels, name, "labels")
    if y.dim() != 1:
        raise ValueError(f"{name}: labels must be one-dimensional, got shape {tuple(y.shape)}")
    if y.is_floating_point():
        y = y.double()
        bad = (~torch.isfinite(y) | (y != y.round()) | (y.abs() > 2**31)).nonzero().flatten()
        if bad.numel():
            raise ValueError(f"{name}: labels must be integers; {bad.numel()} are not (NaN, inf, fractional or "
                             f"huge), at indices {bad[:10].tolist()}{' ...' if bad.numel() > 10 else ''}")
    elif y.dtype == torch.bool:
        raise ValueError(f"{name}: labels must be integers, got {y.dtype}")
    y = y.long()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError(f"{name}: images must have shape (N, H, W) or (N, C, H, W), got {tuple(x.shape)}")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{name}: images need 1 or 3 channels, got shape {tuple(x.shape)}")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{name}: images have no pixels, shape {tuple(x.shape)}")
    if x.dtype == torch.bool:
        raise ValueError(f"{name}: images must be uint8 in [0, 255] or float in [0, 1], got bool")
    if x.is_floating_point():
        bad = (~torch.isfinite(x)).flatten(1).any(1).nonzero().flatten()
        if bad.numel():
            raise ValueError(f"{name}: {bad.numel()} images contain NaN or inf, at indices {bad[:10].tolist()}"
                             f"{' ...' if bad.numel() > 10 else ''}")
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError(f"{name}: float images must lie in [0, 1], got range "
                             f"[{x.min().item():.3g}, {x.max().item():.3g}]")
        x = (x * 255).round().to(torch.uint8)
    elif x.dtype != torch.uint8:
        if x.numel() and (x.min() < 0 or x.max() > 255):
            raise ValueError(f"{name}: integer images must lie in [0, 255]")
        x = x.to(torch.uint8)
    if num_classes is None:
        if y.numel() == 0:
            raise ValueError(f"{name}: the dataset is empty")
        num_classes = int(y.max()) + 1
    return ImageData(x.contiguous(), y, num_classes, name)


# Element types torch can hold and compare; numpy's others (uint16/32/64, object, strings) are converted or refused.
_SAFE_DTYPES = {torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16,
                torch.float32, torch.float64, torch.bool}


def _as_tensor(value, name: str, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        try:
            array = np.asarray(value)
        except (ValueError, TypeError) as e:  # ragged nested lists, ...
            raise ValueError(f"{name}: {what} must be a rectangular numeric array: {e}") from e
        if array.dtype.kind == "u" and array.dtype.itemsize > 1:
            if array.size and array.max() > np.iinfo(np.int64).max:
                raise ValueError(f"{name}: {what} hold values too large for int64")
            array = array.astype(np.int64)
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{name}: {what} must be numeric, got dtype {array.dtype}")
        value = torch.from_numpy(np.ascontiguousarray(array))
    if value.dtype not in _SAFE_DTYPES:
        raise ValueError(f"{name}: {what} must be an integer or float tensor, got {value.dtype}")
    return value.detach().cpu()


# ---------------------------------------------------------------- file formats

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


def load_image_folder(path: str | Path, name: str | None = None) -> ImageData:
    """Images arranged as <path>/<class_name>/<image files>, classes in sorted order (torchvision's layout)."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"image folder not found: {path}")
    folder = ImageFolder(str(path))
    if len(folder) == 0:
        raise ValueError(f"{path}: no images found")
    images = [pil_to_tensor(folder.loader(p)) for p, _ in folder.samples]
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise ValueError(f"{path}: images must all have one size, found {sorted(shapes)[:3]}")
    labels = torch.tensor([c for _, c in folder.samples], dtype=torch.int64)
    return ImageData(torch.stack(images), labels, len(folder.classes), name or path.name)

