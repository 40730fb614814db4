"""`genssl compare`: a grid of methods x label counts x seeds, run (or reused) and tabulated.

Grid YAML::

    out: checkpoints/compare-fmnist
    overrides: {train: {steps: 2000}}         # applied to every run (optional)
    methods:                                   # display name -> run config (path relative to this file,
      supervised: fmnist_supervised.yaml       #                    or an inline mapping)
      pseudo_label: {method: {name: pseudo_label}, data: {dataset: fashion_mnist}}
    n_labels: [100, 1000]
    seeds: [0, 1, 2]

A run whose results.json exists is reused; one with only last.pt is resumed. So a stopped grid picks up
where it left off.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import atomic_write_text
from .config import ConfigError, build_run_config, load_yaml, merge, parse_overrides


@dataclass
class GridRun:
    label: str       # display name of the method entry
    n_labels: int
    seed: int
    raw: dict        # resolved raw config
    run_dir: Path


def load_grid(path: str | Path, overrides: list[str] | None = None, out: str | None = None):
    path = Path(path)
    grid = load_yaml(path)
    allowed = {"out", "overrides", "methods", "n_labels", "seeds"}
    unknown = sorted(set(grid) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown grid key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(allowed))}")
    if not isinstance(grid.get("methods"), dict) or not grid["methods"]:
        raise ConfigError(f"{path}: `methods` must map names to run configs")
    out_dir = Path(out or grid.get("out") or "checkpoints/compare")
    shared = merge(grid.get("overrides") or {}, parse_overrides(overrides or []))
    runs = []
    for label, entry in grid["methods"].items():
        raw = load_yaml(path.parent / entry) if isinstance(entry, str) else dict(entry)
        for n in _int_list(grid.get("n_labels", [100]), "n_labels", path):
            for seed in _int_list(grid.get("seeds", [0]), "seeds", path):
                cfg = merge(merge(raw, shared), {"data": {"n_labels": n}, "train": {"seed": seed}})
                build_run_config(cfg)  # validate every run before starting any
                runs.append(GridRun(label, n, seed, cfg, out_dir / "runs" / f"{label}-n{n}-s{seed}"))
    return out_dir, runs


def _int_list(v, key, path) -> list[int]:
    v = [v] if isinstance(v, int) else v
    if not isinstance(v, list) or not v or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise ConfigError(f"{path}: `{key}` must be an integer or a list of integers, got {v!r}")
    return v


def run_one(run: GridRun) -> dict:
    import json

    from .trainer import Trainer

    done = run.run_dir / "results.json"
    if done.is_file():
        return json.loads(done.read_text())
    cfg = build_run_config(run.raw)
    return Trainer(cfg, run_dir=run.run_dir, resume=(run.run_dir / "last.pt").is_file()).fit()


def summarize(runs: list[GridRun], results: list[dict]) -> list[dict]:
    rows: dict[tuple[str, int], list[dict]] = {}
    for run, res in zip(runs, results):
        rows.setdefault((run.label, run.n_labels), []).append(res)
    table = []
    for (label, n), rs in rows.items():
        accs = [100 * r["test_acc"] for r in rs]
        table.append({
            "method": label, "n_labels": n, "seeds": len(rs),
            "test_acc_mean": statistics.fmean(accs), "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "wall_time_s_mean": statistics.fmean(r["wall_time_s"] for r in rs),
        })
    return table


def markdown_table(table: list[dict]) -> str:
    lines = ["| method | labels | test accuracy (%) | seeds | wall time / run (s) |", "|---|---:|---:|---:|---:|"]
    for r in table:
        lines.append(f"| {r['method']} | {r['n_labels']} | {r['test_acc_mean']:.2f} ± {r['test_acc_std']:.2f} | "
                     f"{r['seeds']} | {r['wall_time_s_mean']:.0f} |")
    return "\n".join(lines) + "\n"


def csv_table(table: list[dict]) -> str:
    keys = ["method", "n_labels", "seeds", "test_acc_mean", "test_acc_std", "wall_time_s_mean"]
    lines = [",".join(keys)]
    for r in table:
        lines.append(",".join(f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for k in keys))
    return "\n".join(lines) + "\n"


def run_grid(path: str | Path, overrides: list[str] | None = None, out: str | None = None) -> list[dict]:
    out_dir, runs = load_grid(path, overrides, out)
    results = []
    for i, run in enumerate(runs):
        print(f"[{i + 1}/{len(runs)}] {run.label} n_labels={run.n_labels} seed={run.seed} -> {run.run_dir}",
              flush=True)
        results.append(run_one(run))
    table = summarize(runs, results)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(markdown_table(table), out_dir / "results.md")
    atomic_write_text(csv_table(table), out_dir / "results.csv")
    print()
    print(markdown_table(table))
    print(f"Table: {out_dir / 'results.md'} and {out_dir / 'results.csv'}")
    print(f"TensorBoard: tensorboard --logdir {out_dir / 'runs'}")
    return table
