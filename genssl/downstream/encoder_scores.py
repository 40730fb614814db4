"""Frozen encoders scored by downstream classifiers: seeded class-balanced labeled subsets of a training set,
features in batches, a classifier of each kind, test accuracy; and the `genssl downstream` command.

    genssl downstream --encoder fmnist-m1 --n-labels 100 1000 --kind linear mlp --seed 0 1 2
    genssl downstream RUN_DIR --n-labels 100
"""

from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F

from genssl.data.datasets import load_dataset
from genssl.data.split import make_split
from genssl.encoders.load import load_encoder
from genssl.fileio import atomic_write_json
from genssl.nn.probes import accuracy, extract_features, fit_classifier
from genssl.training.device import resolve_device


def adapt_images(x: torch.Tensor, input_shape) -> torch.Tensor:
    """Fit float images (B, C, H, W) to an encoder's input shape: grayscale repeated to 3 channels, and a
    bilinear resize when the encoder fixes its height/width. Anything else is an error naming both shapes."""
    c = input_shape[0]
    if x.shape[1] != c:
        if x.shape[1] == 1 and c == 3:
            x = x.expand(-1, 3, -1, -1)
        else:
            raise ValueError(f"images have {x.shape[1]} channels but the encoder expects {c} "
                             f"(input_shape {tuple(input_shape)})")
    size = tuple(input_shape[1:])
    if all(s is not None for s in size) and tuple(x.shape[2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x


def evaluate_encoder(encoder, train, test, n_labels=(100,), kinds=("linear",), seeds=(0,), n_val: int = 5000,
                     batch_size: int = 1000, **options) -> list[dict]:
    """Downstream accuracy of a frozen encoder: for each labeled-subset seed, the class-balanced labeled set
    that genssl.data.split.make_split draws (with `n_val` images held out, as training runs do, so seed s gives the
    labeled images and validation split of a run with split seed s); a classifier of each kind fitted on their
    features, scored on the validation split (`val_acc`, None without one) and the test set (`test_acc`)."""
    shape = getattr(encoder, "input_shape", None)
    prep = (lambda x: adapt_images(x, shape)) if shape is not None else (lambda x: x)
    device = next(encoder.parameters()).device

    def feats(images):
        out = []
        for xb in images.split(batch_size):
            out.append(extract_features(encoder, prep(xb.to(device).float() / 255.0), batch_size))
        return torch.cat(out)

    f_test, y_test = feats(test.images), test.labels.to(device)
    rows = []
    for n in n_labels:
        for seed in seeds:
            split = make_split(train.labels, train.num_classes, int(n), n_val, int(seed))
            f_l, y_l = feats(train.images[split.labeled]), train.labels[split.labeled].to(device)
            f_val, y_val = feats(train.images[split.val]), train.labels[split.val].to(device)
            for kind in kinds:
                start = time.perf_counter()
                clf = fit_classifier(f_l, y_l, train.num_classes, kind, int(seed), **options)
                fit_s = time.perf_counter() - start
                rows.append({"n_labels": int(n), "kind": kind, "seed": int(seed),
                             "val_acc": accuracy(clf, f_val, y_val) if len(y_val) else None,
                             "test_acc": accuracy(clf, f_test, y_test), "fit_s": round(fit_s, 3)})
    return rows


BEST = "best(val)"


def best_on_validation(rows: list[dict]) -> list[dict]:
    """Per (n_labels, seed), the row of the kind with the highest validation accuracy, renamed kind=BEST (and
    `chosen` = that kind): "M1 + best downstream" with the choice made without the test set."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("val_acc") is not None:
            groups.setdefault((r["n_labels"], r["seed"]), []).append(r)
    best = [max(g, key=lambda r: r["val_acc"]) for g in groups.values() if len(g) > 1]
    return [{**r, "kind": BEST, "chosen": r["kind"]} for r in best]


def mean_over_seeds(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation of test accuracy over seeds, per (n_labels, kind)."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["n_labels"], r["kind"]), []).append(r["test_acc"])
    out = []
    for (n, kind), accs in groups.items():
        t = torch.tensor(accs, dtype=torch.float64)
        out.append({"n_labels": n, "kind": kind, "seeds": len(accs), "mean_acc": t.mean().item(),
                    "std_acc": t.std().item() if len(accs) > 1 else 0.0})
    return out


def run_downstream_command(args, overrides) -> int:

    if overrides:
        raise ValueError(f"genssl downstream: unexpected arguments {' '.join(overrides)}")
    source = args.encoder or args.source
    if source is None or (args.encoder and args.source):
        raise ValueError("genssl downstream: give exactly one encoder: RUN_DIR or --encoder SOURCE")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    encoder = load_encoder(source, weights=args.weights, device=resolve_device(args.device))
    dataset = args.dataset or encoder.source.get("dataset") or "fashion_mnist"
    train, test = load_dataset(dataset, args.data_root, download=not args.no_download)
    rows = evaluate_encoder(encoder, train, test, args.n_labels, args.kind, args.seed, args.n_val)
    rows += best_on_validation(rows)
    summary = mean_over_seeds(rows)
    print(f"encoder {source} ({encoder.out_dim} features) on {dataset}: test accuracy")
    for s in summary:
        print(f"  {s['n_labels']:>6} labels  {s['kind']:<9}  {100 * s['mean_acc']:6.2f}% "
              f"+- {100 * s['std_acc']:.2f}  ({s['seeds']} seed{'s' * (s['seeds'] > 1)})")
    result = {"encoder": str(source), "dataset": dataset, "n_val": args.n_val, "runs": rows, "summary": summary}
    if args.out:
        atomic_write_json(result, args.out)
    print(json.dumps(result))
    return 0
