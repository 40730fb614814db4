"""`dataset: folder` (genssl.data.folder, genssl.data.source): listing, decoding and converting real image files,
the cache, the split, every error a user's folders can cause (each message names the problem), a fuzzed
decoder, and architectures on other image sizes."""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import genssl.data.folder.decode as decode_mod
import genssl.training.trainer as trainer_mod
from genssl.config import ConfigError, DataConfig, build_run_config, dump_yaml, load_run_config
from genssl.data.folder import UNLABELED, FolderData, decode_image, folder_split, load_folder_data
from genssl.data.source import class_names, config_image_shape, run_split
from genssl.data.spec import DataSpec
from genssl.methods import create_method
from imagefiles import class_image, save, write_class_folders, write_dataset, write_unlabeled


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im)


def data_cfg(**data) -> DataConfig:
    return build_run_config({"method": "supervised", "data": data}).data


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path / "ds")


# ------------------------------------------------------------------------------------------------ config

def test_config_requires_the_folder_keys_and_refuses_them_elsewhere():
    with pytest.raises(ConfigError, match=r"dataset: folder needs data.labeled, data.unlabeled, data.test, "
                                          r"data.image_size"):
        data_cfg(dataset="folder")
    with pytest.raises(ConfigError, match=r"data.labeled is a key of `dataset: folder`.*data.dataset is "
                                          r"'fashion_mnist'"):
        data_cfg(labeled="x")
    base = {"dataset": "folder", "labeled": "a", "unlabeled": "b", "test": "c", "image_size": [8, 8]}
    with pytest.raises(ConfigError, match=r"data.channels: 2 is not one of 1 \(grey\), 3 \(RGB\)"):
        data_cfg(**base, channels=2)
    with pytest.raises(ConfigError, match=r"data.image_size: expected \[H, W\]"):
        data_cfg(**{**base, "image_size": [8, 8, 3]})
    with pytest.raises(ConfigError, match=r"data.image_size: each side must be in \[1, 4096\]"):
        data_cfg(**{**base, "image_size": [0, 8]})
    with pytest.raises(ConfigError, match=r"data.val_fraction must be in \(0, 1\)"):
        data_cfg(**base, val_fraction=1.0)
    assert data_cfg(**{**base, "image_size": 12}).image_size == 12
    assert config_image_shape(data_cfg(**{**base, "image_size": 12}, channels=1)) == (1, 12, 12)


def test_folder_config_round_trips_through_yaml(tmp_path, dataset):
    cfg = build_run_config({"method": "supervised", "data": {**dataset, "val_fraction": 0.4, "skip_bad": True}})
    path = tmp_path / "cfg.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_run_config(path).to_dict() == cfg.to_dict()


# ------------------------------------------------------------------------------------------------ loading

def test_load_layout_labels_names_and_unlabeled(dataset):
    d = data_cfg(**dataset)
    train, test = load_folder_data(d, progress=False)
    assert isinstance(train, FolderData) and train.class_names == ("cat", "dog") and train.num_classes == 2
    assert train.images.shape == (10 + 12, 1, 16, 16) and train.images.dtype == torch.uint8
    assert train.labels[:10].tolist() == [0] * 5 + [1] * 5 and (train.labels[10:] == UNLABELED).all()
    assert test.labels.tolist() == [0] * 3 + [1] * 3 and test.class_names == ("cat", "dog")
    assert Path(train.paths[0]).parts[-2:] == ("cat", "000.png")
    assert all("unlabeled" in p for p in train.paths[10:])
    # the pixels are the files' pixels (no resize at the native size)
    assert np.array_equal(train.images[0, 0].numpy(), _pixels(train.paths[0]))
    assert class_names(train, "folder") == ["cat", "dog"]


