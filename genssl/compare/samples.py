"""Grid entries derived from another entry's runs: the generated-samples classifier (genssl.downstream.samples).

In a grid, ``sgan+samples: {samples_from: sgan, classifier: {steps: 1000}}`` trains, for every label count and
seed, a fresh classifier on the labeled split of the finished ``sgan`` run of the same label count and seed
plus confident samples of its generator, chooses it on that run's validation split and reports its test
accuracy like any other run. Any entry whose method implements ``sample`` works (SGAN; M2 with
``label_source: conditional``). Its wall time includes the source run's, since the samples cost that training.

The derived run is a run like the others, written through its RunDir under the folder's lock: config.yaml (the
source run and the classifier config), tb/ (training losses and val/acc per evaluation), best.pt, gate.pt and
results.json, so TensorBoard, `genssl predict` and `genssl export` read it as they read any run. best.pt is a
`supervised`-method checkpoint: the samples classifier is `make_classifier(arch, shape, K, hidden, dropout)`,
exactly the network a Supervised method holds as `net`, so its weights are saved in that method's state_dict
layout with a resolved config that names `supervised` and the classifier's arch, widths, optimizer, steps and
seed (the data config is the source run's). `load_method` then rebuilds it with no special case; the checkpoint's
`sample_classifier` entry (and results.json) says where it came from. Nothing resumes it (an interrupted one
restarts from scratch, seeded), so best.pt is written once, at the end, and the folder is cleared first.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import yaml

from genssl.config import ConfigError, RunConfig, build_run_config, from_dict, to_dict
from genssl.data.batching import to_float
from genssl.data.source import class_names
from genssl.downstream.samples import SampleClassifierConfig, accuracy, train_sample_classifier
from genssl.encoders.density import write_gate
from genssl.fileio import atomic_write_text
from genssl.methods.detectors import fit_gate
from genssl.registry import get_method_class
from genssl.runs.run_dir import RunDir, hold_runs
from genssl.training.evaluate import load_run
from genssl.training.monitor import Monitor

ENTRY_KEYS = ("samples_from", "classifier")


def is_samples_entry(entry) -> bool:
    return isinstance(entry, dict) and "samples_from" in entry


def samples_config(entry: dict, where: str, seed: int):
    """The SampleClassifierConfig of an entry (its seed is the grid's), with errors naming the bad key."""
    extra = sorted(set(entry) - set(ENTRY_KEYS))
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)} in a samples entry; valid keys: "
                          f"{', '.join(ENTRY_KEYS)}")
    raw = dict(entry.get("classifier") or {})
    if "seed" in raw:
        raise ConfigError(f"{where}: classifier.seed comes from the grid's seeds; remove it")
    try:
        return from_dict(SampleClassifierConfig, {**raw, "seed": seed}, f"{where}.classifier")
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from e


def load_source(run_dir: Path, data=None, device: str = "auto"):
    """(method with the source run's best weights, in eval mode with its readout fitted; cfg; split;
    (train, test)): genssl.training.evaluate.load_run, which also takes `data` for runs trained on in-memory data."""
    return load_run(run_dir, RunDir.BEST, device, data=data)


def checkpoint_config(source: RunConfig, scfg: SampleClassifierConfig, name: str) -> RunConfig:
    """The resolved config best.pt carries: a `supervised` run of the classifier's network and optimizer on the
    source run's data, with the classifier's steps, evaluation cadence, batch sizes and seed."""
    raw = source.to_dict()
    raw["name"] = name
    raw["method"] = {"name": "supervised", "arch": scfg.arch, "hidden": list(scfg.hidden), "dropout": scfg.dropout,
                     "lr": scfg.lr, "weight_decay": scfg.weight_decay}
    raw["train"] = {**raw["train"], "steps": scfg.steps, "eval_every": scfg.eval_every, "seed": scfg.seed,
                    "batch_size": scfg.batch_size, "labeled_batch_size": scfg.labeled_batch_size}
    return build_run_config(raw)


def run_samples_classifier(source_dir: Path, run_dir: Path, scfg, data=None, threads: int = 0) -> dict:
    """Train the generated-samples classifier on a finished source run, holding `run_dir`'s lock; write its
    config.yaml, tb/, best.pt, gate.pt (with validation images) and results.json (see the module docstring)."""
    if threads:
        torch.set_num_threads(threads)
    with hold_runs([run_dir]):
        run = RunDir(run_dir)
        run.clear()  # an interrupted attempt's events and files: this one starts over
        return _run(source_dir, run, scfg, data)


def _run(source_dir: Path, run: RunDir, scfg, data) -> dict:
    start = time.perf_counter()
    source_results = RunDir(source_dir).read_results()
    method, cfg, split, (train, test) = load_source(source_dir, data)
    dev = next(method.parameters()).device
    atomic_write_text(yaml.safe_dump({"samples_from": str(source_dir),
                                      "classifier": to_dict(scfg)}, sort_keys=False), run.config_path)
    x_l, y_l = to_float(train.images[split.labeled].to(dev)), train.labels[split.labeled].to(dev)
    val_u8, y_val = train.images[split.val].to(dev), train.labels[split.val].to(dev)
    if not method.can_sample:
        raise ValueError(f"{source_dir}: method {cfg.method_name!r} cannot generate samples (can_sample is False); "
                         f"samples_from must name an entry whose method can sample")
    monitor = Monitor(run.tb)
    try:
        net, stats = train_sample_classifier(method, x_l, y_l, train.num_classes, scfg, to_float(val_u8), y_val,
                                             monitor=monitor)
    finally:
        monitor.close()
    test_acc = accuracy(net, to_float(test.images.to(dev)), test.labels.to(dev))
    # The classifier as the `supervised` method whose `net` it is (a strict load checks the layout).
    ckpt_cfg = checkpoint_config(cfg, scfg, run.path.name)
    as_method = get_method_class(ckpt_cfg.method_name)(ckpt_cfg.method, method.spec)
    as_method.net.load_state_dict(net.state_dict())
    as_method.to(dev).eval()
    run.save_checkpoint(RunDir.BEST, {
        "method": ckpt_cfg.method_name, "config": ckpt_cfg.to_dict(), "data_spec": method.spec.to_dict(),
        "class_names": class_names(train, cfg.data.dataset, cfg.data.classes), "model": as_method.state_dict(),
        "step": stats["best_step"], "val_acc": stats["best_val_acc"],
        "sample_classifier": {"samples_from": str(source_dir), "source_method": cfg.method_name,
                              "classifier": to_dict(scfg)}})
    if val_u8.shape[0]:  # the atypical-input gate of genssl predict, as the Trainer writes it for its pick
        write_gate(run.path, fit_gate(as_method, (x_l, y_l), (val_u8, y_val), ckpt_cfg.train.eval_batch_size,
                                      stats["best_step"], pool=train.images[split.unlabeled]))
    own = time.perf_counter() - start
    results = {
        "method": "sample_classifier", "source_method": cfg.method_name, "dataset": cfg.data.dataset,
        "n_labels": cfg.data.n_labels, "seed": scfg.seed, "test_acc": test_acc,
        "best_val_acc": stats["best_val_acc"], "best_step": stats["best_step"], "steps": scfg.steps,
        "kept_fraction": stats["kept_fraction"], "source_test_acc": source_results["test_acc"],
        "own_wall_time_s": own, "wall_time_s": own + source_results["wall_time_s"],
        "device": source_results.get("device", ""), "source_run": str(source_dir),
    }
    run.write_results(results)
    return results
