"""Tabulate the conv SSL-GAN ablation (experiments/sgan_conv_ablation.yaml): for each run, its validation curve,
the test accuracy of the weights chosen on validation, what the discriminator and generator were doing, and what
a step cost.

    python experiments/sgan_conv_ablation.py [--runs checkpoints/sgan_conv_ablation/runs] [--out FILE.md]

The curves read from each run's tb/: train/unsup_loss (the discriminator's real-vs-fake loss: near 0 means it
separates real from generated images perfectly and the generator's signal is gone), train/d_real and
train/d_fake (its mean D(x) on real and generated images), train/fm_loss (the generator's feature-matching
loss) and train/lab_acc, each averaged over the last quarter of the run. "oracle" is the best test accuracy
among evaluations (train.oracle; read here to show what selection left, never to choose).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

CURVES = ("train/unsup_loss", "train/d_real", "train/d_fake", "train/fm_loss", "train/lab_acc")


def tail_means(run_dir: Path, tags=CURVES, fraction: float = 0.25) -> dict[str, float]:
    """Mean of each scalar over the last `fraction` of its logged steps (NaN where the run did not log it)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    have = set(acc.Tags().get("scalars", []))
    out = {}
    for tag in tags:
        events = sorted(acc.Scalars(tag), key=lambda e: e.step) if tag in have else []
        tail = events[int(len(events) * (1 - fraction)):] if events else []
        out[tag] = statistics.fmean(e.value for e in tail) if tail else float("nan")
    return out


def row(run_dir: Path) -> dict:
    res = json.loads((run_dir / "results.json").read_text())
    curve = res.get("curve") or []
    return {"name": run_dir.name.rsplit("-n", 1)[0], "steps": res["steps"], "precision": res["precision"],
            "ms_step": 1000 * res.get("budget_clock_s", res["wall_time_s"]) / max(res["steps"], 1),
            "val": {p["step"]: 100 * p["val_acc"] for p in curve},
            "best_val": 100 * res["best_val_acc"], "test": 100 * res["test_acc"],
            "oracle": max((100 * p["oracle_test_acc"] for p in curve if "oracle_test_acc" in p), default=float("nan")),
            **tail_means(run_dir)}


def table(rows: list[dict]) -> str:
    steps = sorted({s for r in rows for s in r["val"]})
    shown = [s for s in steps if s % 500 == 0] or steps
    head = ("| row | " + " | ".join(f"val @{s}" for s in shown) + " | test (best val) | oracle | unsup loss | "
            "D(real) | D(fake) | fm loss | ms/step |")
    lines = [head, "|---|" + "---:|" * (len(shown) + 7)]
    for r in rows:
        vals = " | ".join(f"{r['val'][s]:.1f}" if s in r["val"] else "—" for s in shown)
        lines.append(f"| {r['name']} | {vals} | {r['test']:.2f} | {r['oracle']:.2f} | "
                     f"{r['train/unsup_loss']:.3f} | {r['train/d_real']:.3f} | {r['train/d_fake']:.3f} | "
                     f"{r['train/fm_loss']:.3g} | {r['ms_step']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="checkpoints/sgan_conv_ablation/runs")
    ap.add_argument("--out", default=None, help="also write the table here (Markdown)")
    args = ap.parse_args(argv)
    folders = sorted(p for p in Path(args.runs).iterdir() if (p / "results.json").is_file())
    if not folders:
        raise SystemExit(f"no finished runs (results.json) under {args.runs}")
    text = table([row(p) for p in folders])
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
