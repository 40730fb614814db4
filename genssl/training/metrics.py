"""Evaluation metrics over uint8 image tensors, batched, in eval mode."""

from __future__ import annotations

import torch

from genssl.data.batching import to_float
from genssl.methods.base import Method
from genssl.training.device import autocast


@torch.no_grad()
def correct(method: Method, images_u8: torch.Tensor, labels: torch.Tensor, batch_size: int,
            precision: str = "fp32") -> torch.Tensor:
    """(N,) bool: whether method.predict's top-1 class is right for each uint8 image, in eval mode, in batches."""
    was_training = method.training
    method.eval()
    hits = []
    for i in range(0, images_u8.shape[0], batch_size):
        with autocast(images_u8.device, precision):
            logits = method.predict(to_float(images_u8[i:i + batch_size]))
        hits.append(logits.argmax(1) == labels[i:i + batch_size])
    method.train(was_training)
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool, device=images_u8.device)


def accuracy(method: Method, images_u8: torch.Tensor, labels: torch.Tensor, batch_size: int,
             precision: str = "fp32") -> float:
    """Top-1 accuracy of method.predict over uint8 images, in eval mode, in batches."""
    hits = correct(method, images_u8, labels, batch_size, precision)
    return float(hits.sum()) / max(hits.numel(), 1)
