"""Batched, device-side image augmentation with per-sample random parameters (no per-sample Python).

Three kinds, picked by name with `augment(x, kind, flip=...)`:

    none     the images unchanged
    weak     horizontal flip with p = 1/2 (only where the dataset allows it) and a random translation by up to
             `max_shift` pixels with reflection padding: FixMatch's weak view alpha(.) (Sohn et al. 2020, Sec. 2.3)
    strong   weak, then `n_ops` operations per image drawn from STRONG_OPS with random magnitudes (RandAugment
             with a random magnitude per image, FixMatch's "RA" variant, Sec. 2.3 and Table 12), then Cutout

Inputs are float images (B, C, H, W) in [0, 1] with 1 or 3 channels; outputs have the same shape, dtype and
device, and stay in [0, 1]. Every image draws its own parameters (shift, flip, ops, magnitudes, Cutout box).

Randomness: every draw comes from torch's global RNG of the images' device (`torch.rand(..., device=x.device)`),
no private generator. The Trainer seeds that RNG from the run seed (genssl.training.rng.seed_everything) and
saves and restores it in every checkpoint (genssl.training.rng.rng_state / set_rng_state), so augmentation is
reproducible under a seed and a resumed run draws the same augmentations as an uninterrupted one.

Horizontal flips change the class of some datasets (a mirrored digit is another digit or none), so the
caller passes `flip` explicitly: methods use the dataset's rule `DataSpec.hflip`, and `resolve_hflip` refuses
a config that asks for flips on a dataset that forbids them.

Every operation equals the torchvision.transforms.v2.functional one of the same name applied image by image
(tests/test_augment.py checks each); they are written here because torchvision's take one parameter for a
whole batch, and without in-place updates or data-dependent shapes so that torch.vmap (stacked seeds,
genssl.training.stacked) can batch them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genssl.data.datasets import HFLIP_DATASETS

AUGMENT_KINDS = ("none", "weak", "strong")
STRONG_OPS = ("brightness", "contrast", "sharpness", "posterize", "solarize", "equalize", "autocontrast", "rotate",
              "shear", "translate")
"""RandAugment's operations as FixMatch uses them (Table 12; colour and identity left out: grey images)."""

# Magnitude ranges, drawn uniformly per image. The enhancement factors follow FixMatch's CTAugment code
# (0.1 + 1.9 v, so 1 = unchanged sits in the middle); the others are FixMatch's Table 12.
ENHANCE_RANGE = (0.1, 1.9)     # brightness, contrast, sharpness factor
POSTERIZE_BITS = (4, 8)        # bits kept, inclusive
SOLARIZE_RANGE = (0.0, 1.0)    # threshold: pixels >= it are inverted
ROTATE_DEGREES = 30.0          # [-30, 30]
SHEAR_RANGE = 0.3              # [-0.3, 0.3], along x or y (the PIL matrix coefficient)
TRANSLATE_RANGE = 0.3          # [-0.3, 0.3] of the image size, along x or y
CUTOUT_FILL = 0.5              # grey, as FixMatch's Cutout


# ---------------------------------------------------------------------------------------------- checks
def resolve_hflip(requested: bool | None, dataset_allows: bool, who: str = "augment") -> bool:
    """Whether augmentation flips: the dataset's rule (`DataSpec.hflip`) when `requested` is None, else the
    request; asking for flips on a dataset whose classes a flip changes is an error naming that rule."""
    if requested is None:
        return dataset_allows
    if requested and not dataset_allows:
        raise ValueError(
            f"{who}: hflip=true asks for horizontal flips, but this dataset forbids them: its DataSpec.hflip is "
            f"False because a mirrored image may change class (digits: MNIST, SVHN). Only "
            f"{', '.join(sorted(HFLIP_DATASETS))} allow flips (genssl.data.datasets.HFLIP_DATASETS); remove "
            f"hflip (it then follows the dataset) or set it to false")
    return bool(requested)


def _check_images(x: torch.Tensor, who: str) -> None:
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{who}: expected float images (B, C, H, W) with C = 1 or 3, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{who}: expected float images in [0, 1], got dtype {x.dtype} (convert with "
                         f"genssl.data.batching.to_float)")


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, 1, 1, 1)  # (B,) -> (B, 1, 1, 1)


