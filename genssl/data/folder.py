"""Your own images (`data: {dataset: folder, ...}`): folders or CSV files of image files, decoded once into the
uint8 tensors every other dataset is, and the run's labeled / unlabeled / validation split over them.

    data:
      dataset: folder
      labeled: my/labeled        # one subfolder per class (class names = folder names), or a CSV of path,label
      unlabeled: my/unlabeled    # any tree of images, no labels
      test: my/test              # laid out like `labeled`
      val: my/val                # optional; else val_fraction of each labeled class is held out (stratified)
      image_size: [64, 64]       # every image is resized to this (H, W)
      channels: 3                # 1 (grey) or 3 (RGB); modes (grey, RGB, RGBA, palette, 16-bit) are converted
      skip_bad: false            # true: leave unreadable files out, with a warning that names them

The training set is one `FolderData`: the labeled images first (class by class, paths sorted), then the
validation images when `val` is a folder of its own, then the unlabeled ones, which carry the label
`UNLABELED` (-1). The split's pools are these index ranges, not a random draw: `folder_split`.

Decoding runs once, in a thread pool (PIL releases the GIL while it decodes), with a progress bar; the result is
cached as a uint8 tensor file under ~/.cache/genssl/folders, keyed by the files' paths, sizes and
modification times and the decoding settings, and written atomically (genssl.fileio), so the next run with the
same files starts at once and an edited, added or removed file triggers a fresh decode.
(Over 350 lines on purpose: listing, decoding, caching and the errors that name every bad file are one reader.)
"""

from __future__ import annotations

import csv
import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from genssl.config import DataConfig, folder_image_size
from genssl.data.datasets import ImageData, cache_root, validate_images_labels
from genssl.data.split import Split
from genssl.fileio import CheckpointError, atomic_torch_save, safe_torch_load

UNLABELED = -1
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                              ".pbm", ".pnm"})
MAX_PIXELS = 1 << 26
"""Largest image decoded (64 Mpixel, e.g. 8192 x 8192): a bigger header is a damaged file or a decompression bomb."""
CACHE_VERSION = 1  # bump when decoding changes, so old caches are not reused
SHOW_BAD = 20      # unreadable files named in an error message (the count is always given)


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


# ---------------------------------------------------------------------------------------------- listing files

def is_image_file(path: str | Path) -> bool:
    name = os.path.basename(path)
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, sorted; hidden files and folders are skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath, f) for f in filenames if is_image_file(f)]
    return sorted(found)


def _natural_key(name: str):
    return (0, int(name), name) if name.lstrip("-").isdigit() else (1, 0, name)


