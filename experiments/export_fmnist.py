"""Write Fashion-MNIST as the image folders a user with a few labels has, for `genssl advise` and `dataset: folder`
(issue 40's second real-data check): the data genssl reads (GENSSL_DATA, else ../shared/data; torchvision's files),
split the way a user's folder would be.

    GENSSL_DATA=../shared/data python experiments/export_fmnist.py --out checkpoints/fmnist_folders

Folders under --out (PNG files; class folders named by Fashion-MNIST's class names):
    labeled/<class>/    --per-class training images per class (default 10: 100 labels; no val/: advise holds its
                        own out of these)
    unlabeled/          --unlabeled other training images (default 20,000), no labels
    test/<class>/       the 10,000 official test images, which advise never reads
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from genssl.config import DataConfig
from genssl.data.source import load_train_test

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_digits import write  # noqa: E402

CLASS_NAMES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle_boot"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="checkpoints/fmnist_folders")
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--unlabeled", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: remove it or choose another --out (its images would mix)")
    train, test = load_train_test(DataConfig(dataset="fashion_mnist"), progress=False)
    x, y = train.images[:, 0].numpy(), train.labels.numpy()
    rng = np.random.default_rng(args.seed)
    labeled = np.concatenate([rng.permutation(np.flatnonzero(y == k))[:args.per_class] for k in range(10)])
    rest = np.setdiff1d(np.arange(len(y)), labeled)
    if args.unlabeled > len(rest):
        raise SystemExit(f"--unlabeled {args.unlabeled}: only {len(rest)} training images are left after the labels")
    unlabeled = rng.permutation(rest)[:args.unlabeled]
    names = np.array(CLASS_NAMES)
    write(x, names[y], {"labeled": labeled, "unlabeled": unlabeled}, out)
    write(test.images[:, 0].numpy(), names[test.labels.numpy()], {"test": np.arange(len(test.labels))}, out)
    print(f"{out}: labeled {len(labeled)}, unlabeled {len(unlabeled)}, test {len(test.labels)}")


if __name__ == "__main__":
    main()
