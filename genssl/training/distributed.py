"""Data-parallel training with torch.distributed (launched by `torchrun`), without wrapping networks in DDP.

Why not `DistributedDataParallel`: a Method owns several networks and optimizers and calls them in
method-specific patterns (a GAN's generator step backpropagates through the discriminator; a network is
called several times before one backward). DDP's reducer expects one forward per backward per wrapped
module and would all-reduce gradients an optimizer never uses. Instead, every `Method.update` averages
the gradients of exactly the parameters its optimizer owns, in one coalesced all-reduce, right after
backward and before unscaling, clipping and the step. Equal per-rank batch sizes make the average of the
per-rank mean losses' gradients equal to the gradient of the mean over the global batch.

What each rank does and does not share:
- parameters and buffers start from rank 0's (broadcast after initialization or resume);
- the unlabeled stream is sharded (EpochSampler `shard`): at every step the ranks' batches are disjoint
  slices of one shared permutation, and their union is the batch a single process would draw with
  batch_size x world. So `train.batch_size` is per rank; the global unlabeled batch is world x batch_size;
- the labeled stream is NOT sharded: every rank draws the same labeled batch (same seed). The labeled pool
  of these benchmarks (100 images) is about one batch, so sharding it would only repeat images within a
  rank; identical labeled batches make the averaged supervised gradient exactly the single-process one;
- batch norm keeps per-rank batch statistics (no SyncBatchNorm: it needs CUDA, and methods run batch norm
  over concatenated labeled+unlabeled batches whose labeled half is identical across ranks). Running
  statistics are taken from rank 0 before each evaluation and checkpoint, as DDP's broadcast_buffers does;
- noise (dropout, z, augmentation) uses a per-rank seed, and each rank's RNG state is checkpointed;
- logged training losses are averaged across ranks, so rank 0 logs the global-batch means and every rank
  takes the same divergence decision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int


def env_from_torchrun() -> DistEnv | None:
    """The RANK/WORLD_SIZE/LOCAL_RANK that torchrun sets, or None when not launched by it (or world 1)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    if world <= 1:
        return None
    return DistEnv(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))


def init_distributed(env: DistEnv, device: str = "auto") -> str:
    """Join the process group: nccl when this run trains on CUDA, gloo on CPU. Each rank drives the GPU
    numbered by its LOCAL_RANK, so `cuda` (no index) means that GPU from here on. Returns the backend."""
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError(f"train.device={device!r} but CUDA is not available; use 'auto' or 'cpu'")
        if device.startswith("cuda:"):
            raise ValueError(f"train.device={device!r} pins every rank to one GPU; under torchrun use "
                             f"'auto' or 'cuda' (each rank takes the GPU of its LOCAL_RANK)")
        if env.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {env.local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                             f"lower --nproc_per_node")
        torch.cuda.set_device(env.local_rank)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)
    return backend


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class GradSync:
    """Averages gradients across ranks inside `Method.update`; also syncs buffers, logs and RNG states."""

    def __init__(self, method: torch.nn.Module):
        if not dist.is_initialized():
            raise RuntimeError("data-parallel training needs torch.distributed initialized; launch with torchrun")
        self.method = method
        self.world = dist.get_world_size()
        self.broadcast_state()

    @torch.no_grad()
    def broadcast_state(self) -> None:
        """Every rank takes rank 0's parameters and buffers (inits are seeded per rank)."""
        for t in list(self.method.parameters()) + list(self.method.buffers()):
            dist.broadcast(t.data, src=0)

    @torch.no_grad()
    def sync_buffers(self) -> None:
        """Batch-norm running statistics (and any other buffer) from rank 0, before evaluation or saving."""
        for b in self.method.buffers():
            dist.broadcast(b, src=0)

    @torch.no_grad()
    def __call__(self, optimizer: torch.optim.Optimizer) -> None:
        """Average the gradients of `optimizer`'s parameters in one all-reduce per dtype. A parameter without
        a gradient is skipped; all ranks run the same graph, so they skip the same ones."""
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for g in grads:
            by_dtype.setdefault(g.dtype, []).append(g)
        for group in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in group])
            dist.all_reduce(flat)
            flat.div_(self.world)
            offset = 0
            for g in group:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    def mean_logs(self, sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Average each logged sum across ranks (one all-reduce per log interval)."""
        if not sums:
            return sums
        keys = sorted(sums)
        flat = torch.stack([sums[k].float().reshape(()) for k in keys])
        dist.all_reduce(flat)
        flat.div_(self.world)
        return dict(zip(keys, flat.unbind()))

    def gather(self, obj) -> list:
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    @staticmethod
    def barrier() -> None:
        dist.barrier()


def wrap_method_for_ddp(method) -> GradSync:
    """Make `method` data-parallel in place: sync its state from rank 0 and average gradients in update()."""
    sync = GradSync(method)
    method.grad_sync = sync
    return sync
