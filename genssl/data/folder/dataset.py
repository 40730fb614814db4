"""The `dataset: folder` datasets: labeled, validation, unlabeled and test images read into one `FolderData` train
set and a test set (genssl.data.folder), the run's split over them (`folder_split`), and `load_image_folder`, the
same reader for one labeled folder from Python."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from genssl.config import DataConfig, folder_image_size
from genssl.data.folder.cache import load_images
from genssl.data.folder.files import IMAGE_EXTENSIONS, SHOW_BAD, list_images, list_labeled, natural_key
from genssl.data.images import ImageData, validate_images_labels
from genssl.data.split import Split

UNLABELED = -1


@dataclass
class FolderData(ImageData):
    """ImageData read from image files: `paths[i]` is image i's file and `class_names[k]` class k's name.
    Unlabeled images carry the label UNLABELED (-1)."""
    class_names: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    n_val_images: int = 0
    """The images of a separate validation folder: the last n_val_images of the labeled block."""

    def __post_init__(self):
        if not isinstance(self.labels, torch.Tensor) or self.labels.dtype != torch.int64:
            raise ValueError(f"{self.name}: labels must be an int64 tensor")
        # every check of ImageData, with unlabeled images standing in as class 0
        validate_images_labels(self.images, self.labels.clamp(min=0) if self.labels.numel() else self.labels,
                               self.num_classes, self.name)
        if self.labels.numel() and self.labels.min() < UNLABELED:
            raise ValueError(f"{self.name}: labels must be class indices or {UNLABELED} (unlabeled)")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes")
        if self.paths and len(self.paths) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.paths)} paths for {len(self.labels)} images")


def report_bad(bad: list[tuple[str, str]], where: str, skip_bad: bool, total: int,
               option: str = "data.skip_bad") -> None:
    """Raise a ValueError that names every unreadable file (up to SHOW_BAD) and the `option` that skips them, or
    with skip_bad, warn with the same list."""
    if not bad:
        return
    listing = "\n".join(f"  {p}: {why}" for p, why in bad[:SHOW_BAD])
    more = f"\n  ... and {len(bad) - SHOW_BAD} more" if len(bad) > SHOW_BAD else ""
    if not skip_bad:
        setting = "skip_bad=True" if option == "skip_bad" else f"{option}: true"
        raise ValueError(f"{where}: {len(bad)} of {total} image file(s) cannot be read:\n{listing}{more}\n"
                         f"Fix or remove them, or set {setting} to train without them")
    warnings.warn(f"{where}: skipped {len(bad)} of {total} unreadable image file(s) ({option}):\n"
                  f"{listing}{more}", UserWarning, stacklevel=3)


def resolve_path(d: DataConfig, key: str) -> Path:
    path = Path(getattr(d, key)).expanduser()
    return Path(d.root).expanduser() / path if d.root is not None and not path.is_absolute() else path


def _labeled_set(d: DataConfig, key: str, progress: bool, classes: list[str] | None = None):
    """(images, class-name per image, paths) of a labeled source, bad files reported; with `classes`, every
    class found must be one of them."""
    source = resolve_path(d, key)
    paths, names = list_labeled(source, f"data.{key}")
    if classes is not None:
        unknown = sorted(set(names) - set(classes), key=natural_key)
        if unknown:
            raise ValueError(f"data.{key}: class(es) {', '.join(map(repr, unknown))} in {source} are not among the "
                             f"labeled classes ({', '.join(map(repr, classes))}); a model can only predict classes "
                             f"it was trained on: add labeled images of them or remove them from {key}")
    images, good, bad = load_images(paths, folder_image_size(d), d.channels, progress, f"decoding {key}")
    report_bad(bad, f"data.{key}", d.skip_bad, len(paths))
    keep = set(good)
    kept = [n for p, n in zip(paths, names) if str(p) in keep]
    if classes is None:  # a class whose every file was unreadable is an empty class
        emptied = sorted(set(names) - set(kept), key=natural_key)
        if emptied:
            raise ValueError(f"data.{key}: class(es) {', '.join(map(repr, emptied))} have no readable images left "
                             f"after skipping unreadable files")
    return images, kept, good


def load_folder_data(d: DataConfig, progress: bool = True) -> tuple[FolderData, FolderData]:
    """(train, test) of a `dataset: folder` config. train = labeled, then `val` images (when given), then
    unlabeled ones (label UNLABELED); `folder_split` makes the run's split over it."""
    if d.dataset != "folder":
        raise ValueError(f"load_folder_data reads `dataset: folder` configs, got dataset {d.dataset!r}")
    lab_x, lab_names, lab_paths = _labeled_set(d, "labeled", progress)
    classes = sorted(set(lab_names), key=natural_key)
    if len(classes) < 2:
        raise ValueError(f"data.labeled: {resolve_path(d, 'labeled')} has {len(classes)} class "
                         f"({', '.join(classes)}); classification needs at least 2")
    index = {c: k for k, c in enumerate(classes)}
    parts_x, parts_y, parts_p = [lab_x], [torch.tensor([index[n] for n in lab_names], dtype=torch.int64)], lab_paths
    if d.val is not None:
        val_x, val_names, val_paths = _labeled_set(d, "val", progress, classes)
        parts_x.append(val_x)
        parts_y.append(torch.tensor([index[n] for n in val_names], dtype=torch.int64))
        parts_p = parts_p + val_paths
    test_x, test_names, test_paths = _labeled_set(d, "test", progress, classes)

    source = resolve_path(d, "unlabeled")
    if not source.is_dir():
        raise FileNotFoundError(f"data.unlabeled: {source} is not a folder; give a folder of unlabeled images "
                                f"(any tree of image files)")
    claimed = {os.path.abspath(p) for p in parts_p + test_paths}
    found = list_images(source)
    unl_paths = [p for p in found if os.path.abspath(p) not in claimed]
    if len(unl_paths) < len(found):
        warnings.warn(f"data.unlabeled: {len(found) - len(unl_paths)} of the {len(found)} images in {source} are "
                      f"also labeled, validation or test images and were left out of the unlabeled pool",
                      UserWarning, stacklevel=2)
    if not unl_paths:
        raise ValueError(f"data.unlabeled: no unlabeled images in {source} (image files end in "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))}); semi-supervised training needs some")
    unl_x, unl_good, bad = load_images(unl_paths, folder_image_size(d), d.channels, progress, "decoding unlabeled")
    report_bad(bad, "data.unlabeled", d.skip_bad, len(unl_paths))
    if not unl_good:
        raise ValueError(f"data.unlabeled: none of the {len(unl_paths)} images in {source} could be read")
    parts_x.append(unl_x)
    parts_y.append(torch.full((len(unl_good),), UNLABELED, dtype=torch.int64))
    train = FolderData(torch.cat(parts_x), torch.cat(parts_y), len(classes), "folder/train", tuple(classes),
                       tuple(parts_p + unl_good), len(parts_p) - len(lab_paths))
    test = FolderData(test_x, torch.tensor([index[n] for n in test_names], dtype=torch.int64), len(classes),
                      "folder/test", tuple(classes), tuple(test_paths))
    return train, test


