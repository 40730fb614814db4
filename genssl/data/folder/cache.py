"""The cache of decoded folders: a uint8 tensor file under ~/.cache/genssl/folders, keyed by the files' paths,
sizes and modification times and the decoding settings, written atomically (genssl.fileio), so the next run with
the same files starts at once and an edited, added or removed file triggers a fresh decode."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch

from genssl.data.datasets import cache_root
from genssl.data.folder.decode import decode_files
from genssl.fileio import CheckpointError, atomic_torch_save, safe_torch_load

CACHE_VERSION = 1  # bump when decoding changes, so old caches are not reused


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
