"""Wall-clock time until validation accuracy first reaches given thresholds, per method. Prints a table.

    # train each config now (real Fashion-MNIST, 100 labels; found by the README's data search: $GENSSL_DATA,
    # ~/.cache/genssl/data, /usr/share/datasets) and report 70/75/80% times
    GENSSL_DATA=path/to/data .venv/bin/python benchmarks/time_to_accuracy.py \\
        experiments/fmnist_sgan.yaml experiments/fmnist_vae_m2.yaml --thresholds 0.7 0.75 0.8 \\
        --set train.threads=1 train.eval_every=100

    # or read finished runs (their tb/ val/acc events) without training, and draw their curves into a PNG
    .venv/bin/python benchmarks/time_to_accuracy.py --runs checkpoints/sgan-fashion_mnist-100-s0 \
        checkpoints/sgan-bf16/s0 --labels fp32 bf16 --plot time_to_accuracy.png

The clock starts when `genssl train` is launched (training mode; so it includes start-up, data loading
and every evaluation, as a user waits for them) or, for --runs, at the run's split.pt (written as training
starts). The time of a threshold is the wall time of the first val/acc event at or above it, so it is
resolved to the evaluation cadence: use a small train.eval_every for fine resolution. Validation
accuracy is on the held-out validation images (data.n_val), never the test set. Runs trained together
(`genssl train --seeds`) share one clock, so each seed's curve is the group's wall time.

`--plot` draws validation accuracy against wall time (left) and against the step (right), one line per run,
the thresholds dashed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import machine_info  # noqa: E402


def val_curve(run_dir: Path) -> list[tuple[float, int, float]]:
    """[(wall_time, step, val_acc)] from the run's TensorBoard events, in order of step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    if "val/acc" not in acc.Tags().get("scalars", []):
        return []
    return sorted(((e.wall_time, e.step, e.value) for e in acc.Scalars("val/acc")), key=lambda r: r[1])


def plot_curves(curves: list[tuple[str, list[tuple[float, int, float]], float]], thresholds: list[float],
                path: Path, title: str = "") -> Path:
    """Validation accuracy (%) against wall minutes since each run's start and against the step, one line per
    run; thresholds as dashed lines. A bare Figure on the Agg canvas (headless, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    by_time, by_step = fig.subplots(1, 2, sharey=True)
    for name, curve, t0 in curves:
        if not curve:
            continue
        minutes = [(wt - t0) / 60 for wt, _, _ in curve]
        acc = [100 * v for _, _, v in curve]
        line, = by_time.plot(minutes, acc, marker=".", label=name)
        by_step.plot([st for _, st, _ in curve], acc, marker=".", color=line.get_color())
    for ax in (by_time, by_step):
        for th in thresholds:
            ax.axhline(100 * th, color="grey", linestyle="--", linewidth=0.8)
        ax.grid(alpha=0.3)
    by_time.set_xlabel("wall time (min)")
    by_step.set_xlabel("step")
    by_time.set_ylabel("validation accuracy (%)")
    by_time.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)
    return path


def times_to(curve, t0: float, thresholds: list[float]) -> list[tuple[float, int] | None]:
    out = []
    for th in thresholds:
        hit = next(((wt - t0, step) for wt, step, v in curve if v >= th), None)
        out.append(hit)
    return out


def train(config: str, run_dir: Path, overrides: list[str]) -> float:
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "genssl", "train", config, "--run-dir", str(run_dir), "--train.progress=false",
           *overrides]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"training failed: {config}")
    return t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="*", help="run YAMLs to train now")
    p.add_argument("--runs", nargs="*", default=[], help="finished run folders to read instead")
    p.add_argument("--thresholds", nargs="*", type=float, default=[0.7, 0.75, 0.8])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides for every trained config, e.g. train.threads=1 train.eval_every=100")
    p.add_argument("--out", default="checkpoints/time_to_accuracy", help="where trained runs go")
    p.add_argument("--labels", nargs="*", default=None,
                   help="a name per run (configs first, then --runs) for the table and the plot")
    p.add_argument("--plot", default=None, metavar="PNG", help="draw validation accuracy vs wall time and step here")
    p.add_argument("--title", default="", help="the plot's title")
    p.add_argument("--curve", action="store_true", help="also print every evaluation: step, wall s, val acc")
    args = p.parse_args(argv)
    if not args.configs and not args.runs:
        p.error("give configs to train or --runs to read")
    if args.labels is not None and len(args.labels) != len(args.configs) + len(args.runs):
        p.error(f"--labels: {len(args.labels)} names for {len(args.configs) + len(args.runs)} runs")

    info = machine_info()
    rows = []
    overrides = [f"--{kv}" for kv in args.set]
    for config in args.configs:
        run_dir = Path(args.out) / f"{Path(config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        t0 = train(config, run_dir, overrides)
        rows.append((Path(config).stem, run_dir, t0))
    for run in args.runs:
        run = Path(run)
        split = run / "split.pt"
        if not split.is_file():
            raise SystemExit(f"{run}: no split.pt; is this a run folder?")
        if not (run / "tb").is_dir():
            raise SystemExit(f"{run}: no tb/ folder with TensorBoard events")
        rows.append((run.name, run, split.stat().st_mtime))
    names = [r[0] for r in rows]
    if args.labels is not None:
        names = list(args.labels)
    elif len(set(names)) < len(names):  # e.g. several s0 folders: name them by their parent too
        names = [f"{r[1].parent.name}/{r[1].name}" for r in rows]
    rows = [(n, run_dir, t0) for n, (_, run_dir, t0) in zip(names, rows)]

    print("\n# time to validation accuracy")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"settings: overrides={args.set or 'none'}; clock from launch (trained here) or split.pt (--runs)")
    print()
    heads = " | ".join(f"to {100 * th:g}%" for th in args.thresholds)
    print(f"| run | {heads} | best val acc | evals |")
    print("|---|" + "---:|" * (len(args.thresholds) + 2))
    curves = []
    for name, run_dir, t0 in rows:
        curve = val_curve(run_dir)
        curves.append((name, curve, t0))
        hits = times_to(curve, t0, args.thresholds)
        cells = " | ".join("not reached" if h is None else f"{h[0]:.0f} s (step {h[1]})" for h in hits)
        best = max((v for _, _, v in curve), default=float("nan"))
        print(f"| {name} | {cells} | {100 * best:.2f}% | {len(curve)} |")
    if args.curve:
        for name, curve, t0 in curves:
            print(f"\n{name}: " + ", ".join(f"step {st} {wt - t0:.0f} s {100 * v:.2f}%" for wt, st, v in curve))
    print(f"\nload average now: {os.getloadavg()[0]:.2f} (1 min)")
    if args.plot:
        print(f"plot: {plot_curves(curves, args.thresholds, Path(args.plot), args.title)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
