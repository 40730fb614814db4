"""The task's classes (`data.classes`): a labeled dataset restricted to some of its classes, the others kept
only as candidates for the unlabeled pool, as in Oliver et al. 2018's class-mismatch study (sec. 4.4).

The training labels are permuted so that the task's classes come first, in the order `classes` names them
(0..K'-1), and the held-out classes follow (K'..K-1): the ImageData stays a valid K-class dataset, a model
predicts K' classes, and `make_split(classes=range(K'))` keeps every held-out image out of the labeled and
validation sets. The test set keeps the task's classes only. Held-out images that reach the unlabeled pool
carry labels >= K' in SSLBatch.y_u, read by logs only (a pseudo-label never matches them).
"""

from __future__ import annotations

import torch

from genssl.data.images import ImageData


def restrict_to_task(train: ImageData, test: ImageData, classes: list[int] | None) -> tuple[ImageData, ImageData]:
    """(train relabeled task-first, test with the task's classes only); unchanged when classes is None."""
    if classes is None:
        return train, test
    order = task_order(classes, train.num_classes)
    relabel = torch.empty(train.num_classes, dtype=torch.int64)
    relabel[torch.tensor(order)] = torch.arange(train.num_classes)
    keep = torch.isin(test.labels, torch.tensor(list(classes)))
    if not keep.any():
        raise ValueError(f"data.classes {classes}: the test set has no image of these classes")
    return (ImageData(train.images, relabel[train.labels], train.num_classes, train.name),
            ImageData(test.images[keep], relabel[test.labels[keep]], train.num_classes, test.name))


def task_order(classes: list[int], num_classes: int) -> list[int]:
    """Original class indices in their new order: the task's, then the held-out ones."""
    bad = [k for k in classes if not 0 <= k < num_classes]
    if bad:
        raise ValueError(f"data.classes {list(classes)}: {bad} are not classes of this {num_classes}-class dataset "
                         f"(0..{num_classes - 1})")
    return list(classes) + [k for k in range(num_classes) if k not in classes]


def task_num_classes(train: ImageData, classes: list[int] | None) -> int:
    """How many classes a model of this task predicts."""
    return train.num_classes if classes is None else len(classes)


def task_split_classes(classes: list[int] | None) -> list[int] | None:
    """The `classes` argument of make_split for data relabeled by restrict_to_task."""
    return None if classes is None else list(range(len(classes)))


def task_class_names(names: list[str], classes: list[int] | None) -> list[str]:
    """The names of the task's classes, in the task's order."""
    return list(names) if classes is None else [names[k] for k in classes]