# ---------------------------------------------------------------------------------------------- the kinds
def random_translate(x: torch.Tensor, max_shift: int, padding: str = "zeros") -> torch.Tensor:
    """Shift each image by an independent integer offset in [-max_shift, max_shift]^2, filling the border with
    zeros (`padding="zeros"`, the original behaviour) or the mirrored image (`"reflect"`)."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    p = max_shift
    if padding == "reflect" and p >= min(h, w):
        raise ValueError(f"random_translate: reflection padding needs max_shift < image size, got {p} for {h}x{w}")
    if padding not in ("zeros", "reflect"):
        raise ValueError(f"random_translate: padding={padding!r} is not one of zeros, reflect")
    padded = F.pad(x, (p, p, p, p), mode="constant" if padding == "zeros" else "reflect")
    dy = torch.randint(0, 2 * p + 1, (b, 1), device=x.device)
    dx = torch.randint(0, 2 * p + 1, (b, 1), device=x.device)
    rows = torch.arange(h, device=x.device)[None] + dy  # (B, H)
    cols = torch.arange(w, device=x.device)[None] + dx  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_hflip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability p, independently."""
    mask = torch.rand(x.shape[0], device=x.device) < p  # (B,)
    return torch.where(_per_image(mask), x.flip(-1), x)


def weak(x: torch.Tensor, *, flip: bool, max_shift: int = 2) -> torch.Tensor:
    """FixMatch's weak view: a horizontal flip with p = 1/2 when `flip` (the dataset's DataSpec.hflip), then a
    translation by up to `max_shift` pixels in each direction with reflection padding."""
    _check_images(x, "weak")
    if flip:
        x = random_hflip(x)
    return random_translate(x, max_shift, padding="reflect")


def strong(x: torch.Tensor, *, flip: bool, n_ops: int = 2, cutout: float = 0.5, max_shift: int = 2) -> torch.Tensor:
    """FixMatch's strong view: `weak`, then for each image `n_ops` operations drawn uniformly (with repeats)
    from STRONG_OPS, each with a magnitude drawn uniformly from its range, then Cutout of a square whose
    side is a uniform fraction in [0, cutout] of the image size (0 disables Cutout). Magnitude ranges: the
    module constants (FixMatch's Table 12)."""
    _check_images(x, "strong")
    if n_ops < 0 or not 0.0 <= cutout <= 1.0:
        raise ValueError(f"strong: need n_ops >= 0 and cutout in [0, 1], got n_ops={n_ops}, cutout={cutout}")
    x = weak(x, flip=flip, max_shift=max_shift)
    b = x.shape[0]
    for _ in range(n_ops):
        op = torch.randint(0, len(STRONG_OPS), (b,), device=x.device)  # (B,) one op per image
        m = torch.rand(b, device=x.device, dtype=x.dtype)  # (B,) its magnitude in [0, 1]
        along_x = torch.rand(b, device=x.device) < 0.5  # (B,) the axis of a shear or translate
        x = apply_ops(x, op, m, along_x)
    if cutout > 0:
        x = random_cutout(x, cutout)
    return x


def augment(x: torch.Tensor, kind: str, *, flip: bool, max_shift: int = 2, n_ops: int = 2,
            cutout: float = 0.5) -> torch.Tensor:
    """Apply augmentation `kind` (none | weak | strong) to float images (B, C, H, W) in [0, 1]."""
    if kind == "none":
        return x
    if kind == "weak":
        return weak(x, flip=flip, max_shift=max_shift)
    if kind == "strong":
        return strong(x, flip=flip, n_ops=n_ops, cutout=cutout, max_shift=max_shift)
    raise ValueError(f"augment kind {kind!r} is not one of {', '.join(AUGMENT_KINDS)}")


def apply_ops(x: torch.Tensor, op: torch.Tensor, m: torch.Tensor, along_x: torch.Tensor,
              grouped: bool | None = None) -> torch.Tensor:
    """One RandAugment round: image i gets STRONG_OPS[op[i]] at magnitude m[i] in [0, 1] (shear and translate
    along x where along_x[i], else along y).

    Two ways to the same result: `grouped` applies each operation to the images that drew it (least work, but
    the group sizes are read on the host: the default on CPU); otherwise every operation runs on the whole
    batch and each image keeps its own (no host synchronisation, and possible under torch.vmap, which stacked
    seeds use: the default elsewhere)."""
    if grouped is None:
        # torch.vmap cannot batch data-dependent shapes; the functorch check is private but the only one there is.
        grouped = x.device.type == "cpu" and not torch._C._functorch.is_functorch_wrapped_tensor(x)
    if grouped:
        out = x.clone()
        for i, fn in enumerate(_OPS.values()):
            sel = (op == i).nonzero().squeeze(1)  # (n_i,)
            if sel.numel():
                out[sel] = fn(x[sel], m[sel], along_x[sel])
        return out
    out = x
    for i, fn in enumerate(_OPS.values()):
        out = torch.where(_per_image(op == i), fn(x, m, along_x), out)
    return out


def _enhance_factor(m: torch.Tensor) -> torch.Tensor:
    return ENHANCE_RANGE[0] + (ENHANCE_RANGE[1] - ENHANCE_RANGE[0]) * m


