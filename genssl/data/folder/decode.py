"""Decoding image files into uint8 arrays: any mode PIL reads (grey, RGB, RGBA, palette, CMYK, 16-bit, float)
converted to 1 or 3 channels, resized to one size, in a thread pool (PIL releases the GIL while it decodes) with a
progress bar; a file that cannot be decoded is reported with the reason, never raised from the pool."""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

MAX_PIXELS = 1 << 26
"""Largest image decoded (64 Mpixel, e.g. 8192 x 8192): a bigger header is a damaged file or a decompression bomb."""


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
