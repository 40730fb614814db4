"""`load_encoder`, the one entry point for pretrained encoders: an exported folder, a genssl run folder, a
released name, a torchvision architecture or a foreign state_dict; every source returns the same frozen,
eval-mode `Encoder`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from genssl.encoders.foreign import load_state_dict_encoder, load_torchvision_encoder
from genssl.encoders.format import SPEC_FILE, Encoder, load_exported
from genssl.encoders.from_run import encoder_from_run
from genssl.encoders.released import PACKAGE_ROOT, RELEASES, load_released
from genssl.runs.run_dir import RunDir

RELEASED_ROOT = PACKAGE_ROOT  # the package's own copies of the released encoders (genssl.encoders.released)


def list_released(root: str | Path | None = None) -> list[str]:
    """The released encoders' names (genssl.encoders.released.RELEASES), or the encoder folders under `root`."""
    if root is None:
        return sorted(RELEASES)
    root = Path(root)
    return sorted(p.parent.name for p in root.glob(f"*/{SPEC_FILE}")) if root.is_dir() else []


def load_encoder(source, *, weights=None, module: nn.Module | None = None, key_map=None, input_shape=None,
                 normalization=None, out_dim: int | None = None, device: str | torch.device = "cpu",
                 checkpoint: str = "best.pt", released_root: str | Path | None = None) -> Encoder:
    """One entry point for every kind of pretrained encoder; always a frozen, eval-mode `Encoder`.

    source:
      - an exported encoder folder (holding encoder.yaml),
      - a genssl run folder: its `encoder/` export if present and not older than best.pt, else exported on the
        fly (in memory) from `checkpoint`,
      - a released encoder name (e.g. "fmnist-m1"; genssl.encoders.released: the installed copy, the torch.hub
        cache, or a download checked against its sha256), or a folder under `released_root`,
      - ``"torchvision:<arch>"`` with ``weights=<local .pth>``: features are the penultimate layer,
      - a state_dict (or a path to one) with ``module=<nn.Module>`` and an optional ``key_map`` (a callable
        old_key -> new_key or None to drop, or a dict of old_prefix -> new_prefix or None); ``input_shape`` and
        ``normalization`` describe what the module expects,
      - an `Encoder`, returned as it is.
    """
    if isinstance(source, Encoder):
        return source.to(device)
    if module is not None:
        return load_state_dict_encoder(source, module, key_map=key_map, input_shape=input_shape,
                                       normalization=normalization, out_dim=out_dim, device=device)
    if not isinstance(source, (str, Path)):
        raise ValueError(f"load_encoder: source must be a path, a name or an Encoder; a {type(source).__name__} "
                         f"(state_dict?) also needs module=<the nn.Module it belongs to>")
    text = str(source)
    if text.startswith("torchvision:"):
        return load_torchvision_encoder(text.split(":", 1)[1], weights, normalization=normalization,
                                        device=device)
    path = Path(source)
    if (path / SPEC_FILE).is_file():
        return load_exported(path, device)
    if RunDir(path).is_run():
        exported, best = path / RunDir.ENCODER / SPEC_FILE, path / RunDir.BEST
        # use the run's export unless best.pt was rewritten after it (a resumed run found a better step)
        if checkpoint == "best.pt" and exported.is_file() and (
                not best.is_file() or exported.stat().st_mtime >= best.stat().st_mtime):
            return load_exported(exported.parent, device)
        return encoder_from_run(path, checkpoint=checkpoint, device=device)
    if released_root is not None:
        root = Path(released_root)
        if "/" not in text and (root / text / SPEC_FILE).is_file():
            return load_exported(root / text, device)
    elif text in RELEASES:
        return load_released(text, device)
    if path.is_file():
        raise ValueError(f"{path} is a file: a foreign state_dict needs module=<nn.Module> (and key_map), a "
                         f"torchvision one load_encoder('torchvision:<arch>', weights='{path}')")
    released = list_released(released_root)
    where = f" in {released_root}" if released_root is not None else ""
    raise FileNotFoundError(f"load_encoder: {text!r} is not an encoder folder (no {SPEC_FILE}), a genssl run "
                            f"folder (no config.yaml), 'torchvision:<arch>', or a released encoder "
                            f"(released: {', '.join(released) or 'none'}{where})")
