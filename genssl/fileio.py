"""Crash-safe files and safe loading (the bottom layer every file a run writes or reads goes through).

Every file a run writes goes through `atomic_write_bytes`: a temporary file in the same folder, flushed and
fsynced, then renamed over the target, then the folder fsynced. A kill at any moment leaves the old file or
the new one, never a truncated one. Every load uses `torch.load(weights_only=True)`, so a file whose pickle
would run code is refused instead of executed.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint or exported file that cannot be used; the message names the file and why."""


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(text: str, path: str | Path) -> None:
    atomic_write_bytes(text.encode(), path)


def atomic_write_json(obj, path: str | Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def atomic_torch_save(obj, path: str | Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)  # serialize fully in memory first: a failure here never touches the old file
    atomic_write_bytes(buf.getvalue(), path)


def safe_torch_load(path: str | Path, map_location="cpu"):
    """torch.load with weights_only=True and errors that name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            # a raw pickle of another protocol draws a UserWarning before it is refused below; the error says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        detail = _unpickler_detail(str(e))
        found = re.search(r"GLOBAL (\S+)", detail)
        if found or "global" in detail.lower():  # the pickle names a function/class to import: code would run
            what = f"`{found.group(1)}`" if found else "a global"
            raise CheckpointError(
                f"{path}: refused to load: its pickle would import and call {what}, so loading it could run "
                f"code. Only tensors and plain containers are accepted; re-export trusted files as state_dicts. "
                f"(torch: {detail})"
            ) from e
        raise CheckpointError(f"{path}: corrupt or not a checkpoint (unreadable pickle: {detail})") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, UnicodeDecodeError, KeyError,
            IndexError, TypeError, AttributeError) as e:
        # torch's reader raises a zoo of types on damaged archives; all mean the same to the user
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from e


def _unpickler_detail(message: str) -> str:
    """The informative line of torch's weights_only error (its first lines are generic advice)."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if "WeightsUnpickler error" in ln:
            rest = ln.split("WeightsUnpickler error:", 1)[-1].strip()
            if not rest and i + 1 < len(lines):
                rest = lines[i + 1]
            return rest.split(". Please use")[0]
    return lines[0] if lines else "no detail"