def _signed(m: torch.Tensor, limit: float) -> torch.Tensor:
    return limit * (2 * m - 1)  # [0, 1] -> [-limit, limit]


def _op_posterize(x, m, along_x):
    lo, hi = POSTERIZE_BITS
    return posterize(x, (lo + (m * (hi - lo + 1)).floor()).clamp(max=hi))


def _op_affine(x, *, angle=None, shear=None, shift=None, along_x=None):
    zero = torch.zeros(x.shape[0], device=x.device, dtype=torch.float32)
    angle = zero if angle is None else angle
    shear = zero if shear is None else shear
    shift = zero if shift is None else shift
    h, w = x.shape[-2:]
    return affine(x, angle=angle, shear_x=torch.where(along_x, shear, zero), shear_y=torch.where(along_x, zero, shear),
                  tx=torch.where(along_x, shift * w, zero), ty=torch.where(along_x, zero, shift * h))


_OPS = {  # name -> fn(x, magnitude in [0, 1], along_x), in STRONG_OPS order
    "brightness": lambda x, m, ax: brightness(x, _enhance_factor(m)),
    "contrast": lambda x, m, ax: contrast(x, _enhance_factor(m)),
    "sharpness": lambda x, m, ax: sharpness(x, _enhance_factor(m)),
    "posterize": _op_posterize,
    "solarize": lambda x, m, ax: solarize(x, SOLARIZE_RANGE[0] + (SOLARIZE_RANGE[1] - SOLARIZE_RANGE[0]) * m),
    "equalize": lambda x, m, ax: equalize(x),
    "autocontrast": lambda x, m, ax: autocontrast(x),
    "rotate": lambda x, m, ax: _op_affine(x, angle=_signed(m, ROTATE_DEGREES), along_x=ax),
    "shear": lambda x, m, ax: _op_affine(x, shear=_signed(m, SHEAR_RANGE), along_x=ax),
    "translate": lambda x, m, ax: _op_affine(x, shift=_signed(m, TRANSLATE_RANGE), along_x=ax),
}
assert tuple(_OPS) == STRONG_OPS


