"""What a run's `data:` section names, for the Trainer and for tools that rebuild a run without its data:
the (train, test) images, the run's split over them, the class names, and the image shape.

Built-in datasets are read by genssl.data.datasets and split at random (genssl.data.split.make_split);
`dataset: folder` is read by genssl.data.folder and its split is given by the folders (`folder_split`).
"""

from __future__ import annotations

import torch

from genssl.config import FOLDER_DATASET, DataConfig, folder_image_size
from genssl.data.datasets import ImageData, load_dataset
from genssl.data.folder import FolderData, folder_split, load_folder_data
from genssl.data.split import Split, make_split

BUILTIN_CLASS_NAMES = {
    "mnist": tuple(str(k) for k in range(10)),
    "svhn": tuple(str(k) for k in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}
BUILTIN_IMAGE_SHAPES = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "svhn": (3, 32, 32),
                        "cifar10": (3, 32, 32)}


def load_train_test(d: DataConfig, progress: bool = True) -> tuple[ImageData, ImageData]:
    """(train, test) of the config's dataset: a built-in one, or your own folders."""
    if d.dataset == FOLDER_DATASET:
        return load_folder_data(d, progress)
    return load_dataset(d.dataset, d.root, d.download)


def run_split(train: ImageData, d: DataConfig, seed: int, saved: Split | None = None,
              where: str = "split.pt") -> Split:
    """The run's split: `saved` (a resumed run's split.pt) when given, else a new one. Folder data are split
    by their folders; a saved split of folder data must still match them (files added, removed or renamed
    since the run began would shift every index), else this raises instead of training on other images."""
    if isinstance(train, FolderData):
        split = folder_split(train, d, seed if saved is None else saved.seed)
        if saved is not None and not _same_split(saved, split):
            raise ValueError(f"{where}: the image folders changed since this run began (the saved split no longer "
                             f"matches the files in data.labeled/val/unlabeled), so its indices would point at other "
                             f"images; restore the files, or start a new run")
        return split if saved is None else saved
    if saved is not None:
        saved.check_against(len(train), where)
        return saved
    return make_split(train.labels, train.num_classes, d.n_labels, d.n_val, seed, d.labeled_in_unlabeled)


def _same_split(a: Split, b: Split) -> bool:
    return all(getattr(a, k).shape == getattr(b, k).shape and torch.equal(getattr(a, k).sort().values,
                                                                          getattr(b, k).sort().values)
               for k in ("labeled", "unlabeled", "val"))


def class_names(train: ImageData, dataset: str) -> list[str]:
    """Names of train's classes, to save with the run: a folder dataset's folder names, a built-in dataset's
    documented names, else the class indices as text."""
    if isinstance(train, FolderData):
        return list(train.class_names)
    names = BUILTIN_CLASS_NAMES.get(dataset)
    return list(names) if names is not None and len(names) == train.num_classes else \
        [str(k) for k in range(train.num_classes)]


def config_image_shape(d: DataConfig) -> tuple[int, int, int] | None:
    """The (C, H, W) a data config gives the images, without reading them; None for an unknown dataset."""
    if d.dataset == FOLDER_DATASET:
        return (d.channels, *folder_image_size(d))
    return BUILTIN_IMAGE_SHAPES.get(d.dataset)
