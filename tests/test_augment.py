"""genssl.data.augment: batched views with per-image parameters, equal to torchvision's ops image by image,
seeded and resumable through torch's global RNG, and horizontal flips only where the dataset allows them."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from genssl.config import ConfigError, build_run_config
from genssl.data import augment as A
from genssl.data.spec import DataSpec
from genssl.methods import create_method
from genssl.training.rng import rng_state, set_rng_state


def _images(n=16, c=1, size=28, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g).to(dtype)


def _asymmetric(n=32, c=1, size=12):
    """n copies of one image with a bright off-centre corner, so any shift or flip changes it."""
    x = torch.zeros(n, c, size, size)
    x[:, :, 1:4, 2:6] = 1.0
    x[:, :, 7, 9] = 0.5
    return x


# ---------------------------------------------------------------------------------------------- shapes, ranges
@pytest.mark.parametrize("kind", A.AUGMENT_KINDS)
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_views_keep_shape_dtype_device_and_range(kind, channels, size, dtype):
    x = _images(24, channels, size, dtype=dtype)
    y = A.augment(x, kind, flip=True)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert torch.isfinite(y.float()).all()


def test_unknown_kind_and_non_float_images_are_refused():
    with pytest.raises(ValueError, match="'medium' is not one of none, weak, strong"):
        A.augment(_images(), "medium", flip=False)
    with pytest.raises(ValueError, match="expected float images"):
        A.weak((_images() * 255).to(torch.uint8), flip=False)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        A.strong(torch.rand(2, 2, 8, 8), flip=False)


def test_none_is_the_identity():
    x = _images()
    assert A.augment(x, "none", flip=True) is x


# ---------------------------------------------------------------------------------------------- per-image randomness
@pytest.mark.parametrize("kind", ["weak", "strong"])
def test_each_image_draws_its_own_parameters(kind):
    x = _asymmetric(64)
    torch.manual_seed(0)
    y = A.augment(x, kind, flip=True)
    distinct = {tuple(v.flatten().tolist()) for v in y}
    assert len(distinct) > 20, f"{kind}: only {len(distinct)} distinct views of 64 copies of one image"


def test_weak_is_a_reflection_padded_shift_and_flips_only_when_asked():
    x = _asymmetric(64)
    p = 2
    pad = torch.nn.functional.pad(x[:1], (p, p, p, p), mode="reflect")[0]  # (C, H+2p, W+2p)
    h, w = x.shape[-2:]
    crops = [pad[:, i:i + h, j:j + w] for i in range(2 * p + 1) for j in range(2 * p + 1)]
    flipped = [c.flip(-1) for c in crops]
    torch.manual_seed(1)
    plain = A.weak(x, flip=False, max_shift=p)
    assert all(any(torch.equal(v, c) for c in crops) for v in plain)  # every view is one reflected shift
    assert not any(any(torch.equal(v, c) for c in flipped) for v in plain)  # never mirrored without flip
    torch.manual_seed(1)
    mirrored = sum(any(torch.equal(v, c) for c in flipped) for v in A.weak(x, flip=True, max_shift=p))
    assert 16 <= mirrored <= 48  # about half of 64 with p = 1/2


def test_legacy_translate_still_zero_fills():
    x = torch.ones(8, 1, 10, 10)
    torch.manual_seed(0)
    y = A.random_translate(x, 3)
    assert (y == 0).any() and set(y.unique().tolist()) <= {0.0, 1.0}
    assert A.random_translate(x, 0) is x


def test_cutout_is_a_grey_square_inside_the_image():
    x = torch.zeros(64, 1, 20, 20)
    torch.manual_seed(0)
    y = A.random_cutout(x, 0.5)
    for img in y[:, 0]:
        rows = img.eq(A.CUTOUT_FILL).any(1).nonzero().flatten()
        cols = img.eq(A.CUTOUT_FILL).any(0).nonzero().flatten()
        if rows.numel():
            box = img[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            assert box.eq(A.CUTOUT_FILL).all()  # one axis-aligned box
            assert rows.numel() <= 11 and cols.numel() <= 11  # side <= 0.5 of 20 px (+1 for pixel centres)
    assert y.eq(A.CUTOUT_FILL).any((1, 2, 3)).float().mean() > 0.5


# ---------------------------------------------------------------------------------------------- seeded, resumable
@pytest.mark.parametrize("kind", ["weak", "strong"])
def test_same_seed_same_views_and_another_seed_others(kind):
    x = _images(32, 3, 32)
    torch.manual_seed(123)
    a = A.augment(x, kind, flip=True)
    torch.manual_seed(123)
    b = A.augment(x, kind, flip=True)
    torch.manual_seed(124)
    c = A.augment(x, kind, flip=True)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_restoring_the_rng_state_replays_the_augmentation():
    """What a checkpoint saves (torch.get_rng_state, all of genssl.training.rng) replays the same views."""
    x = _images(32)
    torch.manual_seed(5)
    A.strong(x, flip=True)  # somewhere in a run
    saved, saved_all = torch.get_rng_state(), rng_state()
    first = [A.strong(x, flip=True), A.weak(x, flip=True)]
    torch.set_rng_state(saved)
    assert all(torch.equal(a, b) for a, b in zip(first, [A.strong(x, flip=True), A.weak(x, flip=True)]))
    torch.manual_seed(99)  # a fresh process...
    set_rng_state(saved_all)  # ...resumed from the checkpoint's states
    assert torch.equal(first[0], A.strong(x, flip=True))


# ---------------------------------------------------------------------------------------------- ops == torchvision
OP_CASES = [
    ("brightness", lambda x, v: A.brightness(x, torch.tensor([v])), TF.adjust_brightness, [0.1, 0.6, 1.0, 1.9]),
    ("contrast", lambda x, v: A.contrast(x, torch.tensor([v])), TF.adjust_contrast, [0.1, 0.6, 1.0, 1.9]),
    ("sharpness", lambda x, v: A.sharpness(x, torch.tensor([v])), TF.adjust_sharpness, [0.1, 0.6, 1.0, 1.9]),
    ("posterize", lambda x, v: A.posterize(x, torch.tensor([float(v)])), TF.posterize, [1, 4, 6, 8]),
    ("solarize", lambda x, v: A.solarize(x, torch.tensor([v])), TF.solarize, [0.0, 0.3, 0.75, 1.0]),
]


@pytest.mark.parametrize("name, mine, theirs, values", OP_CASES, ids=[c[0] for c in OP_CASES])
@pytest.mark.parametrize("channels", [1, 3])
def test_parametrized_ops_equal_torchvision_on_single_images(name, mine, theirs, values, channels):
    img = _images(1, channels, 28, seed=channels)
    for v in values:
        torch.testing.assert_close(mine(img, v), theirs(img, v), rtol=0, atol=1e-6, msg=f"{name}({v})")


@pytest.mark.parametrize("channels", [1, 3])
def test_equalize_and_autocontrast_equal_torchvision(channels):
    x = _images(6, channels, 28, seed=3)
    x[0] = 0.3  # a flat image
    x[1] = (x[1] * 4).floor() / 4  # a few grey levels
    x[2] = x[2] * 0.2 + 0.4  # low contrast
    torch.testing.assert_close(A.equalize(x), TF.equalize(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(A.autocontrast(x), TF.autocontrast(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("angle, shear_x, shear_y, tx, ty", [
    (20.0, 0, 0, 0, 0), (-30.0, 0, 0, 0, 0), (0, 0.3, 0, 0, 0), (0, 0, -0.25, 0, 0), (0, 0, 0, 5.5, 0),
    (0, 0, 0, 0, -8.0), (12.0, 0.1, -0.2, 3.0, 4.0)])
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_affine_equals_torchvision(angle, shear_x, shear_y, tx, ty, channels, size):
    img = _images(1, channels, size, seed=7)
    t = lambda v: torch.tensor([float(v)])  # noqa: E731
    mine = A.affine(img, angle=t(angle), shear_x=t(shear_x), shear_y=t(shear_y), tx=t(tx), ty=t(ty))
    theirs = TF.affine(img, angle=angle, translate=[tx, ty], scale=1.0,
                       shear=[math.degrees(math.atan(shear_x)), math.degrees(math.atan(shear_y))],
                       interpolation=InterpolationMode.BILINEAR)
    torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5)


def test_batched_ops_use_each_images_own_parameter():
    x = _images(4, 3, 16)
    f = torch.tensor([0.2, 1.0, 1.5, 0.7])
    out = A.contrast(x, f)
    for i in range(4):
        torch.testing.assert_close(out[i:i + 1], TF.adjust_contrast(x[i:i + 1], float(f[i])), rtol=0, atol=1e-6)
    angles = torch.tensor([-30.0, 0.0, 10.0, 25.0])
    zero = torch.zeros(4)
    out = A.affine(x, angle=angles, shear_x=zero, shear_y=zero, tx=zero, ty=zero)
    for i in range(4):
        ref = TF.affine(x[i:i + 1], angle=float(angles[i]), translate=[0.0, 0.0], scale=1.0, shear=[0.0, 0.0],
                        interpolation=InterpolationMode.BILINEAR)
        torch.testing.assert_close(out[i:i + 1], ref, rtol=0, atol=1e-5)


def test_grouped_and_whole_batch_rounds_agree():
    x = _images(200, 3, 20)
    torch.manual_seed(0)
    op = torch.randint(0, len(A.STRONG_OPS), (200,))
    m, along_x = torch.rand(200), torch.rand(200) < 0.5
    torch.testing.assert_close(A.apply_ops(x, op, m, along_x, grouped=True),
                               A.apply_ops(x, op, m, along_x, grouped=False), rtol=0, atol=0)


def test_views_run_under_vmap_with_different_randomness_per_lane():
    """Stacked seeds (genssl.training.stacked) augment under torch.vmap: no data-dependent shapes, no warnings."""
    x = _images(16, 1, 28)
    lanes = torch.vmap(lambda t: A.strong(t, flip=True), randomness="different")(torch.stack([x, x]))
    assert lanes.shape == (2, *x.shape) and not torch.equal(lanes[0], lanes[1])


# ---------------------------------------------------------------------------------------------- the dataset's flip rule
def test_flip_rule_follows_the_dataset_and_refuses_flips_it_forbids():
    assert A.resolve_hflip(None, True) is True and A.resolve_hflip(None, False) is False
    assert A.resolve_hflip(False, True) is False and A.resolve_hflip(True, True) is True
    with pytest.raises(ValueError, match="forbids them.*DataSpec.hflip is False.*cifar10, fashion_mnist"):
        A.resolve_hflip(True, False)


def test_methods_take_flips_from_the_data_spec_and_refuse_forbidden_ones():
    digits, clothes = DataSpec((1, 28, 28), 10, 20, 100, hflip=False), DataSpec((1, 28, 28), 10, 20, 100, hflip=True)
    for name in ("supervised", "self_training", "fixmatch"):
        assert create_method(name, {"augment": "weak"}, clothes).flip is True
        assert create_method(name, {"augment": "weak"}, digits).flip is False
        assert create_method(name, {"augment": "weak", "hflip": False}, clothes).flip is False
        with pytest.raises(ValueError, match="hflip=true asks for horizontal flips, but this dataset forbids"):
            create_method(name, {"augment": "weak", "hflip": True}, digits)


def test_the_trainer_refuses_flips_on_a_dataset_that_forbids_them(run_config_factory, tiny_data):
    from genssl import Trainer

    cfg = run_config_factory("supervised", {"augment": "weak", "hflip": True})  # synthetic data: no flips
    with pytest.raises(ValueError, match="forbids them"):
        Trainer(cfg, data=tiny_data).fit()


def test_classifier_config_validates_augment(tmp_path):
    raw = {"method": {"name": "supervised", "augment": "heavy"}, "out_dir": str(tmp_path)}
    with pytest.raises(ConfigError, match="'heavy' is not one of none, weak, strong"):
        build_run_config(raw)


@pytest.mark.parametrize("kind", ["none", "weak", "strong"])
def test_supervised_trains_with_each_augmentation(kind, run_config_factory, tiny_data):
    from genssl import Trainer

    cfg = run_config_factory("supervised", {"augment": kind, "hidden": [32]}, train={"steps": 4})
    assert 0.0 <= Trainer(cfg, data=tiny_data).fit()["test_acc"] <= 1.0


def test_augment_shift_keeps_its_meaning():
    spec = DataSpec((1, 10, 10), 3, 6, 12)
    x = torch.ones(8, 1, 10, 10)
    plain = create_method("supervised", {"hidden": [8]}, spec)
    assert plain.augment(x) is x  # augment none, shift 0: untouched
    legacy = create_method("supervised", {"hidden": [8], "augment_shift": 3}, spec)
    torch.manual_seed(0)
    assert (legacy.augment(x) == 0).any()  # the original zero-filled shift
    weak = create_method("supervised", {"hidden": [8], "augment": "weak", "augment_shift": 3}, spec)
    torch.manual_seed(0)
    assert torch.equal(weak.augment(x), x)  # reflection padding: a constant image stays constant
