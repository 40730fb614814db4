"""Evaluation metrics over uint8 image tensors, batched, in eval mode."""

from __future__ import annotations

import torch

from genssl.data.batching import to_float
from genssl.methods.base import Method
from genssl.training.device import autocast


@torch.no_grad()
def accuracy(method: Method, images_u8: torch.Tensor, labels: torch.Tensor, batch_size: int,
             precision: str = "fp32") -> float:
    """Top-1 accuracy of method.predict over uint8 images, in eval mode, in batches."""
    was_training = method.training
    method.eval()
    correct = 0
    for i in range(0, images_u8.shape[0], batch_size):
        with autocast(images_u8.device, precision):
            logits = method.predict(to_float(images_u8[i:i + batch_size]))
        correct += (logits.argmax(1) == labels[i:i + batch_size]).sum()
    method.train(was_training)
    return float(correct) / max(images_u8.shape[0], 1)
