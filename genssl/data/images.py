"""`ImageData`, the one in-memory dataset type: images (N, C, H, W) uint8 and labels (N,) int64, validated on
the way in (`from_arrays` for user arrays, `check_label_range` for every label that enters genssl)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


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
        if num_classes < 2 and y.shape[0] == x.shape[0] and int(y.min()) >= 0:  # else the checks below say more
            raise ValueError(f"{name}: every label is {int(y.max())}, so the labels name only one class; a classifier "
                             f"needs at least 2 (pass num_classes= when some classes have no images here)")
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
