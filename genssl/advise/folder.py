"""What `genssl advise` reads of the user's data: the labeled images (labeled/, plus val/ where it exists: every
label the user has), the unlabeled folder, and the image size and channels the runs use. A test folder is never
listed, opened or decoded: with no test set assumed, every estimate comes from the labeled images.

DATA is a folder in genssl's folder layout::

    DATA/labeled/<class>/...   labeled images, one folder per class (or a CSV of path,label rows: see a config)
    DATA/val/<class>/...       optional: more labeled images (advise pools them with labeled/)
    DATA/unlabeled/...         any tree of images without labels
    DATA/test/...              optional, and ignored: advise never reads it

or a run config (YAML) whose `data:` is a `dataset: folder` section; its labeled, val and unlabeled sources are
read, its test source is not. Each problem that stops advice (one class, too few labels per class for a held-out
split, no unlabeled images) is an `AdviseError` that says what is missing and what to do.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from genssl.config import ConfigError, load_yaml
from genssl.data.folder import list_images, list_labeled
from genssl.data.folder.files import IMAGE_EXTENSIONS, natural_key

MIN_PER_CLASS = 3
"""Labels a class needs: one held out to score, one to pick the weights on, one to train on."""
NATIVE_MAX_SIDE = 32
"""Images up to this size train at their own size; larger ones are resized to DEFAULT_SIDE x DEFAULT_SIDE."""
DEFAULT_SIDE = 32


class AdviseError(ValueError):
    """The data or the budget cannot give advice; the message says what is missing and what to do."""


@dataclass
class UserData:
    """The labeled images (path, class name) in a fixed order, the unlabeled folder and the image settings."""
    source: str                         # DATA as given
    paths: list[Path]                   # every labeled image: labeled/ then val/, each sorted
    labels: list[str]                   # class name of each
    classes: list[str]                  # natural order, as genssl's folder reader orders them
    unlabeled: Path
    n_unlabeled: int
    image_size: tuple[int, int]
    channels: int
    read: list[str] = field(default_factory=list)     # the sources read, for the plan
    ignored: list[str] = field(default_factory=list)  # sources present but never read (test/)

    def per_class(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {c: counts[c] for c in self.classes}


def read_user_data(data: str | Path, image_size: int | None = None) -> UserData:
    """The user's labeled and unlabeled images, checked; see the module docstring for what DATA may be."""
    source = Path(data).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"{data} does not exist; give a folder with labeled/<class>/ and unlabeled/ "
                                f"subfolders (or a run config with a `dataset: folder` data section)")
    if source.is_file():
        labeled, val, unlabeled, test, size, channels = _from_config(source)
    else:
        labeled, val, unlabeled, test = source / "labeled", source / "val", source / "unlabeled", source / "test"
        size, channels = None, None
        if not labeled.exists():
            raise AdviseError(f"{source} has no labeled/ folder. advise reads genssl's folder layout: "
                              f"{source}/labeled/<class>/ (your labeled images, one folder per class) and "
                              f"{source}/unlabeled/ (images without labels); add those folders")
        val = val if val.exists() else None
    paths, labels = list_labeled(labeled, "labeled")
    read = [str(labeled)]
    if val is not None:
        val_paths, val_labels = list_labeled(val, "val")
        paths, labels = paths + val_paths, labels + val_labels
        read.append(str(val))
    classes = sorted(set(labels), key=natural_key)
    if len(classes) < 2:
        raise AdviseError(f"{labeled} has a single class ({classes[0]!r}): advise compares classifiers, and a "
                          f"classifier needs at least 2 classes. Add a folder of labeled images for every other "
                          f"class ({labeled}/<class name>/)")
    counts = Counter(labels)
    short = [c for c in classes if counts[c] < MIN_PER_CLASS]
    if short:
        listing = ", ".join(f"{c!r} ({counts[c]})" for c in short[:20])
        raise AdviseError(
            f"too few labels for a held-out split: {len(short)} class(es) have fewer than {MIN_PER_CLASS} labeled "
            f"images: {listing}. advise scores every method on labeled images it held out of training, and picks "
            f"each run's weights on others, so every class needs at least {MIN_PER_CLASS} (1 held out, 1 to pick "
            f"the weights, 1 to train on), and 10 or more for an estimate worth having. Add labeled images of "
            f"those classes (in {labeled}/<class>/" + (f" or {val}/<class>/" if val is not None else "") + ")")
    if unlabeled is None or not unlabeled.is_dir():
        raise AdviseError(f"no unlabeled folder ({unlabeled or 'none given'}): semi-supervised learning adds "
                          f"images without labels, so with none there is nothing to compare; put your unlabeled "
                          f"images in {unlabeled or 'an unlabeled/ folder'} (any tree of image files), or train the "
                          f"supervised baseline alone (experiments/own_data_supervised.yaml)")
    claimed = {p.resolve() for p in paths}
    n_unlabeled = sum(1 for p in list_images(unlabeled) if p.resolve() not in claimed)
    if n_unlabeled == 0:
        raise AdviseError(f"no unlabeled images in {unlabeled} (image files end in "
                          f"{', '.join(sorted(IMAGE_EXTENSIONS))}; labeled files found there do not count): "
                          f"semi-supervised learning needs images without labels; add them, or train the "
                          f"supervised baseline alone (experiments/own_data_supervised.yaml)")
    if test is not None and _inside(test, unlabeled):
        raise AdviseError(f"the test source {test} lies inside the unlabeled folder {unlabeled}: its images would "
                          f"train the models; move it out of {unlabeled}")
    if size is None or channels is None:
        size, channels = _image_settings(paths[0], image_size, size, channels)
    ignored = [str(test)] if test is not None and test.exists() else []
    return UserData(str(data), paths, labels, classes, unlabeled, n_unlabeled, size, channels, read, ignored)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _from_config(path: Path):
    """(labeled, val, unlabeled, test, image_size, channels) of a run config's `dataset: folder` section."""
    raw = load_yaml(path)
    data = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(data, dict) or data.get("dataset") != "folder":
        raise ConfigError(f"{path}: advise reads image folders: give a folder, or a config whose data section is "
                          f"`dataset: folder` (labeled, unlabeled, image_size). For a built-in dataset, write it out "
                          f"as folders first (experiments/export_digits.py shows how)")
    root = Path(data["root"]).expanduser() if data.get("root") else None

    def where(key):
        if not data.get(key):
            return None
        p = Path(str(data[key])).expanduser()
        return root / p if root is not None and not p.is_absolute() else p

    if where("labeled") is None:
        raise ConfigError(f"{path}: data.labeled is missing; name the folder of labeled class folders")
    size = data.get("image_size")
    if size is not None:
        size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return where("labeled"), where("val"), where("unlabeled"), where("test"), size, data.get("channels")


def _image_settings(first: Path, side: int | None, size, channels) -> tuple[tuple[int, int], int]:
    """(H, W), channels: a given size and channels win; else the first labeled image's own size when no side
    exceeds NATIVE_MAX_SIDE (DEFAULT_SIDE square otherwise), and grey (1) for grey images, else RGB (3)."""
    with Image.open(first) as im:
        w, h = im.size
        grey = im.mode in ("1", "L", "LA", "I", "F") or im.mode.startswith("I;16")
    if size is None:
        if side is not None:
            size = (side, side)
        else:
            size = (h, w) if max(h, w) <= NATIVE_MAX_SIDE else (DEFAULT_SIDE, DEFAULT_SIDE)
    return size, channels if channels is not None else (1 if grey else 3)
