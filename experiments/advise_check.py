"""Is `genssl advise`'s estimate honest? Scores the run advise recommends (its final run, retrained on all the
labels) on a test folder advise never read, beside the held-out estimate the advice stated (issue 40's real-data
checks; results in experiments/advise.md).

    python experiments/advise_check.py ADVICE_DIR TEST_FOLDER [--json out.json]

TEST_FOLDER holds <class>/ subfolders named as the labeled ones. The final run predicts them with `genssl predict`
(its default gate on, so the share of test images it would flag is reported too); accuracy counts every image,
flagged or not. Printed: a Markdown block with the advice, the budget given and spent, the recommended candidate's
held-out accuracy over the repeats (mean, sd, the t 95% interval of the mean) and its test accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
from pathlib import Path

from genssl.cli import main as genssl_main
from genssl.compare.stats import mean_halfwidth


def test_accuracy(run: Path, test_folder: Path) -> dict:
    """{"n", "accuracy" (%), "flagged" (%)} of the run's predictions on TEST_FOLDER/<class>/*."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "predictions.csv"
        if genssl_main(["predict", str(run), str(test_folder), "--out", str(out), "--no-progress"]) != 0:
            raise SystemExit(f"genssl predict failed on {run}")
        with open(out, newline="") as f:
            rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{test_folder}: no images")
    truth = [Path(r["path"]).parent.name for r in rows]
    right = sum(r["class"] == t for r, t in zip(rows, truth))
    flagged = sum(r.get("atypical") in ("1", "true", "True") for r in rows)
    return {"n": len(rows), "accuracy": 100 * right / len(rows), "flagged": 100 * flagged / len(rows)}


def check(advice_dir: Path, test_folder: Path) -> dict:
    advice = json.loads((advice_dir / "advice.json").read_text())
    final = advice["final_run"]
    if not final.get("path"):
        raise SystemExit(f"{advice_dir}: the advice has no final run ({final.get('note')})")
    row = next(r for r in advice["candidates"] if r["candidate"] == final["candidate"])
    accs = list(row["per_repeat"].values())
    sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
    hw = mean_halfwidth(sd, len(accs))
    test = test_accuracy(Path(final["path"]), test_folder)
    return {"advice_dir": str(advice_dir), "sentence": advice["recommendation"]["sentence"],
            "candidate": final["candidate"], "repeats": len(accs), "heldout_mean": statistics.fmean(accs),
            "heldout_sd": sd, "heldout_interval": [statistics.fmean(accs) - hw, statistics.fmean(accs) + hw],
            "n_labeled": advice["n_labeled"], "n_train": advice["n_train"], "n_heldout": advice["n_heldout"],
            "budget_s": advice["time"]["budget_s"], "spent_s": advice["time"]["spent_s"],
            "within_budget_and_margin": advice["time"]["within_budget_and_margin"],
            "candidates": [(r["candidate"], r["heldout_acc_mean"], r.get("diff_mean"), r.get("ci_low"),
                            r.get("ci_high"), r.get("verdict")) for r in advice["candidates"]],
            "test": test}


def markdown(c: dict) -> str:
    lo, hi = c["heldout_interval"]
    lines = [f"- Advice: **{c['sentence']}**",
             f"- Budget {c['budget_s'] / 60:.0f} min, spent {c['spent_s'] / 60:.1f} min "
             f"(within budget + margin: {c['within_budget_and_margin']}).",
             f"- {c['candidate']} held out over {c['repeats']} repeats ({c['n_train']} labels to train on, "
             f"{c['n_heldout']} held out each): {c['heldout_mean']:.1f} ± {c['heldout_sd']:.1f} (mean ± sd), "
             f"t 95% interval of the mean [{lo:.1f}, {hi:.1f}].",
             f"- The final run ({c['candidate']} on all {c['n_labeled']} labels) on the {c['test']['n']} test "
             f"images advise never read: **{c['test']['accuracy']:.1f}%**; its default gate flags "
             f"{c['test']['flagged']:.1f}% of them.",
             "", "| candidate | held-out acc. % | Δ vs supervised [95% interval] | verdict |", "|---|---:|---|---|"]
    for name, acc, d, a, b, v in c["candidates"]:
        diff = "(reference)" if d is None else f"{d:+.1f} [{a:+.1f}, {b:+.1f}]"
        lines.append(f"| {name} | {acc:.1f} | {diff} | {v or ''} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("advice_dir", type=Path)
    ap.add_argument("test_folder", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    c = check(args.advice_dir, args.test_folder)
    if args.json:
        args.json.write_text(json.dumps(c, indent=2))
    print(markdown(c))
    return 0


if __name__ == "__main__":
    sys.exit(main())
