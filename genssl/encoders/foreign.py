"""Foreign pretrained encoders: torchvision architectures with a local weights file, and raw state_dicts
loaded into a user's module through a key map. Both end as the same `Encoder` that genssl's own exports give.

Nothing here downloads: weights are local files, read with torch.load(weights_only=True).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from genssl.encoders.format import Encoder, infer_out_dim, load_state_checked
from genssl.fileio import CheckpointError, safe_torch_load
from genssl.registry import register_encoder_arch

IMAGENET_NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.Linear head to cut off")
    return found[-1]


def _replace(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


@register_encoder_arch("torchvision_features")
class TorchvisionFeatures(nn.Module):
    """A torchvision classification model with its final Linear replaced by Identity: penultimate features."""

    def __init__(self, name: str, num_classes: int = 1000):
        super().__init__()
        import torchvision

        try:
            model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        except ValueError as e:
            raise ValueError(f"unknown torchvision architecture {name!r}: {e}") from None
        self.name, self.num_classes = name, int(num_classes)
        self.head_name, head = _last_linear(model)
        self.out_dim = head.in_features
        _replace(model, self.head_name, nn.Identity())
        self.model = model
        size = getattr(model, "image_size", None)  # vision transformers fix their input size
        self.input_shape = (3, size, size) if size else (3, None, None)

    def spec_args(self) -> dict:
        return {"name": self.name, "num_classes": self.num_classes}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, out_dim)
        return self.model(x)


def _unwrap(state, where: str):
    """Checkpoints often nest the state_dict under one key ({"state_dict": ...}); take it out."""
    if isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        for key in _WRAPPER_KEYS:
            if isinstance(state.get(key), dict):
                return state[key]
        raise CheckpointError(f"{where}: not a state_dict and none of {', '.join(_WRAPPER_KEYS)} holds one "
                              f"(top-level keys: {list(state)[:8]})")
    return state


def load_torchvision_encoder(name: str, weights, normalization=None, device="cpu") -> Encoder:
    """`load_encoder("torchvision:resnet18", weights="resnet18.pth")`: the architecture's penultimate-layer
    features with the weights of a local file (the torchvision release files are plain state_dicts). The
    default normalization is ImageNet's, as torchvision's own weights expect."""
    if weights is None:
        raise ValueError(f"torchvision:{name} needs weights=<path to a local state_dict file> (genssl never "
                         f"downloads); e.g. torch.save(torchvision.models.{name}(weights=...).state_dict(), path)")
    where = str(weights)
    state = _unwrap(safe_torch_load(weights) if isinstance(weights, (str, Path)) else weights, where)
    probe = TorchvisionFeatures(name)
    head = probe.head_name
    if f"{head}.weight" not in state:
        raise CheckpointError(f"{where}: no {head}.weight in the file, so it is not a torchvision {name} "
                              f"state_dict (first keys: {list(state)[:5]})")
    num_classes = state[f"{head}.weight"].shape[0]
    net = TorchvisionFeatures(name, num_classes) if num_classes != probe.num_classes else probe
    body = {f"model.{k}": v for k, v in state.items() if not k.startswith(f"{head}.")}
    load_state_checked(net, body, where)
    return Encoder(net.to(device), net.input_shape, net.out_dim,
                   IMAGENET_NORMALIZATION if normalization is None else normalization,
                   {"torchvision": name, "weights": where}).to(device)


def map_keys(state: dict, key_map) -> dict:
    """Rename state_dict keys: key_map is a callable old -> new (None drops the key), or a dict of
    old_prefix -> new_prefix (None drops keys with that prefix; the longest matching prefix wins)."""
    if key_map is None:
        return dict(state)
    if isinstance(key_map, dict):
        prefixes = sorted(key_map, key=len, reverse=True)

        def fn(k):
            for p in prefixes:
                if k.startswith(p):
                    return None if key_map[p] is None else key_map[p] + k[len(p):]
            return k
    elif callable(key_map):
        fn = key_map
    else:
        raise ValueError(f"key_map must be a callable or a dict of prefixes, got {type(key_map).__name__}")
    out = {}
    for k, v in state.items():
        new = fn(k)
        if new is None:
            continue
        if new in out:
            raise ValueError(f"key_map sends two keys to {new!r} (one of them {k!r})")
        out[new] = v
    return out


def load_state_dict_encoder(state, module: nn.Module, key_map=None, input_shape=None, normalization=None,
                            out_dim: int | None = None, device="cpu") -> Encoder:
    """A raw state_dict (or a path to one) loaded into a copy of `module` after renaming its keys."""
    where = str(state) if isinstance(state, (str, Path)) else "state_dict"
    if isinstance(state, (str, Path)):
        state = safe_torch_load(state)
    state = map_keys(_unwrap(state, where), key_map)
    net = copy.deepcopy(module).cpu()  # the caller's module keeps its weights and its requires_grad flags
    load_state_checked(net, state, where)
    input_shape = input_shape if input_shape is not None else getattr(module, "input_shape", None)
    if input_shape is None:
        raise ValueError("a foreign module needs input_shape=(C, H, W) (None for a free height/width)")
    out_dim = out_dim or infer_out_dim(net, input_shape) or getattr(net, "out_dim", None)
    if out_dim is None:
        raise ValueError("cannot infer the feature width with a free input size: pass out_dim=")
    return Encoder(net.to(device), input_shape, out_dim, normalization, {"foreign": where}).to(device)
