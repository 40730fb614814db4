"""Dataset readers on small files written in each real layout; root resolution; user data; every bad file
gives a ValueError-family error naming it. Nothing here touches the network or the shared data folder."""

import gzip
import pickle
import urllib.error

import numpy as np
import pytest
import torch

import genssl.data.datasets as ds
from datafiles import write_cifar10, write_idx, write_idx_dataset, write_svhn
from genssl.data.datasets import DatasetNotFoundError, from_arrays, load_dataset, read_idx
from genssl.data.folder import load_image_folder


@pytest.fixture(autouse=True)
def isolated_roots(tmp_path, monkeypatch):
    """No real data anywhere: empty cache, empty Debian folder, no $GENSSL_DATA, and downloads that fail."""
    monkeypatch.delenv("GENSSL_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(ds, "DEBIAN_ROOT", tmp_path / "debian")

    def offline(name, spec):
        raise AssertionError("a test tried to download")

    monkeypatch.setattr(ds, "_download", offline)


@pytest.mark.parametrize("dataset, sub, gz", [
    ("fashion_mnist", "fashion-mnist", True),
    ("fashion_mnist", "fashion-mnist", False),
    ("fashion_mnist", "FashionMNIST/raw", True),   # torchvision's layout
    ("mnist", "MNIST/raw", True),
    ("mnist", "mnist", False),
])
def test_idx_layouts(tmp_path, dataset, sub, gz):
    images, labels = write_idx_dataset(tmp_path / "root" / sub, n_train=50, n_test=20, gz=gz)
    train, test = load_dataset(dataset, tmp_path / "root", download=False)
    assert train.images.shape == (50, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (20, 1, 28, 28) and train.num_classes == 10
    assert np.array_equal(train.images[:, 0].numpy(), images)
    assert np.array_equal(train.labels.numpy(), labels.astype(np.int64))


def test_explicit_root_may_point_at_the_files(tmp_path):
    write_idx_dataset(tmp_path / "files", n_train=30, n_test=10)
    train, _ = load_dataset("fashion_mnist", tmp_path / "files", download=False)
    assert len(train) == 30


def test_cifar10_python_batches(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=20)
    train, test = load_dataset("cifar10", tmp_path, download=False)
    assert train.images.shape == (100, 3, 32, 32) and test.images.shape == (20, 3, 32, 32)
    assert train.labels.tolist()[:12] == list(range(10)) + [0, 1]


def test_cifar_batch_with_code_is_refused(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=10)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w')",)

    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(ValueError, match="data_batch_3: not a readable CIFAR batch: refusing to load builtins.exec"):
        load_dataset("cifar10", tmp_path, download=False)
    assert not marker.exists()


def test_svhn_mat_files(tmp_path):
    write_svhn(tmp_path / "svhn", n=30)
    train, test = load_dataset("svhn", tmp_path, download=False)
    assert train.images.shape == (30, 3, 32, 32) and len(test) == 30
    assert train.labels[:10].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]  # label 10 means the digit 0


def test_debian_location(tmp_path):
    write_idx_dataset(tmp_path / "debian" / "fashion-mnist", n_train=40, n_test=10)
    train, _ = load_dataset("fashion_mnist", download=False)
    assert len(train) == 40


def test_root_resolution_order(tmp_path, monkeypatch):
    # a different size in each place tells which one was read
    write_idx_dataset(tmp_path / "explicit" / "fashion-mnist", n_train=11, n_test=5)
    write_idx_dataset(tmp_path / "env" / "fashion-mnist", n_train=12, n_test=5)
    write_idx_dataset(tmp_path / "cache" / "genssl" / "data" / "fashion-mnist", n_train=13, n_test=5)
    write_idx_dataset(tmp_path / "debian" / "fashion-mnist", n_train=14, n_test=5)
    monkeypatch.setenv("GENSSL_DATA", str(tmp_path / "env"))
    assert len(load_dataset("fashion_mnist", tmp_path / "explicit", download=False)[0]) == 11
    assert len(load_dataset("fashion_mnist", None, download=False)[0]) == 12
    monkeypatch.delenv("GENSSL_DATA")
    assert len(load_dataset("fashion_mnist", None, download=False)[0]) == 13
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    assert len(load_dataset("fashion_mnist", None, download=False)[0]) == 14
    # an explicit root without the dataset falls through to the others
    assert len(load_dataset("fashion_mnist", tmp_path / "nowhere", download=False)[0]) == 14


def test_missing_dataset_offline_download_disabled(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion_mnist", tmp_path / "mine", download=False)
    msg = str(err.value)
    assert "'fashion_mnist' not found" in msg and str(tmp_path / "mine") in msg and "download disabled" in msg
    assert "GENSSL_DATA" in msg and str(tmp_path / "debian") in msg


def test_missing_dataset_download_fails(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    monkeypatch.undo()  # restore the real _download, then make its network call fail
    monkeypatch.delenv("GENSSL_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(ds, "DEBIAN_ROOT", tmp_path / "debian")

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tvd, "MNIST", no_network)
    with pytest.raises(DatasetNotFoundError, match=r"Download: failed \(URLError.*name resolution") as err:
        load_dataset("mnist", download=True)
    assert "GENSSL_DATA" in str(err.value)
    # a "successful" download that leaves no files is also reported
    monkeypatch.setattr(tvd, "MNIST", lambda *a, **k: None)
    with pytest.raises(DatasetNotFoundError, match="download finished but no files appeared"):
        load_dataset("mnist", download=True)


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown dataset 'fmnist'; built-in datasets: cifar10, fashion_mnist, mnist"):
        load_dataset("fmnist")


def test_train_files_without_test_files(tmp_path):
    write_idx_dataset(tmp_path / "fashion-mnist", n_train=20, n_test=5)
    for f in (tmp_path / "fashion-mnist").glob("t10k-*"):
        f.unlink()
    with pytest.raises(DatasetNotFoundError, match="found training files in .* but not the test files"):
        load_dataset("fashion_mnist", tmp_path, download=False)


# ---------------------------------------------------------------- damaged files

def _break(folder, how):
    img = folder / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(img.read_bytes())
    if how == "truncated_payload":
        img.write_bytes(gzip.compress(raw[:-100]))
    elif how == "bad_magic":
        img.write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + raw[4:]))
    elif how == "truncated_header":
        img.write_bytes(gzip.compress(raw[:9]))
    elif how == "not_gzip":
        img.write_bytes(raw)  # raw IDX bytes under a .gz name
    elif how == "truncated_gzip":
        img.write_bytes(img.read_bytes()[:200])
    elif how == "empty":
        img.write_bytes(b"")
    elif how == "count_mismatch":
        write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
    elif how == "label_out_of_range":
        write_idx(folder / "train-labels-idx1-ubyte.gz", np.full(30, 12, np.uint8))
    elif how == "images_not_3d":
        write_idx(img, np.zeros((30, 784), np.uint8))
    return img


@pytest.mark.parametrize("how, match", [
    ("truncated_payload", r"corrupt or truncated: header says \(30, 28, 28\) \(23520 bytes\) but the file holds 23420"),
    ("bad_magic", "not an unsigned-byte IDX file"),
    ("truncated_header", "IDX header truncated"),
    ("not_gzip", "cannot read .*Not a gzipped file"),
    ("truncated_gzip", "cannot read .*corrupt or truncated"),
    ("empty", r"not an IDX file \(only 0 bytes\)"),
    ("count_mismatch", "30 images in train-images-idx3-ubyte.gz but 7 labels"),
    ("label_out_of_range", r"labels must be in \[0, 9\]; 30 are not, e.g. index 0 has label 12"),
    ("images_not_3d", r"expected \(N, H, W\) images"),
])
def test_damaged_idx_files(tmp_path, how, match):
    write_idx_dataset(tmp_path / "fashion-mnist", n_train=30, n_test=10)
    _break(tmp_path / "fashion-mnist", how)
    with pytest.raises(ValueError, match=match) as err:
        load_dataset("fashion_mnist", tmp_path, download=False)
    assert "fashion" in str(err.value)  # the message names the file or folder


def test_read_idx_raw_and_gz_agree(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.idx", a)), a)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.idx.gz", a)), a)


