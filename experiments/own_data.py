"""Your own images, end to end (experiments/own_data.md): Fashion-MNIST written out as PNG files in folders, as a
user's own data would be, then `genssl train` (sgan and supervised) on `dataset: folder` configs, then
`genssl predict` on the test folder, scored against the folder each file sits in.

    python experiments/own_data.py --work /tmp/own_data                       # everything, as in the doc
    python experiments/own_data.py --work /tmp/own_data --steps-sgan 600      # a quicker look

The folders it writes under --work (from the Fashion-MNIST files found via $GENSSL_DATA):
    labeled/<class>/*.png   10 training images per class (`--per-class`)
    unlabeled/*.png         10,000 other training images, no labels (`--unlabeled`)
    test/<class>/*.png      the 10,000 test images
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from genssl.data.datasets import load_dataset
from genssl.data.source import BUILTIN_CLASS_NAMES

HERE = Path(__file__).resolve().parent
CONFIGS = {"sgan": HERE / "own_data_sgan.yaml", "supervised": HERE / "own_data_supervised.yaml"}


def folder_name(class_name: str) -> str:
    return class_name.replace("/", "_")  # "T-shirt/top" is not a file name


def write_folders(work: Path, per_class: int, n_unlabeled: int, seed: int = 0) -> dict[str, int]:
    """Write labeled/, unlabeled/ and test/ under `work` as PNG files; returns how many files each got."""
    train, test = load_dataset("fashion_mnist")
    names = [folder_name(n) for n in BUILTIN_CLASS_NAMES["fashion_mnist"]]
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=gen)
    labeled = torch.cat([order[train.labels[order] == k][:per_class] for k in range(10)])
    rest = order[~torch.isin(order, labeled)][:n_unlabeled]

    def save(images: torch.Tensor, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[0].numpy()).save(path)

    for i in labeled.tolist():
        save(train.images[i], work / "labeled" / names[train.labels[i]] / f"train{i:05d}.png")
    for i in rest.tolist():
        save(train.images[i], work / "unlabeled" / f"train{i:05d}.png")
    for i in range(len(test)):
        save(test.images[i], work / "test" / names[test.labels[i]] / f"test{i:05d}.png")
    return {"labeled": len(labeled), "unlabeled": len(rest), "test": len(test)}


def genssl(*args: str) -> float:
    """Run the genssl command line; returns its wall time in seconds."""
    start = time.perf_counter()
    print("$ genssl " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "genssl", *args], check=True)
    return time.perf_counter() - start


def score(preds_csv: Path) -> tuple[float, list[str]]:
    """Accuracy of a predictions CSV against the class folder each file sits in; and its first lines."""
    lines = preds_csv.read_text().splitlines()
    rows = list(csv.DictReader(lines))
    correct = sum(folder_name(r["class"]) == Path(r["path"]).parent.name for r in rows)
    return correct / len(rows), lines[:4]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="/tmp/own_data", help="folder for the images, runs and predictions")
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--unlabeled", type=int, default=10_000)
    p.add_argument("--steps-sgan", type=int, default=None, help="default: own_data_sgan.yaml's")
    p.add_argument("--steps-supervised", type=int, default=None, help="default: own_data_supervised.yaml's")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--methods", nargs="+", choices=sorted(CONFIGS), default=["supervised", "sgan"],
                   help="which configs to train and score (default: both)")
    args = p.parse_args()
    work = Path(args.work)
    if not (work / "test").is_dir():
        start = time.perf_counter()
        counts = write_folders(work, args.per_class, args.unlabeled)
        print(f"wrote {counts} PNG files under {work} in {time.perf_counter() - start:.1f} s", flush=True)
    report = []
    steps_of = {"supervised": args.steps_supervised, "sgan": args.steps_sgan}
    for method in args.methods:
        steps = steps_of[method]
        run = work / "runs" / f"own_{method}"
        overrides = [f"--data.root={work}", f"--out_dir={work / 'runs'}", f"--name=own_{method}",
                     f"--train.threads={args.threads}", "--train.progress=false"]
        overrides += [f"--train.steps={steps}"] if steps else []
        train_s = genssl("train", str(CONFIGS[method]), *overrides) if not (run / "results.json").is_file() else 0.0
        preds = work / f"preds_{method}.csv"
        predict_s = genssl("predict", str(run), str(work / "test"), "--out", str(preds), "--top-k", "3",
                           "--no-progress")
        acc, head = score(preds)
        report.append((method, acc, train_s, predict_s, head))
    for method, acc, train_s, predict_s, head in report:
        print(f"\n{method}: predict accuracy on test/ {100 * acc:.2f}%  (train {train_s:.0f} s, predict "
              f"{predict_s:.0f} s)\n" + "\n".join(head))


if __name__ == "__main__":
    main()
