"""Thin TensorBoard wrapper (scalars, image grids, embeddings, hparams) and the console progress bar.
A disabled Monitor (non-zero DDP ranks) accepts every call and writes nothing."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm


class Monitor:
    def __init__(self, log_dir: str | Path | None, purge_step: int | None = None):
        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def images(self, tag: str, images: torch.Tensor, step: int, nrow: int | None = None) -> None:
        """(N, C, H, W) in [0, 1] as one grid."""
        if self.writer and images.numel():
            from torchvision.utils import make_grid

            nrow = nrow or max(1, int(math.sqrt(images.shape[0])))
            grid = make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=1, pad_value=1.0)
            self.writer.add_image(tag, grid, step)

    def embedding(self, features: torch.Tensor, labels: torch.Tensor, thumbnails: torch.Tensor, step: int,
                  tag: str = "latent") -> None:
        if self.writer:
            self.writer.add_embedding(features.detach().float().cpu(), metadata=labels.cpu().tolist(),
                                      label_img=thumbnails.detach().float().cpu(), global_step=step, tag=tag)

    def hparams(self, hparams: dict, metrics: dict) -> None:
        if self.writer:
            clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
            self.writer.add_hparams(clean, metrics, run_name=".")

    def flush(self) -> None:
        if self.writer:
            self.writer.flush()

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def progress(total: int, initial: int, desc: str, enabled: bool):

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True,
                file=sys.stderr, leave=True)