# ---------------------------------------------------------------- user data

def test_from_arrays_layouts():
    rng = np.random.default_rng(0)
    y = np.arange(12) % 3
    a = from_arrays(rng.integers(0, 256, (12, 8, 8), dtype=np.uint8), y)
    assert a.images.shape == (12, 1, 8, 8) and a.num_classes == 3
    b = from_arrays(rng.random((12, 8, 8, 3)), y, num_classes=4)  # channels-last float
    assert b.images.shape == (12, 3, 8, 8) and b.images.dtype == torch.uint8 and b.num_classes == 4
    c = from_arrays(torch.rand(12, 3, 8, 8), torch.tensor(y))
    assert c.images.shape == (12, 3, 8, 8)
    f = torch.tensor([[0.0, 1.0]]).expand(12, 2).reshape(12, 1, 1, 2)
    assert from_arrays(f, y).images[0, 0, 0].tolist() == [0, 255]


@pytest.mark.parametrize("images, labels, kwargs, match", [
    (np.zeros((5, 8, 8)), np.zeros(4), {}, "5 images but 4 labels"),
    (np.zeros((4, 8, 8)), [0, 1, 5, 1], {"num_classes": 3}, r"labels must be in \[0, 2\]; 1 are not, e.g. index 2"),
    (np.zeros((4, 8, 8)), [0, -1, 0, 1], {}, "index 1 has label -1"),
    (np.zeros((4, 8, 8)), [0, 1, 0.5, 1], {}, r"labels must be integers; 1 are not .* at indices \[2\]"),
    (np.zeros((4, 8, 8)), [0, 0, 0, 0], {}, "every label is 0, so the labels name only one class"),
    (np.zeros((4, 8, 8)), [0, 0, 0, 0], {"num_classes": 1}, "need an integer num_classes >= 2, got 1"),
    (np.zeros((4, 2, 8, 8)), [0, 1, 0, 1], {}, "1 or 3 channels"),
    (np.zeros((4, 8)), [0, 1, 0, 1], {}, r"shape \(N, H, W\) or \(N, C, H, W\)"),
    (np.full((4, 8, 8), 2.0), [0, 1, 0, 1], {}, r"float images must lie in \[0, 1\]"),
    (np.full((4, 8, 8), 300), [0, 1, 0, 1], {}, r"integer images must lie in \[0, 255\]"),
    (np.zeros((0, 8, 8)), np.zeros(0, np.int64), {}, "empty"),
    (np.array([["a"]]), [0], {}, "images must be numeric"),
])
def test_from_arrays_rejects(images, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        from_arrays(images, labels, **kwargs)


def test_nan_and_inf_images_rejected_naming_indices():
    x = np.random.default_rng(0).random((20, 8, 8))
    x[3, 1, 1] = np.nan
    x[17, 0, 5] = np.inf
    with pytest.raises(ValueError, match=r"2 images contain NaN or inf, at indices \[3, 17\]"):
        from_arrays(x, np.arange(20) % 2)


def test_image_folder(tmp_path, monkeypatch):
    """genssl.load_image_folder is the `dataset: folder` reader for one labeled folder: resized, converted, cached."""
    from PIL import Image

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    rng = np.random.default_rng(0)
    for cls, n in (("cat", 3), ("ant", 2)):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    data = load_image_folder(tmp_path / "imgs", progress=False)
    assert data.images.shape == (5, 3, 10, 12) and data.num_classes == 2  # the first image's size and mode
    assert data.labels.tolist() == [0, 0, 1, 1, 1] and data.class_names == ("ant", "cat")  # classes in sorted order
    assert data.paths[0].endswith("ant/0.png") and len(list((tmp_path / "cache").rglob("*.pt"))) == 1
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "imgs" / "cat" / "odd.png")  # another size, grey
    data = load_image_folder(tmp_path / "imgs", image_size=8, channels=1, progress=False)
    assert data.images.shape == (6, 1, 8, 8) and data.labels.tolist() == [0, 0, 1, 1, 1, 1]
    (tmp_path / "imgs" / "cat" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"(?s)1 of 7 image file\(s\) cannot be read:\n.*bad.png.*set skip_bad=True"):
        load_image_folder(tmp_path / "imgs", progress=False)
    with pytest.warns(UserWarning, match="skipped 1 of 7"):
        assert len(load_image_folder(tmp_path / "imgs", skip_bad=True, progress=False).labels) == 6
    with pytest.raises(FileNotFoundError, match="missing does not exist"):
        load_image_folder(tmp_path / "missing")
