"""torch.hub entry points for genssl encoders (local clones; nothing is downloaded):

    import torch
    enc = torch.hub.load("/path/to/genssl", "fmnist_m1", source="local")           # the released M1 encoder
    enc = torch.hub.load("/path/to/genssl", "encoder", "runs/my-run", source="local")  # any load_encoder source
    feats = enc(images)  # (B, 1, 28, 28) float in [0, 1] -> (B, 10)

Each entry returns the same frozen, eval-mode genssl.encoders.format.Encoder that genssl.load_encoder gives.
"""

from pathlib import Path as _Path

dependencies = ["torch", "yaml"]

_RELEASED = _Path(__file__).resolve().parent / "checkpoints" / "released"


def encoder(source, **kwargs):
    """Any genssl.load_encoder source: an exported encoder folder, a run folder, a released name,
    "torchvision:<arch>" with weights=<local file>, or a state_dict with module= and key_map=."""
    from genssl.encoders.load import load_encoder

    kwargs.setdefault("released_root", _RELEASED)
    return load_encoder(source, **kwargs)


def fmnist_m1(pretrained: bool = True, device: str = "cpu"):
    """M1 VAE encoder trained on Fashion-MNIST (no labels): (B, 1, 28, 28) in [0, 1] -> (B, 10) posterior means;
    `.posterior(x)` gives (mu, logvar). See checkpoints/released/fmnist-m1/MODEL_CARD.md."""
    if not pretrained:
        raise ValueError("fmnist_m1 exists only as a trained encoder; build an untrained one with genssl.nn.vae")
    return encoder("fmnist-m1", device=device)
