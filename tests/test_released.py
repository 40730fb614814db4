"""Released encoders (genssl.encoders.released): the registry matches the released files; the package's own copy is
used first, then the torch.hub cache, then a download (a local folder or a file:// URL) whose sha256 is checked;
offline with no copy, one error says where to put the files. And from a real `pip install` outside the checkout:
`genssl.load_encoder("fmnist-m1")` and `genssl downstream --encoder fmnist-m1`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
import yaml

import genssl.encoders.released as released
from genssl import load_encoder
from genssl.data.datasets import BUILTIN, candidate_roots
from genssl.encoders.format import SPEC_FILE, WEIGHTS_FILE
from genssl.encoders.load import list_released
from genssl.encoders.released import RELEASES, ReleaseNotFoundError, release_folder, sha256_file
from genssl.fileio import CheckpointError

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "checkpoints" / "released"  # where releases are written; the package links to it


@pytest.fixture
def no_package_copy(tmp_path, monkeypatch):
    """An installation without the package's copy, and an empty torch.hub cache."""
    monkeypatch.setattr(released, "PACKAGE_ROOT", tmp_path / "site-packages" / "released_files")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(released.URL_ENV, raising=False)
    return tmp_path / "torch" / "hub" / "genssl"


def test_registry_matches_the_released_files():
    assert list_released() == sorted(RELEASES) == ["fmnist-m1"]
    for name, release in RELEASES.items():
        for file, sha in release.files:
            assert sha256_file(SOURCE / name / file) == sha, f"{name}/{file}: re-run the release's hashes"
            assert sha256_file(released.PACKAGE_ROOT / name / file) == sha  # the package copy is the same file
        spec = yaml.safe_load((SOURCE / name / SPEC_FILE).read_text())
        assert spec["weights_sha256"] == release.sha256(WEIGHTS_FILE)
        assert release.data and release.accuracy and release.command.startswith("genssl train")
        assert (SOURCE / name / release.model_card).is_file()


def test_the_package_copy_is_used_first(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(released.URL_ENV, str(tmp_path / "nowhere"))  # never consulted
    assert release_folder("fmnist-m1") == released.PACKAGE_ROOT / "fmnist-m1"
    enc = load_encoder("fmnist-m1")
    assert enc.out_dim == 10 and enc.input_shape == (1, 28, 28) and enc.source["method"] == "vae_m1"


def test_offline_without_a_copy_one_error_says_where_to_put_it(no_package_copy):
    with pytest.raises(ReleaseNotFoundError) as e:
        load_encoder("fmnist-m1")
    msg = str(e.value)
    sha = RELEASES["fmnist-m1"].sha256(WEIGHTS_FILE)
    assert f"released encoder 'fmnist-m1' is not in this installation" in msg
    assert f"no download address is set (${released.URL_ENV})" in msg
    assert f"weights.pt (sha256 {sha})" in msg and f"in {no_package_copy / 'fmnist-m1'}/" in msg
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(ReleaseNotFoundError, match=r"no released encoder named 'fmnist-m9'; released: fmnist-m1"):
        release_folder("fmnist-m9")


@pytest.mark.parametrize("as_url", [False, True], ids=["folder", "file-url"])
def test_download_into_the_hub_cache_checks_the_hash(no_package_copy, tmp_path, monkeypatch, as_url):
    mirror = tmp_path / "mirror"
    shutil.copytree(SOURCE / "fmnist-m1", mirror / "fmnist-m1")
    monkeypatch.setenv(released.URL_ENV, mirror.as_uri() if as_url else str(mirror))
    enc = load_encoder("fmnist-m1")
    cached = no_package_copy / "fmnist-m1"
    assert enc.source["path"] == str(cached) and sha256_file(cached / WEIGHTS_FILE) == sha256_file(
        SOURCE / "fmnist-m1" / WEIGHTS_FILE)
    shutil.rmtree(mirror)  # now served from the cache, offline
    assert release_folder("fmnist-m1") == cached
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_encoder("fmnist-m1")(x), load_encoder(SOURCE / "fmnist-m1")(x))