def folder_split(train: FolderData, d: DataConfig, seed: int) -> Split:
    """The run's split of a FolderData train set: labeled = the labeled images not held out for validation;
    val = the `val` folder's images (train.n_val_images), else a stratified `val_fraction` of each labeled class (at least one per
    class, at least one left to train on); unlabeled = the unlabeled images (plus the training labeled ones
    when d.labeled_in_unlabeled). Seeded: the same files and seed give the same split."""
    labels = train.labels
    unlabeled = (labels == UNLABELED).nonzero().flatten()
    known = (labels != UNLABELED).nonzero().flatten()  # labeled, then val images (train's layout)
    gen = torch.Generator().manual_seed(seed)
    if train.n_val_images:
        labeled, val = known[:-train.n_val_images], known[-train.n_val_images:]
    else:
        counts = torch.bincount(labels[known], minlength=train.num_classes)
        quota = (counts.double() * d.val_fraction).round().long().clamp(min=1)
        short = [(train.class_names[k], int(counts[k])) for k in range(train.num_classes) if counts[k] - quota[k] < 1]
        if short:
            raise ValueError(
                f"data.labeled: {len(short)} class(es) have too few images to hold out a validation split: "
                f"{', '.join(f'{n!r} ({c})' for n, c in short[:SHOW_BAD])}. data.val_fraction={d.val_fraction} "
                f"holds out at least 1 image of each class and training needs at least 1 more, so every class "
                f"needs 2 or more labeled images; add images, or give a separate validation folder (data.val)")
        labeled_parts, val_parts = [], []
        for k in range(train.num_classes):
            idx = known[labels[known] == k]
            idx = idx[torch.randperm(idx.numel(), generator=gen)]
            val_parts.append(idx[:quota[k]])
            labeled_parts.append(idx[quota[k]:])
        labeled, val = torch.cat(labeled_parts), torch.cat(val_parts)
    pool = torch.cat([unlabeled, labeled]) if d.labeled_in_unlabeled else unlabeled
    return Split(labeled=labeled[torch.randperm(labeled.numel(), generator=gen)],
                 unlabeled=pool[torch.randperm(pool.numel(), generator=gen)],
                 val=val[torch.randperm(val.numel(), generator=gen)], seed=seed,
                 labeled_in_unlabeled=d.labeled_in_unlabeled)


def load_image_folder(path: str | Path, image_size: int | tuple[int, int] | None = None, channels: int | None = None,
                      name: str | None = None, skip_bad: bool = False, progress: bool = True) -> FolderData:
    """One labeled set of your own images, from Python: `path` is a folder of class folders
    (<path>/<class name>/<image files>, classes in natural order: 2 before 10) or a CSV file of path,label rows.
    The reader of `dataset: folder` (any image mode converted, decoded in threads, cached, every unreadable file
    named; see genssl.data.folder), for `Trainer(cfg, data=(train, test))` or `genssl.make_split`.

    image_size: H, or (H, W), that every image is resized to; None: the size of the first image (sorted paths).
    channels: 1 (grey) or 3 (RGB); None: 1 when the first image is grey, else 3. skip_bad: leave unreadable files
    out with a warning instead of raising. Returns a FolderData with `class_names` and `paths`."""
    source = Path(path).expanduser()
    where = f"load_image_folder({str(path)!r})"
    paths, names = list_labeled(source, where)
    if image_size is None or channels is None:
        with Image.open(paths[0]) as first:
            w, h = first.size
            grey = first.mode in ("1", "L", "LA", "I", "F") or first.mode.startswith("I;16")
        image_size = (h, w) if image_size is None else image_size
        channels = (1 if grey else 3) if channels is None else channels
    size = (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    if channels not in (1, 3) or min(size) < 1:
        raise ValueError(f"{where}: channels must be 1 or 3 and image_size positive, got {channels} and {image_size}")
    images, good, bad = load_images(paths, size, channels, progress, f"decoding {source.name}")
    report_bad(bad, where, skip_bad, len(paths), option="skip_bad")
    kept = set(good)
    names = [n for p, n in zip(paths, names) if str(p) in kept]
    classes = sorted(set(names), key=natural_key)
    index = {c: k for k, c in enumerate(classes)}
    return FolderData(images, torch.tensor([index[n] for n in names], dtype=torch.int64), len(classes),
                      name or source.stem, tuple(classes), tuple(good))
