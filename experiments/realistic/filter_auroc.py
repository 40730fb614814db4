"""How well each finished class-mismatch run tells its own unlabeled pool's in-task images from the out-of-task
ones: the AUROC a pool filter (data.filter_run) would work with, per score, from the run folders alone.

    python experiments/realistic/filter_auroc.py [--runs checkpoints/realistic/runs] [--out experiments/realistic]

For each run of experiments/realistic/mismatch.yaml at 50% and 100% mismatch, the images of its unlabeled pool
(split.pt), with its validation images as further in-task ones (at 100% mismatch the only ones), are scored
by the run's own model: `model` (the generative score: vae_m2's ELBO -U(x), the SSL-GAN's
log D(x)), `two_sided` (minus its distance from the validation images' median, as data.filter_score:
two_sided) and `confidence` (the maximum softmax probability of its classifier, the non-generative baseline
that every method has). The pool's hidden labels are read for this measurement only. 1.0: every in-task image
scores above every out-of-task one; 0.5: chance; below 0.5: the score prefers the strays (Nalisnick et al. 2019).
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

import torch

from genssl.config import DataConfig
from genssl.data.source import load_train_test, task_data
from genssl.encoders.from_run import method_from_run
from genssl.methods.typicality import auroc, can_score_typicality, score_images
from genssl.runs.run_dir import RunDir


def pool_auroc(run_dir: Path, data_cache: dict) -> dict[str, float]:
    run = RunDir(run_dir)
    cfg = run.read_config()
    key = (cfg.data.dataset, tuple(cfg.data.classes or ()))
    if key not in data_cache:
        d = DataConfig(dataset=cfg.data.dataset, classes=cfg.data.classes)
        data_cache[key] = task_data(*load_train_test(d, progress=False), d)[0]
    train = data_cache[key]
    split = run.read_split()
    pool = split.unlabeled[~torch.isin(split.unlabeled, split.labeled)]
    pool = torch.cat([pool, split.val])  # the validation images are in-task too: at 100% mismatch the only ones
    inside = train.labels[pool] < len(cfg.data.classes)
    method, _, _ = method_from_run(run_dir)
    out = {}
    val = torch.isin(pool, split.val)
    for kind in ("model", "confidence"):
        if kind == "model" and not can_score_typicality(method):
            continue
        s = score_images(method, train.images[pool], kind).float()
        out[kind] = auroc(s[inside], s[~inside]) if (~inside).any() else float("nan")
        if kind == "model":  # the pool filter's two_sided score: minus the distance from the validation median
            two = -(s - s[val].median()).abs()
            out["two_sided"] = auroc(two[inside], two[~inside]) if (~inside).any() else float("nan")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="checkpoints/realistic/runs")
    ap.add_argument("--out", default="experiments/realistic")
    args = ap.parse_args(argv)
    cells = defaultdict(list)
    cache: dict = {}
    for folder in sorted(Path(args.runs).glob("mm*-*")):
        head = folder.name.split("-")[0]
        if head not in ("mm50", "mm100") or not (folder / "results.json").is_file():
            continue
        method = folder.name.split("-", 1)[1].rsplit("-n", 1)[0]
        for kind, a in pool_auroc(folder, cache).items():
            cells[(method, kind, head)].append(a)
    lines = ["| run's model | score | AUROC at 50% mismatch | AUROC at 100% mismatch |", "|---|---|---:|---:|"]
    for method, kind in sorted({(m, k) for m, k, _ in cells}):
        row = []
        for head in ("mm50", "mm100"):
            xs = cells.get((method, kind, head), [])
            row.append(f"{statistics.fmean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1
                       else f"{xs[0]:.3f}" if xs else "—")
        lines.append(f"| {method} | {kind} | {row[0]} | {row[1]} |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "filter_auroc.md").write_text(text)


if __name__ == "__main__":
    main()
