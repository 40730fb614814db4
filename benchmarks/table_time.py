"""How long the whole Fashion-MNIST table (experiments/table_fmnist.yaml: every method x 100/1000 labels x 3 seeds
at their default schedules) takes on this machine: a subset is measured and the rest extrapolated, the arithmetic
printed.

    .venv/bin/python benchmarks/table_time.py                        # on a GPU: the default grid and subset
    .venv/bin/python benchmarks/table_time.py --steps 300 --pack-seeds off
    .venv/bin/python benchmarks/table_time.py --dry-run              # anywhere: the plan and the schedules only

The subset: every entry of the grid at one label count (--n-labels, default the grid's first) with all its seeds,
run by `genssl compare` itself (genssl.compare.runner.run_grid: its --pack-seeds packing, the captured steps that
train.cuda_graph picks, evaluations, checkpoints), each run cut to --steps steps with 3 evaluations. Each unit (a
pack of seeds, or one run) gives its seconds per step, the slope of its budget clock between its first and last
evaluation (wall time on a GPU, CPU time on a CPU; start-up left out), and its start-up, its wall time less
steps x slope. At full length a unit costs start-up + its configured steps x slope; an entry at one label count
costs the sum over its units, and the table the sum over entries and label counts (a step costs the same at
every label count). A samples entry (samples_from) trains its classifier for --steps steps too and is scaled
linearly, start-up included (an overestimate). --json writes every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_MIN = 15.0  # issue 33: the whole table in <= 15 minutes on one H100/H200


def derived_grid(grid_path: Path, n_labels: int | None, steps: int, out: Path) -> Path:
    """The subset grid, written to out/grid.yaml: the grid's entries (config paths made absolute), one label
    count, its seeds, samples classifiers cut to `steps` steps, runs under out/runs."""
    import yaml

    from genssl.compare.samples import is_samples_entry
    from genssl.config import load_yaml

    grid = load_yaml(grid_path)
    base = grid_path.parent
    methods = {}
    for label, entry in grid["methods"].items():
        if isinstance(entry, str):
            entry = str((base / entry).resolve())
        elif is_samples_entry(entry):
            entry = {**entry, "classifier": {**(entry.get("classifier") or {}), "steps": steps,
                                             "eval_every": max(1, steps // 3)}}
        elif isinstance(entry, dict) and "config" in entry:
            entry = {**entry, "config": str((base / entry["config"]).resolve())}
        methods[label] = entry
    labels = grid.get("n_labels", [100])
    sub = {"out": str(out), "methods": methods, "n_labels": [n_labels or (labels[0] if isinstance(labels, list)
                                                                         else labels)]}
    for key in ("seeds", "overrides"):
        if key in grid:
            sub[key] = grid[key]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "grid.yaml"
    path.write_text(yaml.safe_dump(sub, sort_keys=False))
    return path


def overrides(steps: int, cuda_graph: str = "auto") -> list[str]:
    return [f"--train.steps={steps}", f"--train.eval_every={max(1, steps // 3)}", f"--train.ckpt_every={steps}",
            f"--train.log_every={min(50, steps)}", "--train.progress=false", f"--train.cuda_graph={cuda_graph}"]


def full_schedule(grid_path: Path) -> dict[str, dict[int, list[int]]]:
    """{entry: {label count: [configured steps of each seed's run]}} of the whole grid."""
    from genssl.compare.grid import load_grid

    _, runs = load_grid(grid_path, out=tempfile.mkdtemp(prefix="table_time_full_"))
    sched: dict[str, dict[int, list[int]]] = {}
    for r in runs:
        sched.setdefault(r.label, {}).setdefault(r.n_labels, []).append(r.steps)
    return sched


def units_of(entry_runs: list[dict], steps: int) -> list[dict]:
    """The measured units of one entry from its runs' results.json: a pack (seeds_trained_together) once, or each
    run; with their wall time, clock slope per step (the whole unit's) and start-up."""
    units, seen = [], set()
    for res in entry_runs:
        n = res.get("seeds_trained_together", 1)
        if res.get("method") == "sample_classifier":
            units.append({"seeds": [res["seed"]], "wall_s": res["own_wall_time_s"], "linear": True})
            continue
        key = (n, res.get("group_wall_time_s")) if n > 1 else ("run", res["seed"])
        if key in seen:
            continue
        seen.add(key)
        seeds = [r["seed"] for r in entry_runs if r.get("seeds_trained_together", 1) == n
                 and r.get("group_wall_time_s") == res.get("group_wall_time_s")] if n > 1 else [res["seed"]]
        wall = res["group_wall_time_s"] if n > 1 else res["wall_time_s"]
        curve = [p for p in res.get("curve", []) if p.get("clock_s") is not None]
        if len(curve) >= 2 and curve[-1]["step"] > curve[0]["step"]:
            slope = n * (curve[-1]["clock_s"] - curve[0]["clock_s"]) / (curve[-1]["step"] - curve[0]["step"])
        else:
            slope = wall / max(1, res["steps"])
        units.append({"seeds": seeds, "wall_s": wall, "slope_s": slope,
                      "startup_s": max(0.0, wall - steps * slope), "cuda_graph": res.get("cuda_graph"),
                      "packed": n > 1})
    return units


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", default=str(ROOT / "experiments" / "table_fmnist.yaml"))
    p.add_argument("--n-labels", type=int, default=None, help="the label count measured (default: the grid's first)")
    p.add_argument("--steps", type=int, default=150, help="steps of each measured run (default 150)")
    p.add_argument("--pack-seeds", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--cuda-graph", default="auto", choices=("auto", "on", "off"),
                   help="train.cuda_graph of every run (default auto: captured single runs on CUDA)")
    p.add_argument("--out", default=None, help="where the subset grid and its runs go (default: a temporary folder)")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--dry-run", action="store_true", help="write the subset grid, print the plan and the schedules; "
                                                          "train nothing")
    args = p.parse_args(argv)
    grid_path = Path(args.grid).resolve()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="table_time_"))
    sub = derived_grid(grid_path, args.n_labels, args.steps, out)
    sched = full_schedule(grid_path)
    n_runs = sum(len(v) for e in sched.values() for v in e.values())
    label_counts = sorted({n for e in sched.values() for n in e})
    print(f"# {grid_path.name}: {len(sched)} entries x label counts {label_counts}: {n_runs} runs")
    print(f"# subset: {sub} ({', '.join(overrides(args.steps, args.cuda_graph))}, --pack-seeds {args.pack_seeds})")
    if args.dry_run:
        for entry, per in sched.items():
            print(f"  {entry}: " + "; ".join(f"{n} labels: {len(s)} runs x {s[0]} steps" for n, s in per.items()))
        print("dry run: nothing trained")
        return 0

    import torch

    from genssl.compare.runner import load_grid, run_grid

    t0 = time.perf_counter()
    run_grid(sub, overrides=overrides(args.steps, args.cuda_graph), progress=False, pack_seeds=args.pack_seeds)
    measured_s = time.perf_counter() - t0
    _, runs = load_grid(sub, overrides=overrides(args.steps, args.cuda_graph))
    by_entry: dict[str, list[dict]] = {}
    for r in runs:
        by_entry.setdefault(r.label, []).append(json.loads((r.run_dir / "results.json").read_text()))
    rows, table_s = [], 0.0
    for entry, results in by_entry.items():
        units = units_of(results, args.steps)
        per_label = {}
        for n, full_steps in sched[entry].items():
            steps_full = full_steps[0]
            cost = 0.0
            for u in units:
                if u.get("linear"):
                    cost += u["wall_s"] * steps_full / args.steps
                else:
                    cost += u["startup_s"] + steps_full * u["slope_s"]
            per_label[n] = cost
        table_s += sum(per_label.values())
        rows.append({"entry": entry, "units": units, "full_steps": sched[entry], "full_s": per_label,
                     "measured_s": sum(u["wall_s"] for u in units)})
    device = results[0].get("device", "") if by_entry else ""
    print(f"\nMeasured: {len(runs)} runs of {args.steps} steps at {runs[0].n_labels} labels in {measured_s:.0f} s "
          f"({device}, torch {torch.__version__}, --pack-seeds {args.pack_seeds})\n")
    print("| entry | units (seeds) | step mode | measured s | s/step per unit | start-up s | full steps | "
          "full s per label count |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        us = r["units"]
        shape = ", ".join(("pack " if u.get("packed") else "") + "/".join(map(str, u["seeds"])) for u in us)
        mode = ", ".join(sorted({str(u.get("cuda_graph") or "samples") for u in us}))
        slope = ", ".join(f"{1e3 * u['slope_s']:.1f} ms" for u in us if "slope_s" in u) or "linear"
        start = ", ".join(f"{u['startup_s']:.1f}" for u in us if "startup_s" in u) or "-"
        steps = ", ".join(f"{n}: {s[0]}" for n, s in r["full_steps"].items())
        full = ", ".join(f"{n}: {s:.0f}" for n, s in r["full_s"].items())
        print(f"| {r['entry']} | {shape} | {mode} | {r['measured_s']:.1f} | {slope} | {start} | {steps} | {full} |")
    terms = " + ".join(f"{sum(r['full_s'].values()):.0f}" for r in rows)
    print(f"\nWhole table, extrapolated: {terms} = {table_s:.0f} s = {table_s / 60:.1f} min run one unit at a time "
          f"(target <= {TARGET_MIN:g} min); measured subset {measured_s:.0f} s.")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "torch": torch.__version__, "steps": args.steps,
                                               "pack_seeds": args.pack_seeds, "measured_s": measured_s,
                                               "table_s": table_s, "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