def list_labeled(source: Path, key: str) -> tuple[list[Path], list[str]]:
    """(image paths, class names) of a labeled source: a folder of class folders, or a CSV of path,label rows
    (paths relative to the CSV's folder; a first row `path,label` is a header)."""
    if source.is_file():
        return _read_label_csv(source, key)
    if not source.is_dir():
        raise FileNotFoundError(f"data.{key}: {source} does not exist; give a folder with one subfolder per class "
                                f"or a CSV file of path,label rows")
    classes = sorted((p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: _natural_key(p.name))
    loose = sorted(p for p in source.iterdir() if p.is_file() and is_image_file(p))
    if loose:
        raise ValueError(f"data.{key}: {len(loose)} image file(s) lie directly in {source} (e.g. {loose[0].name}), "
                         f"outside any class folder, so they have no label; move them into "
                         f"{source}/<class name>/ (or into the unlabeled folder)")
    if not classes:
        raise ValueError(f"data.{key}: {source} has no class folders; put each class's images in "
                         f"{source}/<class name>/")
    paths, labels, empty = [], [], []
    for folder in classes:
        files = list_images(folder)
        if not files:
            empty.append(folder)
        paths += files
        labels += [folder.name] * len(files)
    if empty:
        raise ValueError(f"data.{key}: {len(empty)} class folder(s) hold no images: "
                         f"{', '.join(str(p) for p in empty)} (image files end in "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove the folder")
    return paths, labels


def _read_label_csv(path: Path, key: str) -> tuple[list[Path], list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [(i + 1, row) for i, row in enumerate(csv.reader(f)) if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"data.{key}: cannot read {path} as a CSV file of path,label rows: {e}") from e
    if rows and [c.strip().lower() for c in rows[0][1]] == ["path", "label"]:
        rows = rows[1:]
    bad = [n for n, row in rows if len(row) != 2 or not row[0].strip() or not row[1].strip()]
    if bad:
        raise ValueError(f"data.{key}: {path}: {len(bad)} row(s) are not `path,label` (line(s) "
                         f"{', '.join(map(str, bad[:10]))}{' ...' if len(bad) > 10 else ''})")
    if not rows:
        raise ValueError(f"data.{key}: {path} lists no images (expected rows of path,label)")
    paths = [(path.parent / row[0].strip()) for _, row in rows]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"data.{key}: {len(missing)} file(s) listed in {path} do not exist: "
                                f"{', '.join(missing[:SHOW_BAD])}{' ...' if len(missing) > SHOW_BAD else ''}")
    return paths, [row[1].strip() for _, row in rows]


# ---------------------------------------------------------------------------------------------- decoding

def decode_image(path: str | Path, size: tuple[int, int], channels: int) -> np.ndarray:
    """One image file -> (channels, H, W) uint8, resized to size = (H, W) (bilinear, antialiased) when it is not
    that size already. Grey, RGB, CMYK, 16-bit and float images are converted; transparent pixels (RGBA, LA,
    palette transparency) are composited over black; EXIF orientation is applied; an animation's first frame
    is used. Raises on any file PIL cannot fully decode."""
    with Image.open(path) as im:
        w, h = im.size
        if w * h > MAX_PIXELS or w <= 0 or h <= 0:
            raise ValueError(f"the image is {w}x{h} pixels, outside the 1..{MAX_PIXELS} pixels genssl decodes")
        im.load()
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # a damaged EXIF block: the pixels are fine, keep the stored orientation
            pass
        im = _convert(im, channels)
        if im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        array = np.asarray(im, dtype=np.uint8)
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


def _convert(im: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode -> "L" (channels=1) or "RGB" (channels=3)."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.asarray(im).astype(np.float64)
        if im.mode.startswith("I"):
            a = a / 257.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else a
        elif a.max(initial=0) <= 1.0:  # float images in [0, 1]
            a = a * 255.0
        im = Image.fromarray(np.clip(np.nan_to_num(a).round(), 0, 255).astype(np.uint8), "L")
    elif im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode in ("P", "L", "RGB")
                                                             and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode not in ("L", "RGB"):  # P, CMYK, YCbCr, LAB, HSV, RGBX, ...
        im = im.convert("RGB")
    target = "L" if channels == 1 else "RGB"
    return im if im.mode == target else im.convert(target)


def _decode_or_reason(path: Path, size, channels) -> np.ndarray | str:
    try:
        return decode_image(path, size, channels)
    except Exception as e:  # PIL raises a zoo of types on damaged files (OSError, SyntaxError, struct.error, ...)
        detail = str(e).splitlines()[0] if str(e) else "no detail"
        return f"{type(e).__name__}: {detail}"


def decode_files(paths: list[Path], size: tuple[int, int], channels: int, progress: bool = True,
                 desc: str = "decoding", workers: int | None = None) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """Decode `paths` in a thread pool: ((N_good, C, H, W) uint8 in path order, [(path, why)] of bad files)."""
    out = np.empty((len(paths), channels, *size), dtype=np.uint8)
    good = np.zeros(len(paths), dtype=bool)
    bad = []
    workers = workers or min(8, os.cpu_count() or 1)
    # PIL warns about some damaged-but-decodable files (corrupt EXIF, ...); the pixels are used either way,
    # and warnings from worker threads could not name their file, so they are silenced here.
    with warnings.catch_warnings(), ThreadPoolExecutor(workers) as pool, \
            tqdm(total=len(paths), desc=desc, disable=not progress, unit="img", dynamic_ncols=True,
                 leave=False) as bar:
        warnings.simplefilter("ignore")
        for i, result in enumerate(pool.map(lambda p: _decode_or_reason(p, size, channels), paths)):
            if isinstance(result, str):
                bad.append((str(paths[i]), result))
            else:
                out[i], good[i] = result, True
            bar.update(1)
    return torch.from_numpy(out[good] if bad else out), bad


def fingerprint(paths: list[Path], size: tuple[int, int], channels: int) -> str:
    """sha256 over the files' paths, sizes and modification times and the decoding settings."""
    h = hashlib.sha256(f"v{CACHE_VERSION} {size} {channels}\n".encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError as e:  # vanished or unreadable: part of the key, and reported by the decoder
            h.update(f"{p}\0{type(e).__name__}\n".encode())
    return h.hexdigest()


def folder_cache_dir() -> Path:
    return cache_root().parent / "folders"


def load_images(paths: list[Path], size: tuple[int, int], channels: int, progress: bool = True,
                desc: str = "decoding", cache: bool = True) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:
    """(images of the good files, their paths, [(path, why)] of the bad ones), from the cache when its key
    matches, else decoded and cached."""
    key = fingerprint(paths, size, channels)
    path = folder_cache_dir() / f"{key[:32]}.pt"
    if cache and path.is_file():
        try:
            saved = safe_torch_load(path)
            if saved.get("fingerprint") == key and saved["images"].shape[1:] == (channels, *size):
                return saved["images"], list(saved["paths"]), [tuple(b) for b in saved["bad"]]
        except (CheckpointError, KeyError, AttributeError, TypeError):
            pass  # a damaged or foreign cache file: decode again and replace it
    images, bad = decode_files(paths, size, channels, progress, desc)
    bad_set = {b[0] for b in bad}
    good = [str(p) for p in paths if str(p) not in bad_set]
    if cache:
        try:
            atomic_torch_save({"fingerprint": key, "images": images, "paths": good, "bad": [list(b) for b in bad]},
                              path)
        except OSError as e:  # a read-only home: decoding again next time is only slower
            warnings.warn(f"could not cache decoded images in {path}: {e}", RuntimeWarning, stacklevel=2)
    return images, good, bad


def _report_bad(bad: list[tuple[str, str]], key: str, skip_bad: bool, total: int) -> None:
    if not bad:
        return
    listing = "\n".join(f"  {p}: {why}" for p, why in bad[:SHOW_BAD])
    more = f"\n  ... and {len(bad) - SHOW_BAD} more" if len(bad) > SHOW_BAD else ""
    if not skip_bad:
        raise ValueError(f"data.{key}: {len(bad)} of {total} image file(s) cannot be read:\n{listing}{more}\n"
                         f"Fix or remove them, or set data.skip_bad: true to train without them")
    warnings.warn(f"data.{key}: skipped {len(bad)} of {total} unreadable image file(s) (data.skip_bad):\n"
                  f"{listing}{more}", UserWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------- the dataset

def resolve_path(d: DataConfig, key: str) -> Path:
    path = Path(getattr(d, key)).expanduser()
    return Path(d.root).expanduser() / path if d.root is not None and not path.is_absolute() else path


def _labeled_set(d: DataConfig, key: str, progress: bool, classes: list[str] | None = None):
    """(images, class-name per image, paths) of a labeled source, bad files reported; with `classes`, every
    class found must be one of them."""
    source = resolve_path(d, key)
    paths, names = list_labeled(source, key)
    if classes is not None:
        unknown = sorted(set(names) - set(classes), key=_natural_key)
        if unknown:
            raise ValueError(f"data.{key}: class(es) {', '.join(map(repr, unknown))} in {source} are not among the "
                             f"labeled classes ({', '.join(map(repr, classes))}); a model can only predict classes "
                             f"it was trained on: add labeled images of them or remove them from {key}")
    images, good, bad = load_images(paths, folder_image_size(d), d.channels, progress, f"decoding {key}")
    _report_bad(bad, key, d.skip_bad, len(paths))
    keep = set(good)
    kept = [n for p, n in zip(paths, names) if str(p) in keep]
    if classes is None:  # a class whose every file was unreadable is an empty class
        emptied = sorted(set(names) - set(kept), key=_natural_key)
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
    classes = sorted(set(lab_names), key=_natural_key)
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
    _report_bad(bad, "unlabeled", d.skip_bad, len(unl_paths))
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
