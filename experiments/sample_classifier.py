"""Generated samples feed a downstream classifier, for finished runs of any method with `sample` (SGAN; M2
with --label-source=conditional).

For each run folder: load the model chosen on validation (best.pt), train a fresh MLP classifier on the run's
own labeled split plus confidence-filtered generated samples (genssl.downstream.samples), choose it on the
run's validation split, and report its test accuracy next to the model's own. `--control` also trains the same
classifier on the labeled images alone (generated_weight 0), to show whether the samples help. Each run folder
also gets samples_by_class.png (row k: the 10 generated images the model is most confident are class k) and
samples_random.png (100 unselected samples).

    python experiments/sample_classifier.py /tmp/sgan_runs/sgan-fashion_mnist-100-s0 ... --control --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torchvision.utils import save_image

from genssl.data.batching import to_float
from genssl.training.evaluate import load_run
from genssl.downstream.samples import SampleClassifierConfig, labeled_samples, train_sample_classifier
from genssl.nn.probes import accuracy


@torch.no_grad()
def save_grids(method, num_classes: int, run_dir: Path, per_class: int = 10, pool: int = 5000) -> None:
    x, y, conf = labeled_samples(method, pool, num_classes, "predict")
    rows = []
    for k in range(num_classes):
        idx = (y == k).nonzero().flatten()
        idx = idx[conf[idx].argsort(descending=True)[:per_class]]
        row = x[idx]
        if len(idx) < per_class:  # the model rarely generates class k: pad the row with blanks
            row = torch.cat([row, torch.ones(per_class - len(idx), *x.shape[1:])])
        rows.append(row)
    save_image(torch.cat(rows), run_dir / "samples_by_class.png", nrow=per_class, padding=1, pad_value=1.0)
    save_image(x[:100], run_dir / "samples_random.png", nrow=10, padding=1, pad_value=1.0)
    counts = torch.bincount(y, minlength=num_classes).tolist()
    print(f"  {run_dir.name}: predicted-class counts of {pool} samples {counts}; mean confidence "
          f"{conf.mean():.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--generated-weight", type=float, default=1.0)
    p.add_argument("--label-source", default="predict")
    p.add_argument("--control", action="store_true", help="also train on the labeled images alone")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    for run in args.runs:
        method, cfg, split, (train, test) = load_run(run, device="cpu")
        k = train.num_classes
        x_l, y_l = to_float(train.images[split.labeled]), train.labels[split.labeled]
        x_val, y_val = to_float(train.images[split.val]), train.labels[split.val]
        x_test, y_test = to_float(test.images), test.labels
        own = accuracy(method_classifier(method), x_test, y_test)
        save_grids(method, k, run)
        row = {"run": str(run), "method": cfg.method_name, "n_labels": cfg.data.n_labels, "seed": cfg.train.seed,
               "model_test_acc": own}
        variants = [("samples", args.generated_weight)] + ([("control", 0.0)] if args.control else [])
        for name, weight in variants:
            scfg = SampleClassifierConfig(steps=args.steps, threshold=args.threshold, generated_weight=weight,
                                          label_source=args.label_source, seed=cfg.train.seed)
            t0 = time.perf_counter()
            net, stats = train_sample_classifier(method, x_l, y_l, k, scfg, x_val, y_val)
            row[f"{name}_test_acc"] = accuracy(net, x_test, y_test)
            row[f"{name}_val_acc"] = stats["best_val_acc"]
            row[f"{name}_wall_s"] = round(time.perf_counter() - t0, 1)
            if name == "samples":
                row["kept_fraction"] = stats["kept_fraction"]
        rows.append(row)
        print(json.dumps(row))

    cols = ["n_labels", "seed", "model_test_acc", "samples_test_acc"] + (["control_test_acc"] if args.control else [])
    print("\n| " + " | ".join(cols + ["kept_fraction"]) + " |")
    print("|" + "---|" * (len(cols) + 1))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols)
              + f" | {r['kept_fraction']:.3f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


def method_classifier(method):
    """The model's own classifier (its predict) as a module, so the same accuracy function scores both."""
    class Own(torch.nn.Module):
        def forward(self, x):
            return method.predict(x)

    return Own()


if __name__ == "__main__":
    main()
