"""Encoders out of run folders: rebuild the method from a checkpoint alone (its config and data spec), take
its `encoder_module()`, and wrap or export it (`genssl export RUN_DIR [--out FOLDER]`, default <run>/encoder/)."""

from __future__ import annotations

from pathlib import Path

from genssl.data.source import load_train_test
from genssl.data.spec import DataSpec
from genssl.encoders.format import SPEC_FILE, Encoder, export_encoder, infer_out_dim
from genssl.runs.run_dir import RunDir


def method_from_run(run_dir: str | Path, checkpoint: str = "best.pt", data=None, device="cpu"):
    """(method in eval mode with the checkpoint's weights, resolved RunConfig, checkpoint dict), rebuilt from the
    checkpoint alone (its config and data spec). Only a format-1 checkpoint (no data spec) needs `data`, the
    run's (train, test) or train ImageData, or else its dataset is loaded to learn the image shape."""
    run = RunDir(run_dir)
    run.require_run()
    spec = None
    if "data_spec" not in run.load_checkpoint(checkpoint):
        cfg = run.read_config()
        if data is None:
            train, _ = load_train_test(cfg.data, progress=False)
        else:
            train = data[0] if isinstance(data, (tuple, list)) else data
        split = run.read_split()
        split.check_against(len(train), str(run / RunDir.SPLIT))
        spec = DataSpec(train.image_shape, train.num_classes, len(split.labeled), len(split.unlabeled))
    return run.load_method(checkpoint, device, spec=spec)


def encoder_from_run(run_dir: str | Path, checkpoint: str = "best.pt", data=None, device="cpu") -> Encoder:
    """The run's encoder, built in memory from its checkpoint (nothing is written)."""
    method, cfg, ckpt = method_from_run(run_dir, checkpoint, data, device)
    if not method.has_encoder:
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
