"""Encoders out of run folders: rebuild the method from config.yaml + split.pt + a checkpoint, take its
`encoder_module()`, and wrap or export it. `genssl export RUN_DIR [--out FOLDER]` (default <run>/encoder/)."""

from __future__ import annotations

from pathlib import Path

from genssl.config import build_run_config, load_yaml
from genssl.data.datasets import load_dataset
from genssl.data.spec import DataSpec
from genssl.data.split import Split
from genssl.registry import get_method_class
from genssl.fileio import CheckpointError, safe_torch_load
from genssl.encoders.format import SPEC_FILE, Encoder, export_encoder, infer_out_dim, load_state_checked


def method_from_run(run_dir: str | Path, checkpoint: str = "best.pt", data=None, device="cpu"):
    """(method in eval mode with the checkpoint's weights, resolved RunConfig, checkpoint dict). `data` is the
    run's (train, test) or train ImageData; without it the run's dataset is loaded to learn the image shape and
    class count (needed to rebuild the nets)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a genssl run folder (no config.yaml)")
    cfg = build_run_config(load_yaml(run_dir / "config.yaml"))
    if data is None:
        train, _ = load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.download)
    else:
        train = data[0] if isinstance(data, (tuple, list)) else data
    split = Split.load(run_dir / "split.pt")
    split.check_against(len(train), str(run_dir / "split.pt"))
    spec = DataSpec(train.image_shape, train.num_classes, len(split.labeled), len(split.unlabeled))
    method = get_method_class(cfg.method_name)(cfg.method, spec)
    path = run_dir / checkpoint
    ckpt = safe_torch_load(path)
    if "model" in ckpt:
        state = ckpt["model"]
    elif "method_state" in ckpt:
        state = ckpt["method_state"]["model"]
    else:
        raise CheckpointError(f"{path}: neither a best.pt ('model') nor a last.pt ('method_state') checkpoint")
    load_state_checked(method, state, str(path))
    return method.to(device).eval(), cfg, ckpt


def encoder_from_run(run_dir: str | Path, checkpoint: str = "best.pt", data=None, device="cpu") -> Encoder:
    """The run's encoder, built in memory from its checkpoint (nothing is written)."""
    method, cfg, ckpt = method_from_run(run_dir, checkpoint, data, device)
    if not callable(getattr(method, "encoder_module", None)):
        raise ValueError(f"method {cfg.method_name!r} has no encoder_module(), so its encoder cannot be exported")
    net = method.encoder_module()
    shape = method.spec.image_shape
    source = {"method": cfg.method_name, "config_digest": cfg.digest(), "run": str(run_dir),
              "checkpoint": checkpoint, "step": int(ckpt.get("step", -1)), "dataset": cfg.data.dataset,
              "n_labels": cfg.data.n_labels, "seed": cfg.train.seed}
    if "val_acc" in ckpt:
        source["val_acc"] = float(ckpt["val_acc"])
    return Encoder(net, shape, infer_out_dim(net, shape), None, source).to(device)


def export_run(run_dir: str | Path, out: str | Path | None = None, checkpoint: str = "best.pt", data=None,
               overwrite: bool = False) -> Path:
    """Write the run's encoder to `out` (default <run_dir>/encoder/) as weights.pt + encoder.yaml."""
    out = Path(out) if out is not None else Path(run_dir) / "encoder"
    if (out / SPEC_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds an exported encoder; pass overwrite=True (--force) to replace it")
    return export_encoder(encoder_from_run(run_dir, checkpoint, data), out)
