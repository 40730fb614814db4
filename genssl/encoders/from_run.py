"""Encoders out of run folders: rebuild the method from a checkpoint alone (its config and data spec), take
its `encoder_module()`, and wrap or export it (`genssl export RUN_DIR [--out FOLDER]`, default <run>/encoder/).
The export also holds feature_density.pt, the class-conditional Gaussian of the encoder's features
(genssl.encoders.density): the run's own, fitted at the end of training (gate.pt), when the export is of the
checkpoint it was fitted for; else fitted at export on the run's labeled and validation images."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from genssl.data.batching import to_float
from genssl.data.source import load_train_test, task_data
from genssl.data.spec import DataSpec
from genssl.data.task import task_num_classes
from genssl.encoders.density import DENSITY_FILE, FeatureDensity, fit_with_validation, gate_density, read_gate
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
    """Write the run's encoder to `out` (default <run_dir>/encoder/) as weights.pt + encoder.yaml, and its feature
    density as feature_density.pt where the run has one or its dataset can be read (`export_density`)."""
    out = Path(out) if out is not None else Path(run_dir) / "encoder"
    if (out / SPEC_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds an exported encoder; pass overwrite=True (--force) to replace it")
    (out / DENSITY_FILE).unlink(missing_ok=True)  # never leave the density of an earlier export beside new weights
    encoder = encoder_from_run(run_dir, checkpoint, data)
    density = export_density(run_dir, encoder, checkpoint, data)
    if density is not None:
        out.mkdir(parents=True, exist_ok=True)
        density.save(out / DENSITY_FILE)
    return export_encoder(encoder, out)  # the spec last: a folder with an encoder.yaml is complete


def export_density(run_dir: str | Path, encoder: Encoder, checkpoint: str = "best.pt", data=None
                   ) -> FeatureDensity | None:
    """The feature density of the run's encoder: its gate.pt's, when that was fitted for this checkpoint's step
    (the Trainer fits it for best.pt); else fitted now on the encoder's features of the run's labeled and
    validation images (its dataset, never downloaded, or `data`); None where neither is possible (no gate.pt and
    no readable dataset or split, or no validation images)."""
    run = RunDir(run_dir)
    state = read_gate(run.path)
    if state is not None and state.get("density") is not None and state.get("step") == encoder.source.get("step"):
        return gate_density(state, str(run.path))
    if not run.has(RunDir.SPLIT):
        return None
    cfg = run.read_config()
    if data is None:
        try:
            data = load_train_test(replace(cfg.data, download=False), progress=False)
        except (FileNotFoundError, ValueError):  # not found (DatasetNotFoundError), or in-memory data of no name
            return None
    train = task_data(*data, cfg.data)[0] if isinstance(data, (tuple, list)) else data
    split = run.read_split()
    split.check_against(len(train), str(run / RunDir.SPLIT))
    if split.val.numel() == 0:
        return None
    lab, val = split.labeled.to(train.images.device), split.val.to(train.images.device)
    return fit_with_validation(_features(encoder, train.images[lab]), train.labels[lab].cpu(),
                               _features(encoder, train.images[val]), train.labels[val].cpu(),
                               task_num_classes(train, cfg.data.classes))


def _features(encoder: Encoder, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """encoder(x) of uint8 images, in batches: (N, D) float64 on the CPU."""
    device = next(encoder.parameters()).device
    with torch.no_grad():
        out = [encoder(to_float(xb.to(device))).double().cpu() for xb in images.split(batch_size)]
    return torch.cat(out)