def test_class_names_sort_naturally_and_csv_labels(tmp_path):
    root = tmp_path / "ds"
    write_class_folders(root / "labeled", {"10": 0, "9": 1, "2": 2}, 2)
    write_unlabeled(root / "unl", 3)
    rows = ["path,label"] + [f"{p.relative_to(root)},{p.parent.name}" for p in sorted((root / "labeled").rglob("*.png"))]
    (root / "test.csv").write_text("\n".join(rows) + "\n\n")
    d = data_cfg(dataset="folder", labeled=str(root / "labeled"), unlabeled="unl", test="test.csv", root=str(root),
                 image_size=[16, 16], channels=1)
    train, test = load_folder_data(d, progress=False)
    assert train.class_names == ("2", "9", "10")  # numbers in numeric order
    assert len(test) == 6 and test.labels.tolist() == [2, 2, 0, 0, 1, 1]  # CSV rows in file order


def test_csv_errors_name_the_lines_and_missing_files(tmp_path, dataset):
    csv_path = tmp_path / "lab.csv"
    csv_path.write_text(f"{dataset['labeled']}/cat/000.png,cat\njust-a-path\n,dog\n")
    with pytest.raises(ValueError, match=r"lab.csv: 2 row\(s\) are not `path,label` \(line\(s\) 2, 3\)"):
        load_folder_data(data_cfg(**{**dataset, "labeled": str(csv_path)}), progress=False)
    csv_path.write_text("gone/a.png,cat\ngone/b.png,dog\n")
    with pytest.raises(FileNotFoundError, match=r"data.labeled: 2 file\(s\) listed in .*lab.csv do not exist: "
                                                r".*gone/a.png"):
        load_folder_data(data_cfg(**{**dataset, "labeled": str(csv_path)}), progress=False)


