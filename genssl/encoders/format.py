"""The exported-encoder format: the frozen `Encoder` wrapper, `export_encoder`, and reading an export back.

An exported encoder is a folder holding the weights (a state_dict saved by torch.save) and `encoder.yaml`, a
readable spec in the spirit of diffusers' weights + config.json; never a pickled module::

    format: genssl-encoder
    format_version: 1
    arch: vae_mlp_encoder          # a name registered with @register_encoder_arch
    args: {in_dim: 784, hidden: [500, 500], latent: 50}   # keyword arguments that rebuild the net
    input_shape: [1, 28, 28]       # (C, H, W); null for a size the net does not fix
    input_range: [0, 1]            # forward() takes float images in this range ...
    normalization: null            # ... and applies {mean: [...], std: [...]} (per channel) itself
    out_dim: 50
    has_posterior: true            # the net has posterior(x) -> (mu, logvar)
    source: {method: vae_m1, config_digest: 3f2a..., ...}
    weights: weights.pt
    weights_sha256: ...

`genssl.encoders.load.load_encoder` is the one entry point that reads every kind of encoder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import yaml
from torch import nn

from genssl._version import __version__
from genssl.fileio import CheckpointError, atomic_torch_save, atomic_write_text, safe_torch_load
from genssl.nn.state import load_state_checked
from genssl.registry import ENCODER_ARCHS

FORMAT = "genssl-encoder"
FORMAT_VERSION = 1
SPEC_FILE = "encoder.yaml"
WEIGHTS_FILE = "weights.pt"

# ------------------------------------------------------------------------------------------------ the wrapper

def _check_normalization(normalization, channels: int):
    if normalization is None:
        return None
    if not isinstance(normalization, dict) or set(normalization) != {"mean", "std"}:
        raise ValueError(f"normalization must be None or {{'mean': [...], 'std': [...]}}, got {normalization!r}")
    mean, std = (list(map(float, normalization[k])) for k in ("mean", "std"))
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ValueError(f"normalization needs {channels} means and {channels} positive stds, got {normalization!r}")
    return {"mean": mean, "std": std}


class Encoder(nn.Module):
    """A frozen feature extractor: forward((B, C, H, W) float images in [0, 1]) -> (B, out_dim).

    It applies its own `normalization`, stays in eval mode even when a parent module calls .train() (it may sit
    inside a Method, e.g. M1 under M2), and its parameters never require grad (gradients still flow to x).
    `has_posterior` says whether the net is a Gaussian (VAE) encoder with `posterior(x) -> (mu, logvar)`; M1+M2
    needs one.
    """

    def __init__(self, net: nn.Module, input_shape, out_dim: int, normalization: dict | None = None,
                 source: dict | None = None):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"input_shape must be (C, H, W) with H/W None when free, got {input_shape!r}")
        self.net = net
        self.input_shape = tuple(None if d is None else int(d) for d in input_shape)
        self.out_dim = int(out_dim)
        self.normalization = _check_normalization(normalization, self.input_shape[0])
        self.source = dict(source or {})
        if self.normalization is not None:  # non-persistent: the state_dict is exactly the net's weights
            c = self.input_shape[0]
            self.register_buffer("_mean", torch.tensor(self.normalization["mean"]).view(1, c, 1, 1), persistent=False)
            self.register_buffer("_std", torch.tensor(self.normalization["std"]).view(1, c, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    @property
    def arch(self) -> str | None:
        return getattr(type(self.net), "encoder_arch", None)

    @property
    def has_posterior(self) -> bool:
        return callable(getattr(self.net, "posterior", None))

    def train(self, mode: bool = True) -> "Encoder":
        return super().train(False)  # frozen: batch norm statistics and dropout never switch to training

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Check the input shape and apply the normalization."""
        expected = self.input_shape
        if x.dim() != 4 or x.shape[1] != expected[0] or any(e is not None and e != s
                                                            for e, s in zip(expected[1:], x.shape[2:])):
            shape = "x".join("*" if d is None else str(d) for d in expected)
            raise ValueError(f"encoder expects (B, {shape}) images, got {tuple(x.shape)}"
                             + (" (grayscale into an RGB net: x.expand(-1, 3, -1, -1))"
                                if x.dim() == 4 and x.shape[1] == 1 and expected[0] == 3 else ""))
        if x.dtype == torch.uint8:
            raise ValueError("encoder expects float images in [0, 1], got uint8; use x.float() / 255")
        if self.normalization is not None:
            x = (x - self._mean) / self._std
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, D)
        return self.net(self.prepare(x))

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> (mu, logvar), each (B, D), for Gaussian (VAE) encoders."""
        if not self.has_posterior:
            raise ValueError(f"encoder {self.arch or type(self.net).__name__} has no Gaussian posterior (it is not "
                             f"a VAE encoder); only features via forward(x)")
        return self.net.posterior(self.prepare(x))

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, out_dim={self.out_dim}, normalization={self.normalization}"


def infer_out_dim(net: nn.Module, input_shape) -> int | None:
    """Output width from one forward pass on zeros, when the input shape is fully known."""
    if any(d is None for d in input_shape):
        return None
    p = next(iter(net.parameters()), None)
    modes = {m: m.training for m in net.modules()}  # per module: a fresh wrapper may hold an EMA net in eval mode
    with torch.no_grad():
        net.eval()
        out = net(torch.zeros(1, *input_shape, device=p.device if p is not None else "cpu"))
    for m, training in modes.items():
        m.training = training
    if out.dim() != 2:
        raise ValueError(f"an encoder must map images to (B, D) features, {type(net).__name__} gave {tuple(out.shape)}")
    return out.shape[1]


# ------------------------------------------------------------------------------------------------ export / load

def _yaml_roundtrip(value, what: str):
    try:
        text = yaml.safe_dump(value)
    except yaml.YAMLError as e:
        raise ValueError(f"{what} must be plain YAML values (numbers, strings, lists, dicts): {e}") from None
    return yaml.safe_load(text)


def export_encoder(module: nn.Module, folder: str | Path, *, input_shape=None, normalization=None,
                   source_method: str | None = None, config_digest: str | None = None,
                   extra: dict | None = None) -> Path:
    """Write `module` (a registered-arch net, or an Encoder wrapping one) to `folder`: weights.pt + encoder.yaml.
    The spec is written last, so a folder with an encoder.yaml is complete. Returns the folder."""
    folder = Path(folder)
    if isinstance(module, Encoder):
        input_shape = module.input_shape if input_shape is None else input_shape
        normalization = module.normalization if normalization is None else normalization
        source = {**module.source}
        module = module.net
    else:
        source = {}
    arch = getattr(type(module), "encoder_arch", None)
    if arch not in ENCODER_ARCHS or ENCODER_ARCHS.get(arch) is not type(module):
        raise ValueError(f"cannot export {type(module).__name__}: its class is not registered with "
                         f"genssl.registry.register_encoder_arch (registered: {', '.join(ENCODER_ARCHS.names())})")
    if input_shape is None:
        raise ValueError("export_encoder needs input_shape=(C, H, W)")
    input_shape = [None if d is None else int(d) for d in input_shape]
    args = _yaml_roundtrip(module.spec_args(), f"{arch}.spec_args()")
    out_dim = infer_out_dim(module, input_shape) or getattr(module, "out_dim", None)
    if out_dim is None:
        raise ValueError(f"cannot tell the output width of {arch}: give the net an `out_dim` attribute")
    source.update({k: v for k, v in {"method": source_method, "config_digest": config_digest}.items() if v})
    source.update(extra or {})
    state = {k: v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()}
    atomic_torch_save(state, folder / WEIGHTS_FILE)
    spec = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "arch": arch, "args": args,
        "input_shape": input_shape, "input_range": [0, 1],
        "normalization": _check_normalization(normalization, input_shape[0]),
        "out_dim": int(out_dim), "has_posterior": callable(getattr(module, "posterior", None)),
        "source": _yaml_roundtrip(source, "source"), "weights": WEIGHTS_FILE,
        "weights_sha256": hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest(),
        "genssl_version": __version__, "torch_version": torch.__version__.split("+")[0],
    }
    atomic_write_text(yaml.safe_dump(spec, sort_keys=False, default_flow_style=None), folder / SPEC_FILE)
    return folder


def read_spec(folder: str | Path) -> dict:
    path = Path(folder) / SPEC_FILE
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise CheckpointError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a genssl encoder spec (format must be {FORMAT!r})")
    if not isinstance(spec.get("format_version"), int) or spec["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {spec.get('format_version')!r} is not supported by this "
                              f"genssl (reads up to {FORMAT_VERSION}); upgrade genssl")
    need = ("arch", "args", "input_shape", "out_dim", "weights")
    if missing := [k for k in need if k not in spec]:
        raise CheckpointError(f"{path}: missing field(s) {', '.join(missing)}")
    return spec


def load_exported(folder: str | Path, device: str | torch.device = "cpu") -> Encoder:
    """Rebuild an exported encoder folder, checking the spec against the weights."""
    folder = Path(folder)
    spec = read_spec(folder)
    where = folder / SPEC_FILE
    cls = ENCODER_ARCHS.get(spec["arch"])
    try:
        net = cls(**(spec["args"] or {}))
    except TypeError as e:
        raise CheckpointError(f"{where}: args do not fit arch {spec['arch']!r}: {e}") from None
    weights = folder / spec["weights"]
    if spec.get("weights_sha256") and weights.is_file():
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        if digest != spec["weights_sha256"]:
            raise CheckpointError(f"{weights}: sha256 {digest[:12]}... differs from {where} "
                                  f"({spec['weights_sha256'][:12]}...): the weights were changed after export")
    load_state_checked(net, safe_torch_load(weights), str(weights))
    net = net.to(device)
    got = infer_out_dim(net, spec["input_shape"])
    if got is not None and got != spec["out_dim"]:
        raise CheckpointError(f"{where}: out_dim {spec['out_dim']} but the net gives {got} features")
    if bool(spec.get("has_posterior")) != callable(getattr(net, "posterior", None)):
        raise CheckpointError(f"{where}: has_posterior is {spec.get('has_posterior')} but arch {spec['arch']} "
                              f"{'has' if callable(getattr(net, 'posterior', None)) else 'lacks'} posterior(x)")
    source = {**(spec.get("source") or {}), "path": str(folder)}
    return Encoder(net, spec["input_shape"], spec["out_dim"], spec.get("normalization"), source).to(device)
