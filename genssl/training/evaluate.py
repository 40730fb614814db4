"""Re-evaluate a finished run from its folder: the saved config, split and chosen checkpoint."""

from __future__ import annotations

from pathlib import Path

from genssl.data.batching import to_float
from genssl.config import build_run_config, load_yaml
from genssl.data.datasets import load_dataset
from genssl.data.split import Split
from genssl.encoders.from_run import method_from_run
from genssl.training.device import resolve_device
from genssl.training.metrics import accuracy


def load_run(run_dir: str | Path, checkpoint: str = "best.pt", device: str = "auto", data=None):
    """(method in eval mode with the checkpoint's weights and its readout fitted, resolved config, split,
    (train, test)). `data` = (train, test) for runs trained on in-memory data; else the run's dataset is loaded."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a genssl run folder (no config.yaml)")
    cfg = build_run_config(load_yaml(run_dir / "config.yaml"))
    dev = resolve_device(device)
    train, test = data if data is not None else load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.download)
    method, cfg, _ = method_from_run(run_dir, checkpoint, data=(train, test), device=dev)
    split = Split.load(run_dir / "split.pt")
    x_l = to_float(train.images[split.labeled].to(dev))
    method.fit_readout(x_l, train.labels[split.labeled].to(dev), seed=cfg.train.seed)  # as in training
    method.eval()
    return method, cfg, split, (train, test)


def evaluate_run(run_dir: str | Path, checkpoint: str = "best.pt", device: str = "auto") -> dict:
    method, cfg, split, (train, test) = load_run(run_dir, checkpoint, device)
    dev = next(method.parameters()).device
    test_acc = accuracy(method, test.images.to(dev), test.labels.to(dev), cfg.train.eval_batch_size,
                        cfg.train.precision)
    val = split.val.to(train.images.device)
    val_acc = accuracy(method, train.images[val].to(dev), train.labels[val].to(dev), cfg.train.eval_batch_size,
                       cfg.train.precision)
    return {"run_dir": str(run_dir), "checkpoint": checkpoint, "method": cfg.method_name, "test_acc": test_acc,
            "val_acc": val_acc}
