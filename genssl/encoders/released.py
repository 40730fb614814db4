"""Released encoders: a small registry of published weights, found in the installed package, in the torch.hub
cache, or downloaded into that cache, always checked against their sha256.

    enc = genssl.load_encoder("fmnist-m1")

Where a release's files are looked for, in order:
1. the package's own copy, `genssl/encoders/released_files/<name>/` (package data; in the repository a link to
   checkpoints/released/, where `genssl export` writes releases),
2. the torch.hub cache, `<torch.hub.get_dir()>/genssl/<name>/` ($TORCH_HOME/hub/genssl/<name>/),
3. a download into that cache from $GENSSL_RELEASES_URL (or the release's own `url`): a base URL (https://...,
   file://...) or a local folder that holds `<name>/<file>`; each file through torch.hub.download_url_to_file,
   which checks its sha256 before the file lands in the cache.
Offline and with no copy, the one error says which files to put where.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from genssl.encoders.format import SPEC_FILE, WEIGHTS_FILE, Encoder, load_exported
from genssl.fileio import CheckpointError

PACKAGE_ROOT = Path(__file__).resolve().parent / "released_files"
URL_ENV = "GENSSL_RELEASES_URL"


class ReleaseNotFoundError(FileNotFoundError):
    """A released encoder that is neither installed, cached, nor downloadable; the message says where to put it."""


@dataclass(frozen=True)
class Release:
    """One released encoder and its model card's essentials."""
    name: str
    files: tuple[tuple[str, str], ...]
    """(file name, sha256) of every file load_encoder reads: the weights and encoder.yaml."""
    data: str
    """What it was trained on."""
    accuracy: str
    """Its headline downstream figure, as measured."""
    command: str
    """The commands that reproduce it."""
    model_card: str = "MODEL_CARD.md"
    url: str | None = None
    """Where the files are published (a base URL or folder holding <name>/<file>); None: not yet online."""

    def sha256(self, file: str) -> str:
        return dict(self.files)[file]


RELEASES: dict[str, Release] = {r.name: r for r in [
    Release(
        name="fmnist-m1",
        files=((WEIGHTS_FILE, "06ef555237c760e33cf1e510bc8f7268c3d220c25385582ee4f94f39e45efc4d"),
               (SPEC_FILE, "c914061fb80cbbc39dda19ae3e1add3600d40a6c45fa1020b2178591805cc350")),
        data="Fashion-MNIST training set minus the 5,000-image validation split of seed 0 (55,000 images, no labels)",
        accuracy="Fashion-MNIST test: 72.3% +- 1.7 with an MLP readout on 100 labels, 78.6% +- 0.5 on 1000 "
                 "(3 labeled-subset seeds; linear: 71.0% / 76.0%)",
        command="genssl train experiments/fmnist_vae_m1.yaml --train.seed=0 --train.threads=1 "
                "--out_dir=/tmp/release_runs --name=fmnist-m1-s0 && genssl export /tmp/release_runs/fmnist-m1-s0 "
                "--force --out checkpoints/released/fmnist-m1",
    ),
]}


def get_release(name: str) -> Release:
    if name not in RELEASES:
        raise ReleaseNotFoundError(f"no released encoder named {name!r}; released: {', '.join(sorted(RELEASES))}")
    return RELEASES[name]


def cache_dir() -> Path:
    """Where downloaded releases are kept: the torch.hub cache's genssl folder."""
    return Path(torch.hub.get_dir()) / "genssl"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _holds(folder: Path, release: Release, installed: bool) -> bool:
    """Whether `folder` holds every file of the release with its sha256. An installed copy that differs is
    an error (a damaged installation); a cached one is simply fetched again."""
    if not all((folder / f).is_file() for f, _ in release.files):
        return False
    for file, want in release.files:
        got = sha256_file(folder / file)
        if got != want:
            if installed:
                raise CheckpointError(f"{folder / file}: sha256 {got[:12]}... is not the release's {want[:12]}...: "
                                      f"the installed copy of {release.name!r} is damaged; reinstall genssl")
            return False
    return True


def release_folder(name: str, url: str | None = None, progress: bool = False) -> Path:
    """A folder holding release `name`'s checked files: the package's copy, the cache, or a fresh download."""
    release = get_release(name)
    if _holds(PACKAGE_ROOT / name, release, installed=True):
        return PACKAGE_ROOT / name
    cached = cache_dir() / name
    if _holds(cached, release, installed=False):
        return cached
    base = url or os.environ.get(URL_ENV) or release.url
    if not base:
        raise ReleaseNotFoundError(_missing_message(release, cached, f"no download address is set (${URL_ENV})"))
    try:
        for file, sha in release.files:
            _fetch(_join(base, name, file), cached / file, sha, progress)
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError; a hash mismatch a RuntimeError
        if isinstance(e, CheckpointError):
            raise
        raise ReleaseNotFoundError(_missing_message(release, cached, f"downloading from {base} failed: "
                                                                     f"{type(e).__name__}: {e}")) from e
    return cached


def load_released(name: str, device: str | torch.device = "cpu", url: str | None = None) -> Encoder:
    return load_exported(release_folder(name, url), device)


def _is_url(text: str) -> bool:
    return urlparse(text).scheme in ("http", "https", "ftp", "file")


def _join(base: str, name: str, file: str) -> str:
    return f"{base.rstrip('/')}/{name}/{file}" if _is_url(base) else str(Path(base).expanduser() / name / file)


def _fetch(source: str, dest: Path, sha256: str, progress: bool) -> None:
    """Download (a URL, torch.hub.download_url_to_file) or copy (a local path) `source` to `dest`; the sha256 is
    checked before the file replaces anything."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if _is_url(source):
        try:
            torch.hub.download_url_to_file(source, str(dest), hash_prefix=sha256, progress=progress)
        except RuntimeError as e:
            if "invalid hash value" in str(e):
                raise CheckpointError(f"{source}: the download's sha256 is not the release's ({e})") from e
            raise
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        got = sha256_file(Path(tmp))
        if got != sha256:
            raise CheckpointError(f"{source}: sha256 {got[:12]}... is not the release's {sha256[:12]}...; the file "
                                  f"is damaged or another version")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _missing_message(release: Release, cached: Path, why: str) -> str:
    files = ", ".join(f"{f} (sha256 {sha})" for f, sha in release.files)
    return (f"released encoder {release.name!r} is not in this installation ({PACKAGE_ROOT / release.name}) nor "
            f"in the torch.hub cache, and {why}. Put its files {files} in {cached}/, or set ${URL_ENV} to a URL "
            f"or folder that holds {release.name}/<file> (e.g. a clone's checkpoints/released)")