def test_a_damaged_download_never_lands_in_the_cache(no_package_copy, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror" / "fmnist-m1"
    shutil.copytree(SOURCE / "fmnist-m1", mirror)
    data = bytearray((mirror / WEIGHTS_FILE).read_bytes())
    data[len(data) // 2] ^= 1
    (mirror / WEIGHTS_FILE).write_bytes(bytes(data))
    for base in (str(mirror.parent), mirror.parent.as_uri()):
        monkeypatch.setenv(released.URL_ENV, base)
        with pytest.raises(CheckpointError, match=r"weights.pt: .*sha256 .*(is not the release's|invalid hash)"):
            load_encoder("fmnist-m1")
        assert not (no_package_copy / "fmnist-m1" / WEIGHTS_FILE).exists()


def test_a_damaged_cache_is_fetched_again_and_a_damaged_install_is_an_error(no_package_copy, tmp_path,
                                                                             monkeypatch):
    cached = no_package_copy / "fmnist-m1"
    shutil.copytree(SOURCE / "fmnist-m1", cached)
    (cached / WEIGHTS_FILE).write_bytes(b"junk")
    monkeypatch.setenv(released.URL_ENV, str(SOURCE))
    assert release_folder("fmnist-m1") == cached and sha256_file(cached / WEIGHTS_FILE) == \
        RELEASES["fmnist-m1"].sha256(WEIGHTS_FILE)
    installed = released.PACKAGE_ROOT / "fmnist-m1"
    shutil.copytree(SOURCE / "fmnist-m1", installed)
    (installed / SPEC_FILE).write_text((installed / SPEC_FILE).read_text() + "\n# edited\n")
    with pytest.raises(CheckpointError, match=r"encoder.yaml: sha256 .* the installed copy of 'fmnist-m1' is "
                                              r"damaged; reinstall genssl"):
        load_encoder("fmnist-m1")


def test_a_released_root_still_names_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"released: none in "):
        load_encoder("fmnist-m1", released_root=tmp_path)
    assert load_encoder("fmnist-m1", released_root=SOURCE).out_dim == 10


# ------------------------------------------------------------------------------------------------ pip install

def _data_root() -> Path | None:
    """The first root of the data search (README, "Data": $GENSSL_DATA, the cache, /usr/share/datasets) that holds
    Fashion-MNIST in one of its folder layouts."""
    fmnist = BUILTIN["fashion_mnist"]
    for root in candidate_roots(None):
        if any((root / sub).is_dir() and fmnist.reader(root / sub, False) is not None for sub in fmnist.folders):
            return root
    return None


@pytest.mark.skipif(shutil.which("git") is None, reason="copies the checkout's tracked files with git")
def test_pip_install_outside_the_checkout(tmp_path):
    """Build and install genssl into a fresh venv (torch and the other dependencies come from this venv's
    site-packages, appended through a .pth file, so nothing is downloaded), then use the release from a
    folder that is not the checkout."""
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for f in filter(None, files):
        path = REPO / f
        if path.is_symlink() or path.is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink():
                os.symlink(os.readlink(path), src / f)
            else:
                shutil.copy2(path, src / f)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(src)],
                   check=True, capture_output=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")  # torch & co., after the venv's own
    subprocess.run(pip + ["--python", str(python), "install", "--no-deps", "-q",
                          str(next(wheels.glob("genssl-*.whl")))], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", released.URL_ENV)}
    env |= {"TORCH_HOME": str(tmp_path / "torch"), "OMP_NUM_THREADS": "1"}
    probe = ("import genssl, torch; enc = genssl.load_encoder('fmnist-m1'); "
             "print(genssl.__file__); print(enc.source['path']); print(enc(torch.rand(2, 1, 28, 28)).shape)")
    out = subprocess.run([str(python), "-c", probe], cwd=elsewhere, env=env, check=True, capture_output=True,
                         text=True).stdout.splitlines()
    assert out[0].startswith(str(site)) and str(REPO) not in out[0], out  # the installed package, not the checkout
    assert out[1] == str(site / "genssl" / "encoders" / "released_files" / "fmnist-m1") and out[2] == \
        "torch.Size([2, 10])"
    data = _data_root()
    if data is None:
        pytest.skip("Fashion-MNIST not found (set GENSSL_DATA) for the downstream half")
    result = subprocess.run([str(venv / "bin" / "genssl"), "downstream", "--encoder", "fmnist-m1", "--n-labels",
                             "100", "--torch-threads", "1", "--out", "ds.json", "--no-download"],
                            cwd=elsewhere, env=env | {"GENSSL_DATA": str(data)}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads((elsewhere / "ds.json").read_text())["runs"]
    linear = [r for r in runs if r["kind"] == "linear"]
    assert len(linear) == 1 and linear[0]["n_labels"] == 100
    assert linear[0]["test_acc"] == pytest.approx(0.695, abs=0.01), runs  # the model card: 69.5% for seed 0