@pytest.mark.parametrize("channels", [1, 3])
def test_modes_convert_to_the_channels_asked(tmp_path, channels):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    grey = np.full((4, 6), 77, np.uint8)
    alpha = np.zeros((4, 6, 4), np.uint8)
    alpha[..., :3] = 250
    alpha[:2, ..., 3] = 255  # top half opaque, bottom half transparent
    paths = {
        "rgb": save(rgb, tmp_path / "rgb.png"), "grey": save(grey, tmp_path / "grey.png"),
        "rgba": save(alpha, tmp_path / "rgba.png"), "palette": save(rgb, tmp_path / "pal.gif", "P"),
        "la": save(alpha[..., [0, 3]], tmp_path / "la.png"), "bits": save(grey > 50, tmp_path / "bits.png", "1"),
        "cmyk": save(rgb, tmp_path / "cmyk.jpg", "CMYK"),
    }
    wide = np.full((4, 6), 300 * 257 // 300 * 200, np.uint16)  # 16-bit grey of level 200 * 257
    Image.fromarray(wide).save(tmp_path / "grey16.png")
    paths["grey16"] = tmp_path / "grey16.png"
    out = {k: decode_image(p, (4, 6), channels) for k, p in paths.items()}
    for k, x in out.items():
        assert x.shape == (channels, 4, 6) and x.dtype == np.uint8, k
    luma = round(200 * 0.299 + 100 * 0.587 + 50 * 0.114)
    if channels == 3:
        assert out["rgb"][:, 0, 0].tolist() == [200, 100, 50]
        assert out["grey"][:, 0, 0].tolist() == [77, 77, 77]
        assert out["rgba"][:, 0, 0].tolist() == [250] * 3 and out["rgba"][:, 3, 0].tolist() == [0] * 3
    else:
        assert abs(int(out["rgb"][0, 0, 0]) - luma) <= 1 and out["grey"][0, 0, 0] == 77
        assert out["rgba"][0, 0, 0] == 250 and out["rgba"][0, 3, 0] == 0  # transparent -> black
        assert out["la"][0, 0, 0] == 250 and out["la"][0, 3, 0] == 0
    assert out["bits"].max() == 255 and out["bits"].min() == 255  # all > 50
    assert abs(int(out["grey16"][0, 0, 0]) - 200) <= 1  # 16-bit levels scaled to 8 bits, not clipped
    assert abs(int(out["palette"][0, 0, 0]) - (200 if channels == 3 else luma)) <= 8


def test_resize_and_exif_orientation(tmp_path):
    x = np.zeros((10, 20), np.uint8)
    x[:, :10] = 255  # left half white
    resized = decode_image(save(x, tmp_path / "a.png"), (5, 8), 1)
    assert resized.shape == (1, 5, 8) and resized[0, :, 0].min() > 200 and resized[0, :, -1].max() < 50
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(x).save(tmp_path / "rot.png", exif=exif)
    upright = decode_image(tmp_path / "rot.png", (20, 10), 1)
    assert upright.shape == (1, 20, 10) and upright[0, 0].min() > 200 and upright[0, -1].max() < 50  # top white


def test_images_of_other_sizes_and_modes_in_one_folder(tmp_path):
    root = tmp_path / "ds"
    save(class_image(0, (30, 20), 1, 3), root / "lab" / "a" / "big.jpg")
    save(class_image(0, (8, 8), 2), root / "lab" / "a" / "small.bmp")
    save(class_image(1, (16, 16), 3, 3), root / "lab" / "b" / "x.webp")
    save(class_image(1, (16, 16), 4), root / "lab" / "b" / "y.tif")
    write_unlabeled(root / "unl", 2)
    d = data_cfg(dataset="folder", labeled="lab", unlabeled="unl", test="lab", root=str(root), image_size=[12, 12],
                 channels=3, val_fraction=0.5)
    train, test = load_folder_data(d, progress=False)
    assert train.images.shape == (6, 3, 12, 12) and len(test) == 4
    # an unlabeled tree that holds the labeled folder too: those images stay labeled, out of the unlabeled pool
    with pytest.warns(UserWarning, match=r"4 of the 6 images in .*ds are also labeled, validation or test images "
                                         r"and were left out of the unlabeled pool"):
        train, _ = load_folder_data(data_cfg(**{**d.__dict__, "unlabeled": "."}), progress=False)
    assert len(train) == 6 and (train.labels == UNLABELED).sum() == 2


def test_the_cache_is_used_and_invalidated(tmp_path, dataset, monkeypatch):
    d = data_cfg(**dataset)
    first = load_folder_data(d, progress=False)[0]
    cache_files = sorted((tmp_path / "cache" / "genssl" / "folders").glob("*.pt"))
    assert len(cache_files) == 3  # labeled, test, unlabeled

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache holds these files")

    monkeypatch.setattr(decode_mod, "decode_image", no_decoding)
    again = load_folder_data(d, progress=False)[0]
    assert torch.equal(first.images, again.images) and first.paths == again.paths
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    changed = Path(dataset["labeled"]) / "cat" / "000.png"
    save(255 - class_image(0, (16, 16), 5), changed)
    os.utime(changed, ns=(1, 1))  # an older mtime than before, and another size: still a new key
    fresh = load_folder_data(d, progress=False)[0]
    assert torch.equal(fresh.images[0, 0], torch.from_numpy(_pixels(changed)))
    for f in (tmp_path / "cache" / "genssl" / "folders").glob("*.pt"):
        f.write_bytes(b"not a torch file")  # a damaged cache is decoded again, not an error
    assert torch.equal(load_folder_data(d, progress=False)[0].images, fresh.images)


# ------------------------------------------------------------------------------------------------ the split

def test_stratified_validation_split_is_seeded(tmp_path):
    root = tmp_path / "ds"
    write_class_folders(root / "lab", {"a": 0, "b": 1, "c": 2}, 10)
    write_unlabeled(root / "unl", 6, 3)
    d = data_cfg(dataset="folder", labeled="lab", unlabeled="unl", test="lab", root=str(root), image_size=[16, 16],
                 channels=1, val_fraction=0.2)
    train, _ = load_folder_data(d, progress=False)
    s = folder_split(train, d, seed=3)
    assert torch.bincount(train.labels[s.val], minlength=3).tolist() == [2, 2, 2]
    assert torch.bincount(train.labels[s.labeled], minlength=3).tolist() == [8, 8, 8]
    assert not set(s.val.tolist()) & set(s.labeled.tolist()) and not set(s.val.tolist()) & set(s.unlabeled.tolist())
    assert set(s.unlabeled.tolist()) == set(range(30, 36)) | set(s.labeled.tolist())  # labeled_in_unlabeled
    again, other = folder_split(train, d, 3), folder_split(train, d, 4)
    assert torch.equal(again.val, s.val) and not torch.equal(other.val.sort().values, s.val.sort().values)
    strict = folder_split(train, data_cfg(**{**d.__dict__, "labeled_in_unlabeled": False}), 3)
    assert set(strict.unlabeled.tolist()) == set(range(30, 36))
    s.check_against(len(train))


def test_a_val_folder_is_the_validation_set(tmp_path, dataset):
    write_class_folders(tmp_path / "val", {"dog": 1}, 2, seed=9)
    d = data_cfg(**dataset, val=str(tmp_path / "val"))
    train, _ = load_folder_data(d, progress=False)
    assert len(train) == 10 + 2 + 12 and train.n_val_images == 2
    s = run_split(train, d, seed=0)
    assert sorted(s.val.tolist()) == [10, 11] and sorted(s.labeled.tolist()) == list(range(10))
    assert (train.labels[s.val] == 1).all()


def test_a_resumed_split_must_match_the_folders(tmp_path, dataset):
    d = data_cfg(**dataset)
    train, _ = load_folder_data(d, progress=False)
    saved = run_split(train, d, seed=0)
    assert run_split(train, d, seed=5, saved=saved) is saved  # its own seed is kept
    save(class_image(0), Path(dataset["unlabeled"]) / "new.png")
    grown, _ = load_folder_data(d, progress=False)
    with pytest.raises(ValueError, match=r"split.pt: the image folders changed since this run began"):
        run_split(grown, d, seed=0, saved=saved)


# ------------------------------------------------------------------------------------------------ bad input

def _corrupt(path: Path, data: bytes = b"\x89PNG\r\n\x1a\n this is not really a png") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_unreadable_files_are_all_listed_and_only_skipped_when_asked(dataset):
    bad1 = _corrupt(Path(dataset["labeled"]) / "cat" / "broken.png")
    good = (Path(dataset["labeled"]) / "dog" / "001.png").read_bytes()
    bad2 = _corrupt(Path(dataset["labeled"]) / "dog" / "truncated.png", good[: len(good) // 2])
    with pytest.raises(ValueError) as e:
        load_folder_data(data_cfg(**dataset), progress=False)
    msg = str(e.value)
    assert "data.labeled: 2 of 12 image file(s) cannot be read" in msg and str(bad1) in msg and str(bad2) in msg
    assert "set data.skip_bad: true" in msg
    with pytest.warns(UserWarning, match=r"data.labeled: skipped 2 of 12 unreadable image file\(s\) "
                                         r"\(data.skip_bad\)") as w:
        train, _ = load_folder_data(data_cfg(**dataset, skip_bad=True), progress=False)
    assert str(bad1) in str(w[0].message) and str(bad2) in str(w[0].message)
    assert len(train) == 10 + 12 and str(bad1) not in train.paths


def test_an_empty_class_folder(dataset):
    (Path(dataset["labeled"]) / "emu").mkdir()
    (Path(dataset["labeled"]) / "emu" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"data.labeled: 1 class folder\(s\) hold no images: .*emu \(image files "
                                         r"end in .*\.png"):
        load_folder_data(data_cfg(**dataset), progress=False)


def test_a_class_whose_every_file_is_bad_is_empty(dataset):
    for p in (Path(dataset["labeled"]) / "cat").iterdir():
        _corrupt(p)
    with pytest.warns(UserWarning, match="skipped 5 of 10"), \
            pytest.raises(ValueError, match=r"data.labeled: class\(es\) 'cat' have no readable images left"):
        load_folder_data(data_cfg(**dataset, skip_bad=True), progress=False)


def test_images_outside_class_folders_and_no_classes(tmp_path, dataset):
    save(class_image(0), Path(dataset["labeled"]) / "stray.png")
    with pytest.raises(ValueError, match=r"1 image file\(s\) lie directly in .*labeled \(e.g. stray.png\), outside "
                                         r"any class folder"):
        load_folder_data(data_cfg(**dataset), progress=False)
    (tmp_path / "flat").mkdir()
    (Path(dataset["labeled"]) / "stray.png").unlink()
    with pytest.raises(ValueError, match=r"data.test: .*flat has no class folders"):
        load_folder_data(data_cfg(**{**dataset, "test": str(tmp_path / "flat")}), progress=False)
    with pytest.raises(FileNotFoundError, match=r"data.labeled: .*nowhere does not exist"):
        load_folder_data(data_cfg(**{**dataset, "labeled": str(tmp_path / "nowhere")}), progress=False)


def test_one_class_is_not_classification(tmp_path, dataset):
    write_class_folders(tmp_path / "one", {"cat": 0}, 4)
    with pytest.raises(ValueError, match=r"has 1 class \(cat\); classification needs at least 2"):
        load_folder_data(data_cfg(**{**dataset, "labeled": str(tmp_path / "one")}), progress=False)


def test_test_classes_the_labeled_set_lacks(dataset):
    write_class_folders(Path(dataset["test"]), {"emu": 0, "yak": 1}, 1)
    with pytest.raises(ValueError, match=r"data.test: class\(es\) 'emu', 'yak' in .* are not among the labeled "
                                         r"classes \('cat', 'dog'\)"):
        load_folder_data(data_cfg(**dataset), progress=False)


def test_too_few_labeled_images_for_validation(tmp_path, dataset):
    write_class_folders(tmp_path / "few", {"cat": 0}, 1)
    write_class_folders(tmp_path / "few", {"dog": 1}, 3)
    d = data_cfg(**{**dataset, "labeled": str(tmp_path / "few")})
    train, _ = load_folder_data(d, progress=False)
    with pytest.raises(ValueError, match=r"data.labeled: 1 class\(es\) have too few images to hold out a validation "
                                         r"split: 'cat' \(1\)\. .* every class needs 2 or more labeled images; .*"
                                         r"data.val"):
        run_split(train, d, seed=0)


def test_zero_unlabeled_images(tmp_path, dataset):
    (tmp_path / "none" / "sub").mkdir(parents=True)
    (tmp_path / "none" / "sub" / "readme.md").write_text("x")
    with pytest.raises(ValueError, match=r"data.unlabeled: no unlabeled images in .*none .*semi-supervised "
                                         r"training needs some"):
        load_folder_data(data_cfg(**{**dataset, "unlabeled": str(tmp_path / "none")}), progress=False)
    with pytest.raises(FileNotFoundError, match=r"data.unlabeled: .*missing is not a folder"):
        load_folder_data(data_cfg(**{**dataset, "unlabeled": str(tmp_path / "missing")}), progress=False)
    for p in Path(dataset["unlabeled"]).rglob("*.png"):
        _corrupt(p)
    with pytest.warns(UserWarning, match="skipped 12 of 12"), \
            pytest.raises(ValueError, match=r"data.unlabeled: none of the 12 images in .* could be read"):
        load_folder_data(data_cfg(**dataset, skip_bad=True), progress=False)


@pytest.mark.parametrize("method,overrides,supports", [
    ("supervised", {"arch": "conv"}, r"arch='conv' takes \(C, H, W\) images of any channel count with H, W >= 4"),
    ("vae_m1", {"arch": "conv"}, r"arch='conv' takes \(C, H, W\) images of any channel count with H, W >= 4"),
])
def test_an_architecture_names_the_sizes_it_takes(method, overrides, supports):
    cfg = build_run_config({"method": {"name": method, **overrides}})
    with pytest.raises(ValueError, match=supports + r".*got \(3, 3, 3\)"):
        create_method(method, cfg.method, DataSpec((3, 3, 3), 2, 4, 8))


@pytest.mark.parametrize("arch,size", [("conv", "32x32"), ("conv28", "28x28")])
def test_gan_architectures_name_the_size_they_take(arch, size):
    cfg = build_run_config({"method": {"name": "sgan", "arch": arch}})
    with pytest.raises(ValueError, match=rf"{size} images, but the data are 16x16; use arch='mlp' \(any size\)"):
        create_method("sgan", cfg.method, DataSpec((1, 16, 16), 3, 6, 12))


@pytest.mark.parametrize("method,overrides", [("supervised", {"arch": "conv"}), ("supervised", {"arch": "mlp"}),
                                              ("vae_m1", {"arch": "conv", "hidden": [32], "z_dim": 4}),
                                              ("vae_m2", {"arch": "conv", "enc_hidden": [32], "dec_hidden": [32], "cls_hidden": [32], "z_dim": 4})])
@pytest.mark.parametrize("shape", [(3, 20, 36), (1, 5, 7)])
def test_architectures_take_other_sizes(method, overrides, shape):
    cfg = build_run_config({"method": {"name": method, **overrides}})
    m = create_method(method, cfg.method, DataSpec(shape, 3, 6, 12))
    m.eval()
    with torch.no_grad():
        assert m.predict(torch.rand(2, *shape)).shape == (2, 3) if method != "vae_m1" else \
            m.encode(torch.rand(2, *shape)).shape == (2, 4)


# ------------------------------------------------------------------------------------------------ fuzzing

def _valid_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    arr = class_image(1, (12, 10), 3, 3 if fmt in ("JPEG", "WEBP") else 1)
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


VALID = {fmt: _valid_bytes(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")}
EXT = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}


@st.composite
def mutated_images(draw):
    fmt = draw(st.sampled_from(sorted(VALID)))
    data = bytearray(VALID[fmt])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "zero-header"]))
        if kind == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif kind == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[: min(len(data), 24)] = bytes(min(len(data), 24))
    return fmt, bytes(data)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated_images(), skip=st.booleans())
