"""Embed your own images with a pretrained genssl encoder and fit a classifier on a few labels of them.

    python experiments/embed_own_images.py                          # released fmnist-m1 encoder; the first 2000
                                                                    # Fashion-MNIST test images stand in for yours
    python experiments/embed_own_images.py --images mine.pt --encoder checkpoints/my-run --kind mlp

`--images` is a torch file holding {"images": (N, C, H, W) uint8 or float in [0, 1], "labels": (N,) int}; it is
read with weights_only=True, so it cannot run code. The core is five lines:

    encoder = genssl.load_encoder("fmnist-m1")                        # frozen, eval mode
    feats = genssl.extract_features(encoder, images)                  # (N, C, H, W) -> (N, encoder.out_dim)
    labeled = genssl.make_split(labels, K, n_labels=100, n_val=0, seed=0).labeled
    clf = genssl.fit_classifier(feats[labeled], labels[labeled], K, kind="linear")
    predictions = clf(feats).argmax(1)
"""

from __future__ import annotations

import argparse

import torch

import genssl
from genssl.fileio import safe_torch_load
from genssl.nn.probes import KINDS, accuracy


def demo_images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    _, test = genssl.load_dataset("fashion_mnist")  # set GENSSL_DATA to the folder holding fashion-mnist/
    return test.images[:n], test.labels[:n]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoder", default="fmnist-m1", help="any genssl.load_encoder source")
    p.add_argument("--images", default=None, help='torch file with {"images": ..., "labels": ...}')
    p.add_argument("--n-demo", type=int, default=2000, help="demo images when --images is not given")
    p.add_argument("--n-labels", type=int, default=100)
    p.add_argument("--kind", choices=KINDS, default="linear")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    if args.images:
        blob = safe_torch_load(args.images)
        images, labels = blob["images"], torch.as_tensor(blob["labels"]).long()
    else:
        images, labels = demo_images(args.n_demo)
    num_classes = int(labels.max()) + 1

    encoder = genssl.load_encoder(args.encoder)
    feats = genssl.extract_features(encoder, images)  # uint8 or [0, 1] float in, (N, D) features out
    split = genssl.make_split(labels, num_classes, args.n_labels, n_val=0, seed=args.seed)
    labeled = split.labeled
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[labeled] = False
    clf = genssl.fit_classifier(feats[labeled], labels[labeled], num_classes, kind=args.kind, seed=args.seed)
    acc = accuracy(clf, feats[rest], labels[rest])
    print(f"{len(labels)} images -> {tuple(feats.shape)} features with {args.encoder}; {args.kind} classifier "
          f"on {len(labeled)} labels: {100 * acc:.2f}% on the other {int(rest.sum())}")


if __name__ == "__main__":
    main()