# ---------------------------------------------------------------------------------------------- the operations
# Each takes float images (B, C, H, W) in [0, 1] and per-image parameters (B,), and equals the op of
# torchvision.transforms.v2.functional (TF) named in its docstring, applied to each image with its own parameter.
def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """TF.adjust_brightness: factor * x, clamped (0 black, 1 unchanged)."""
    return (x * _per_image(factor)).clamp(0, 1)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """TF.adjust_contrast: blend with the image's mean grey level (0 flat grey, 1 unchanged)."""
    grey = x if x.shape[1] == 1 else (x[:, 0:1] * 0.2989 + x[:, 1:2] * 0.587 + x[:, 2:3] * 0.114)
    mean = grey.mean(dim=(-3, -2, -1), keepdim=True)  # (B, 1, 1, 1)
    f = _per_image(factor)
    return (x * f + mean * (1 - f)).clamp(0, 1)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """TF.adjust_sharpness: blend the interior with a 3x3 smoothed copy (0 smoothed, 1 unchanged, >1 sharper);
    the one-pixel border is kept, as PIL does."""
    h, w = x.shape[-2:]
    if h <= 2 or w <= 2:
        return x
    inner = x[..., 1:-1, 1:-1]
    # PIL's smoothing kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 = (3x3 box sum + 4 x centre) / 13
    smooth = (F.avg_pool2d(x, 3, stride=1) * 9 + 4 * inner) / 13  # (B, C, H-2, W-2)
    out = x.clone()
    out[..., 1:-1, 1:-1] = inner + (smooth - inner) * (1 - _per_image(factor))
    return out.clamp(0, 1)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """TF.posterize on float images: keep `bits` bits (2^bits grey levels) per channel."""
    levels = _per_image(torch.exp2(bits.to(x.dtype)))
    return torch.minimum((x * levels).floor(), levels - 1) / levels


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """TF.solarize: invert the pixels at or above the threshold."""
    return torch.where(x >= _per_image(threshold), 1 - x, x)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """TF.autocontrast: stretch each channel of each image to [0, 1] (a flat channel is left as it is)."""
    lo = x.amin(dim=(-2, -1), keepdim=True)  # (B, C, 1, 1)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    flat = hi == lo
    lo = torch.where(flat, torch.zeros_like(lo), lo)
    scale = torch.where(flat, torch.ones_like(hi), hi - lo)
    return ((x - lo) / scale).clamp(0, 1)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """TF.equalize: histogram equalization per image and channel on 256 grey levels, with PIL's lookup table.
    torchvision's kernel, written without in-place updates so that torch.vmap batches it."""
    q = (x * (256 - 1e-3)).to(torch.uint8)  # TF.to_dtype's float -> uint8 conversion
    flat = q.flatten(-2).long()  # (B, C, HW)
    hist = torch.zeros(*flat.shape[:-1], 256, dtype=torch.int32, device=x.device).scatter_add(
        -1, flat, torch.ones_like(flat, dtype=torch.int32))  # (B, C, 256)
    cum = hist.cumsum(-1)
    last = cum.argmax(-1, keepdim=True)  # the image's brightest level
    step = torch.div(flat.shape[-1] - hist.gather(-1, last), 255, rounding_mode="floor")  # (B, C, 1)
    lut = torch.div(cum[..., :-1] + step // 2, step.clamp(min=1), rounding_mode="floor").clamp(0, 255)
    lut = torch.cat([torch.zeros_like(lut[..., :1]), lut], -1)  # (B, C, 256), lut[0] = 0
    out = lut.gather(-1, flat).view_as(q)
    out = torch.where((step != 0)[..., None], out, q.to(out.dtype))  # a (nearly) flat image stays as it is
    return out.to(x.dtype) / 255


def affine(x: torch.Tensor, *, angle: torch.Tensor, shear_x: torch.Tensor, shear_y: torch.Tensor,
           tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Per-image affine maps about the image centre, bilinear, zero fill: image i equals
    TF.affine(img, angle=angle[i], translate=[tx[i], ty[i]], scale=1.0, interpolation=BILINEAR,
    shear=[degrees(atan(shear_x[i])), degrees(atan(shear_y[i]))]). Angles in degrees (TF.affine's sense, the
    opposite of TF.rotate's), shears as PIL matrix coefficients (source x = x + shear_x * y, about the centre),
    translations in pixels."""
    h, w = x.shape[-2:]
    f32 = torch.float32
    rot = torch.deg2rad(angle.to(f32))
    sx, sy = torch.atan(shear_x.to(f32)), torch.atan(shear_y.to(f32))
    # torchvision's _get_inverse_affine_matrix with centre 0 and scale 1, vectorised over the batch.
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -(a * torch.tan(sx) + torch.sin(rot))
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = torch.cos(rot) - c * torch.tan(sx)
    m00, m01, m10, m11 = d, -b, -c, a  # inverse of [[a, b], [c, d]] (determinant 1)
    t0 = -m00 * tx.to(f32) - m01 * ty.to(f32)
    t1 = -m10 * tx.to(f32) - m11 * ty.to(f32)
    # Pixel coordinates about the centre -> affine_grid's normalised ones (align_corners=False).
    theta = torch.stack([torch.stack([m00, m01 * h / w, 2 * t0 / w], -1),
                         torch.stack([m10 * w / h, m11, 2 * t1 / h], -1)], -2)  # (B, 2, 3)
    # F.affine_grid(theta, x.shape, align_corners=False), written out elementwise: torch.vmap has no rule for
    # it, and autocast leaves elementwise ops in float32 (sampling positions need the precision).
    ys = ((torch.arange(h, device=x.device, dtype=f32) * 2 + 1) / h - 1)[None, :, None]  # (1, H, 1)
    xs = ((torch.arange(w, device=x.device, dtype=f32) * 2 + 1) / w - 1)[None, None, :]  # (1, 1, W)
    th = theta[:, :, :, None, None]  # (B, 2, 3, 1, 1)
    grid = torch.stack([th[:, 0, 0] * xs + th[:, 0, 1] * ys + th[:, 0, 2],
                        th[:, 1, 0] * xs + th[:, 1, 1] * ys + th[:, 1, 2]], -1)  # (B, H, W, 2): source (x, y)
    grid = grid.to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_cutout(x: torch.Tensor, max_size: float, fill: float = CUTOUT_FILL) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017) as FixMatch applies it: per image a square of side U(0, max_size) times
    the image size, centred uniformly in the image (clipped at its border), set to `fill`."""
    b, _, h, w = x.shape
    side = torch.rand(b, device=x.device) * max_size * min(h, w)  # (B,)
    cy = torch.rand(b, device=x.device) * h
    cx = torch.rand(b, device=x.device) * w
    rows = torch.arange(h, device=x.device) + 0.5  # pixel centres
    cols = torch.arange(w, device=x.device) + 0.5
    in_rows = (rows[None] - cy[:, None]).abs() < side[:, None] / 2  # (B, H)
    in_cols = (cols[None] - cx[:, None]).abs() < side[:, None] / 2  # (B, W)
    box = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (B, 1, H, W)
    return x.masked_fill(box, fill)
