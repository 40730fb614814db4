"""Device-resident batching: the uint8 images live on the training device once; every batch is an index
into them, drawn from per-epoch permutations made on the device. No DataLoader, no per-batch host copies.
The samplers' state (generator, permutation, position) is part of a checkpoint, so resumes replay the
same data order."""

from __future__ import annotations

from typing import NamedTuple

import torch


class SSLBatch(NamedTuple):
    """One semi-supervised step's data, float images in [0, 1].

    `y_u` holds the hidden true labels of the unlabeled images, for logging only (e.g. the accuracy of a
    method's pseudo-labels): a method must never use it in a loss. It is None where they are not known."""
    x_l: torch.Tensor  # (B_l, C, H, W)
    y_l: torch.Tensor  # (B_l,) int64
    x_u: torch.Tensor  # (B_u, C, H, W)
    y_u: torch.Tensor | None = None  # (B_u,) int64, hidden labels of x_u: logs only, never a loss


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.float().div_(255.0)


class EpochSampler:
    """Endless index stream over `n` items: a fresh permutation per epoch, on `device`.

    With `shard=(rank, world)` each process sees every world-th index of the same permutation, so
    data-parallel ranks draw disjoint batches from one shared order.
    """

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device, shard: tuple[int, int] = (0, 1)):
        if n <= 0:
            raise ValueError("cannot sample batches from an empty pool")
        self.n, self.batch_size, self.device = n, batch_size, torch.device(device)
        self.rank, self.world = shard
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(seed)
        self.perm = self._new_perm()
        self.pos = 0

    def _new_perm(self) -> torch.Tensor:
        self.full_perm = torch.randperm(self.n, generator=self.gen, device=self.device)
        return self._shard(self.full_perm)

    def _shard(self, full: torch.Tensor) -> torch.Tensor:
        return full[self.rank::self.world] if self.world > 1 else full

    def next(self) -> torch.Tensor:
        parts, need = [], self.batch_size
        while need > 0:  # small pools (e.g. 100 labels) wrap around within one batch
            if self.pos >= self.perm.numel():
                self.perm, self.pos = self._new_perm(), 0
            take = self.perm[self.pos:self.pos + need]
            parts.append(take)
            self.pos += take.numel()
            need -= take.numel()
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def state_dict(self) -> dict:
        # The full permutation and a position counted in it (not in this rank's shard), so that rank 0's
        # state resumes every rank, also under a different world size.
        return {"gen": self.gen.get_state(), "perm": self.full_perm.cpu(), "pos": self.pos * self.world}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"].cpu())  # a CPU byte tensor, also for a CUDA generator
        self.full_perm = state["perm"].to(self.device)
        self.perm = self._shard(self.full_perm)
        self.pos = int(state["pos"]) // self.world


class SSLBatcher:
    """Draws SSLBatch(x_l, y_l, x_u, y_u) from device-resident uint8 images and a split's index pools (y_u, the
    unlabeled images' hidden labels, only for logs)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, labeled_idx: torch.Tensor,
                 unlabeled_idx: torch.Tensor, labeled_batch_size: int, batch_size: int, seed: int,
                 shard: tuple[int, int] = (0, 1)):
        self.images, self.device = images, images.device
        self.labeled_idx = labeled_idx.to(self.device)
        self.unlabeled_idx = unlabeled_idx.to(self.device)
        self.labels = labels.to(self.device)
        # Different seeds for the two streams so their orders are independent.
        self.labeled = EpochSampler(len(labeled_idx), labeled_batch_size, seed * 2 + 1, self.device)
        self.unlabeled = EpochSampler(len(unlabeled_idx), batch_size, seed * 2 + 2, self.device, shard)

    def next(self) -> SSLBatch:
        li = self.labeled_idx[self.labeled.next()]
        ui = self.unlabeled_idx[self.unlabeled.next()]
        return SSLBatch(to_float(self.images[li]), self.labels[li], to_float(self.images[ui]), self.labels[ui])

    def state_dict(self) -> dict:
        return {"labeled": self.labeled.state_dict(), "unlabeled": self.unlabeled.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.labeled.load_state_dict(state["labeled"])
        self.unlabeled.load_state_dict(state["unlabeled"])
