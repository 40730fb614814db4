"""Grid entries derived from another entry's runs: the generated-samples classifier (genssl.downstream.samples).

In a grid, ``sgan+samples: {samples_from: sgan, classifier: {steps: 1000}}`` trains, for every label count and
seed, a fresh classifier on the labeled split of the finished ``sgan`` run of the same label count and seed
plus confident samples of its generator, chooses it on that run's validation split and reports its test
accuracy like any other run. Any entry whose method implements ``sample`` works (SGAN; M2 with
``label_source: conditional``). The derived run folder holds config.yaml (the source run and the classifier
config) and results.json; its wall time includes the source run's, since the samples cost that training.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import yaml

from genssl.config import ConfigError, from_dict, to_dict
from genssl.data.batching import to_float
from genssl.downstream.samples import SampleClassifierConfig, accuracy, train_sample_classifier
from genssl.fileio import atomic_write_text
from genssl.runs.run_dir import RunDir
from genssl.training.evaluate import load_run

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


def run_samples_classifier(source_dir: Path, run_dir: Path, scfg, data=None, threads: int = 0) -> dict:
    """Train the generated-samples classifier on a finished source run; write config.yaml and results.json."""
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    source_results = RunDir(source_dir).read_results()
    method, cfg, split, (train, test) = load_source(source_dir, data)
    dev = next(method.parameters()).device
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(yaml.safe_dump({"samples_from": str(source_dir),
                                      "classifier": to_dict(scfg)}, sort_keys=False),
                      RunDir(run_dir).config_path)
    x_l, y_l = to_float(train.images[split.labeled].to(dev)), train.labels[split.labeled].to(dev)
    x_val, y_val = to_float(train.images[split.val].to(dev)), train.labels[split.val].to(dev)
    if not method.can_sample:
        raise ValueError(f"{source_dir}: method {cfg.method_name!r} cannot generate samples (can_sample is False); "
                         f"samples_from must name an entry whose method can sample")
    net, stats = train_sample_classifier(method, x_l, y_l, train.num_classes, scfg, x_val, y_val)
    test_acc = accuracy(net, to_float(test.images.to(dev)), test.labels.to(dev))
    own = time.perf_counter() - start
    results = {
        "method": "sample_classifier", "source_method": cfg.method_name, "dataset": cfg.data.dataset,
        "n_labels": cfg.data.n_labels, "seed": scfg.seed, "test_acc": test_acc,
        "best_val_acc": stats["best_val_acc"], "best_step": stats["best_step"], "steps": scfg.steps,
        "kept_fraction": stats["kept_fraction"], "source_test_acc": source_results["test_acc"],
        "own_wall_time_s": own, "wall_time_s": own + source_results["wall_time_s"],
        "device": source_results.get("device", ""), "source_run": str(source_dir),
    }
    RunDir(run_dir).write_results(results)
    return results