@example(case=("PNG", VALID["PNG"][:40]), skip=False)
@example(case=("PNG", VALID["PNG"]), skip=False)
def test_fuzz_mutated_image_bytes(case, skip):
    """A damaged file is either decoded (PIL could read all of it) or reported by path, never a crash, a hang or a
    silently missing image."""
    fmt, data = case
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(Path(tmp) / "cache"))
        root = Path(tmp)
        write_class_folders(root / "lab", {"a": 0, "b": 1}, 2, size=(12, 10))
        write_unlabeled(root / "unl", 2, size=(12, 10))
        victim = root / "lab" / "a" / f"victim{EXT[fmt]}"
        victim.write_bytes(data)
        d = data_cfg(dataset="folder", labeled="lab", unlabeled="unl", test="lab", root=tmp, image_size=[12, 10],
                     channels=1, skip_bad=skip)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                train, _ = load_folder_data(d, progress=False)
            except ValueError as e:
                assert not skip, f"skip_bad=True still raised: {e}"
                msg = str(e)
                assert f"data.labeled: 1 of 5 image file(s) cannot be read:\n  {victim}: " in msg, msg
                assert "data.test: 1 of 5" not in msg  # the labeled set is read (and refused) first
                event(f"refused ({fmt}): {msg.split(f'{victim}: ', 1)[1].split(':')[0]}")  # the error's type
                return
        skipped = [w for w in caught if "unreadable" in str(w.message)]
        if skipped:
            assert skip and str(victim) in str(skipped[0].message) and "skipped 1 of 5" in str(skipped[0].message)
            assert len(train) == 4 + 2 and str(victim) not in train.paths
            event("skipped")
        else:
            assert len(train) == 5 + 2 and str(victim) in train.paths  # decoded: it is a (maybe odd) image
            event(f"decoded ({fmt})")


# ------------------------------------------------------------------------------------------------ the trainer

def test_training_on_a_folder_end_to_end(tmp_path, dataset):
    cfg = build_run_config({
        "out_dir": str(tmp_path / "runs"), "name": "own", "method": {"name": "supervised", "arch": "mlp",
                                                                     "hidden": [32]},
        "data": {**dataset, "val_fraction": 0.4},
        "train": {"steps": 4, "batch_size": 8, "labeled_batch_size": 4, "eval_every": 2, "log_every": 2,
                  "ckpt_every": 2, "progress": False},
    })
    results = trainer_mod.Trainer(cfg).fit()
    assert 0 <= results["test_acc"] <= 1
    best = torch.load(tmp_path / "runs" / "own" / "best.pt", weights_only=True)
    names = best.get("class_names") or best["data_spec"].get("class_names")
    assert list(names) == ["cat", "dog"]
