"""Re-evaluate a finished run from its folder: the model is rebuilt from its checkpoint alone; the dataset is
read only for the images it is scored on (validation and test)."""

from __future__ import annotations

from pathlib import Path

from genssl.data.batching import to_float
from genssl.data.source import load_train_test, task_data
from genssl.encoders.from_run import method_from_run
from genssl.runs.run_dir import RunDir
from genssl.training.device import resolve_device, resolve_precision
from genssl.training.metrics import accuracy


def load_run(run_dir: str | Path, checkpoint: str = "best.pt", device: str = "auto", data=None):
    """(method in eval mode with the checkpoint's weights, resolved config, split, (train, test)). `data` =
    (train, test) for runs trained on in-memory data; else the run's dataset is loaded. A readout fitted during
    training (M1's) comes back from the checkpoint; one from an older checkpoint is refitted here."""
    run = RunDir(run_dir)
    cfg = run.read_config()
    dev = resolve_device(device)
    train, test = task_data(*(data if data is not None else load_train_test(cfg.data, progress=False)), cfg.data)
    method, cfg, ckpt = method_from_run(run_dir, checkpoint, data=(train, test), device=dev)
    split = run.read_split()
    split.check_against(len(train), str(run / RunDir.SPLIT))
    if ckpt.get("format_version", 1) < 2:
        x_l = to_float(train.images[split.labeled].to(dev))
        method.fit_readout(x_l, train.labels[split.labeled].to(dev), seed=cfg.train.seed)  # as in training
    method.eval()
    return method, cfg, split, (train, test)


def evaluate_run(run_dir: str | Path, checkpoint: str = "best.pt", device: str = "auto", data=None) -> dict:
    method, cfg, split, (train, test) = load_run(run_dir, checkpoint, device, data)
    dev = next(method.parameters()).device
    bs, precision = cfg.train.eval_batch_size, resolve_precision(cfg.train.precision, dev, type(method), cfg.method)[0]
    test_acc = accuracy(method, test.images.to(dev), test.labels.to(dev), bs, precision)
    val = split.val.to(train.images.device)
    val_acc = accuracy(method, train.images[val].to(dev), train.labels[val].to(dev), bs, precision)
    return {"run_dir": str(run_dir), "checkpoint": checkpoint, "method": cfg.method_name, "test_acc": test_acc,
            "val_acc": val_acc}
