"""What a run's `data:` section names, for the Trainer and for tools that rebuild a run without its data:
the (train, test) images, the run's split over them, the class names, and the image shape.

Built-in datasets are read by genssl.data.datasets and split at random (genssl.data.split.make_split);
`dataset: folder` is read by genssl.data.folder and its split is given by the folders (`folder_split`).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from genssl.config import FOLDER_DATASET, DataConfig, folder_image_size
from genssl.data.datasets import ImageData, load_dataset
from genssl.data.folder import FolderData, folder_split, load_folder_data
from genssl.data.split import Split, make_split
from genssl.data.task import restrict_to_task, task_class_names, task_split_classes

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
    """(train, test) of the config's dataset as stored: a built-in one, or your own folders (see task_data)."""
    if d.dataset == FOLDER_DATASET:
        return load_folder_data(d, progress)
    return load_dataset(d.dataset, d.root, d.download)


def task_data(train: ImageData, test: ImageData, d: DataConfig) -> tuple[ImageData, ImageData]:
    """(train, test) as a run with this data config sees them: with data.classes, relabeled so the task's
    classes come first, and the test set of those classes only (genssl.data.task); else unchanged."""
    return restrict_to_task(train, test, d.classes)


def run_split(train: ImageData, d: DataConfig, seed: int, saved: Split | None = None,
              where: str = "split.pt") -> Split:
    """The run's split: `saved` (a resumed run's split.pt) when given, else a new one. Folder data are split
    by their folders; a saved split of folder data must still match them (files added, removed or renamed
    since the run began would shift every index), else this raises instead of training on other images."""
    if isinstance(train, FolderData):
        split = _subsample_unlabeled(folder_split(train, d, seed if saved is None else saved.seed), d.n_unlabeled)
        if saved is not None and not _same_split(saved, split):
            raise ValueError(f"{where}: the image folders changed since this run began (the saved split no longer "
                             f"matches the files in data.labeled/val/unlabeled), so its indices would point at other "
                             f"images; restore the files, or start a new run")
        return split if saved is None else saved
    if saved is not None:
        saved.check_against(len(train), where)
        return saved
    return make_split(train.labels, train.num_classes, d.n_labels, d.n_val, seed, d.labeled_in_unlabeled,
                      d.n_unlabeled, task_split_classes(d.classes), d.mismatch, d.mismatch_mode)


def full_pool_size(train: ImageData, d: DataConfig, seed: int) -> int:
    """The size of the unlabeled pool this run's split would have with the whole pool: data.n_unlabeled null,
    mismatch 0 and no filter, with the same labels, validation images, classes and labeled_in_unlabeled. That is
    every training image of the task's classes outside the labeled and validation sets, plus the labeled ones
    where labeled_in_unlabeled puts them in the pool too. It is a property of the task, not of the unlabeled data a
    run draws: M2's classification weight reads it (DataSpec.n_pool), so the unlabeled-amount, mismatch and filter
    axes change only the data."""
    whole = replace(d, n_unlabeled=None, mismatch=0.0, mismatch_mode="replace", filter_run=None)
    return int(run_split(train, whole, seed).unlabeled.numel())


def _subsample_unlabeled(split: Split, n_unlabeled: int | None) -> Split:
    """A folder split's unlabeled pool cut to a seeded random n_unlabeled images (data.n_unlabeled)."""
    if n_unlabeled is None:
        return split
    pool = split.unlabeled
    if n_unlabeled > pool.numel():
        raise ValueError(f"data.n_unlabeled={n_unlabeled} is more than the {pool.numel()} images of the unlabeled "
                         f"folder (after leaving out labeled, validation and test files)")
    gen = torch.Generator().manual_seed(split.seed)
    return Split(split.labeled, pool[torch.randperm(pool.numel(), generator=gen)[:n_unlabeled]], split.val,
                 split.seed, split.labeled_in_unlabeled)


def _same_split(a: Split, b: Split) -> bool:
    return all(getattr(a, k).shape == getattr(b, k).shape and torch.equal(getattr(a, k).sort().values,
                                                                          getattr(b, k).sort().values)
               for k in ("labeled", "unlabeled", "val"))


def class_names(train: ImageData, dataset: str, classes: list[int] | None = None) -> list[str]:
    """Names of the classes a model of this run predicts, to save with the run: a folder dataset's folder names,
    a built-in dataset's documented names, else the class indices as text; only the task's (data.classes)."""
    if isinstance(train, FolderData):
        return list(train.class_names)
    names = BUILTIN_CLASS_NAMES.get(dataset)
    names = list(names) if names is not None and len(names) == train.num_classes else \
        [str(k) for k in range(train.num_classes)]
    return task_class_names(names, classes)


def config_image_shape(d: DataConfig) -> tuple[int, int, int] | None:
    """The (C, H, W) a data config gives the images, without reading them; None for an unknown dataset."""
    if d.dataset == FOLDER_DATASET:
        return (d.channels, *folder_image_size(d))
    return BUILTIN_IMAGE_SHAPES.get(d.dataset)
