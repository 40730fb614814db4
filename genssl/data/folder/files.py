"""Listing a `dataset: folder` source: the image files under a folder (recursively, sorted, hidden ones skipped),
and a labeled source's (paths, class names), from a folder of class folders or a CSV file of path,label rows.
Every error names the source and what to change; `where` says which config key or call it came from."""

from __future__ import annotations

import csv
import os
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                              ".pbm", ".pnm"})
SHOW_BAD = 20      # bad files named in an error message (the count is always given)


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


def natural_key(name: str):
    """Sort key of class names: numbers in numeric order (2 before 10), before other names."""
    return (0, int(name), name) if name.lstrip("-").isdigit() else (1, 0, name)


def list_labeled(source: Path, where: str) -> tuple[list[Path], list[str]]:
    """(image paths, class names) of a labeled source: a folder of class folders, or a CSV of path,label rows
    (paths relative to the CSV's folder; a first row `path,label` is a header)."""
    if source.is_file():
        return _read_label_csv(source, where)
    if not source.is_dir():
        raise FileNotFoundError(f"{where}: {source} does not exist; give a folder with one subfolder per class "
                                f"or a CSV file of path,label rows")
    classes = sorted((p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: natural_key(p.name))
    loose = sorted(p for p in source.iterdir() if p.is_file() and is_image_file(p))
    if loose:
        raise ValueError(f"{where}: {len(loose)} image file(s) lie directly in {source} (e.g. {loose[0].name}), "
                         f"outside any class folder, so they have no label; move them into "
                         f"{source}/<class name>/ (or into the unlabeled folder)")
    if not classes:
        raise ValueError(f"{where}: {source} has no class folders; put each class's images in "
                         f"{source}/<class name>/")
    paths, labels, empty = [], [], []
    for folder in classes:
        files = list_images(folder)
        if not files:
            empty.append(folder)
        paths += files
        labels += [folder.name] * len(files)
    if empty:
        raise ValueError(f"{where}: {len(empty)} class folder(s) hold no images: "
                         f"{', '.join(str(p) for p in empty)} (image files end in "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove the folder")
    return paths, labels


def _read_label_csv(path: Path, where: str) -> tuple[list[Path], list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [(i + 1, row) for i, row in enumerate(csv.reader(f)) if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{where}: cannot read {path} as a CSV file of path,label rows: {e}") from e
    if rows and [c.strip().lower() for c in rows[0][1]] == ["path", "label"]:
        rows = rows[1:]
    bad = [n for n, row in rows if len(row) != 2 or not row[0].strip() or not row[1].strip()]
    if bad:
        raise ValueError(f"{where}: {path}: {len(bad)} row(s) are not `path,label` (line(s) "
                         f"{', '.join(map(str, bad[:10]))}{' ...' if len(bad) > 10 else ''})")
    if not rows:
        raise ValueError(f"{where}: {path} lists no images (expected rows of path,label)")
    paths = [(path.parent / row[0].strip()) for _, row in rows]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{where}: {len(missing)} file(s) listed in {path} do not exist: "
                                f"{', '.join(missing[:SHOW_BAD])}{' ...' if len(missing) > SHOW_BAD else ''}")
    return paths, [row[1].strip() for _, row in rows]
