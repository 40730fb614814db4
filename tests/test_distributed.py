"""Data-parallel training on CPU with gloo and 2 processes.

The strict check uses a small batch-norm-free, noise-free method (registered only inside the spawned
workers, so the registry the other tests see is untouched): with the unlabeled stream sharded and the
labeled stream shared, 2 ranks x 16 unlabeled images per step must follow the same loss trajectory as one
process with 32, up to float reduction order (stated tolerance: rtol 1e-3 on every logged loss, atol 1e-5
on the final weights). Batch norm keeps per-rank statistics (see genssl/distributed.py), so methods with
batch norm match a single process only approximately; the torchrun test runs one of them end to end.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

WORLD = 2
STEPS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _probe_class():
    """A linear-tanh classifier with an entropy term on the unlabeled batch: no batch norm, no noise."""
    import torch.nn.functional as F
    from torch import nn

    from genssl.methods.base import Method

    class Probe(Method):
        @dataclass
        class Config:
            lr: float = 0.01

        def __init__(self, cfg, spec):
            super().__init__(cfg, spec)
            d = int(np.prod(spec.image_shape))
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, spec.num_classes))

        def configure_optimizers(self):
            return {"main": torch.optim.Adam(self.net.parameters(), lr=self.cfg.lr)}

        def train_step(self, batch, step):
            sup = F.cross_entropy(self.net(batch.x_l), batch.y_l)
            p = self.net(batch.x_u).softmax(1)
            ent = -(p * p.clamp_min(1e-8).log()).sum(1).mean()
            self.update(sup + ent)
            return {"train/sup_loss": sup.detach(), "train/ent": ent.detach()}

        def predict(self, x):
            return self.net(x)

        def encode(self, x):
            return self.net[:3](x)

    Probe.name = "ddp_probe"
    return Probe


def _probe_config(out_dir: Path, batch_size: int, steps: int = STEPS):
    from conftest import tiny_run_config

    return tiny_run_config("ddp_probe", out_dir, train={"steps": steps, "batch_size": batch_size,
                                                        "labeled_batch_size": 16, "log_every": 1,
                                                        "eval_every": 3, "ckpt_every": 3})


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    from conftest import synthetic_images

    from genssl.training.distributed import DistEnv, init_distributed, shutdown
    from genssl.training.trainer import Trainer

    from genssl import registry

    registry.METHODS._entries["ddp_probe"] = _probe_class()  # only in this child process
    data = synthetic_images(600, seed=0), synthetic_images(200, seed=1)
    out = Path(out)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        init_distributed(DistEnv(rank, world, rank), "cpu")
    try:
        per_rank = 32 // world
        # Uninterrupted run.
        tr = Trainer(_probe_config(out, per_rank), run_dir=out / "full", data=data, rank=rank, world_size=world)
        tr.fit()
        torch.save({k: v.detach().clone() for k, v in tr.method.state_dict().items()}, out / f"full-rank{rank}.pt")
        if world > 1:
            # Stopped after 3 steps (last.pt at step 3), then resumed to the end.
            Trainer(_probe_config(out, per_rank, steps=3), run_dir=out / "resumed", data=data, rank=rank,
                    world_size=world).fit()
            tr = Trainer(_probe_config(out, per_rank), run_dir=out / "resumed", resume=True, data=data, rank=rank,
                         world_size=world)
            tr.fit()
            torch.save({k: v.detach().clone() for k, v in tr.method.state_dict().items()},
                       out / f"resumed-rank{rank}.pt")
    finally:
        shutdown()


def _losses(tb_dir: Path) -> dict[str, np.ndarray]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {tag: np.array([e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.step)])
            for tag in acc.Tags()["scalars"] if tag.startswith("train/")}


def _spawn(world: int, out: Path) -> None:
    mp.start_processes(_worker, args=(world, _free_port(), str(out)), nprocs=world, join=True, start_method="spawn")


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    ddp_out, ref_out = tmp_path_factory.mktemp("ddp"), tmp_path_factory.mktemp("ref")
    _spawn(WORLD, ddp_out)
    from genssl import registry

    with pytest.MonkeyPatch.context() as mp_:  # the probe leaves the registry when the reference run ends
        mp_.setitem(registry.METHODS._entries, "ddp_probe", _probe_class())
        _worker(0, 1, 0, str(ref_out))  # the single-process reference, in this process
    return ddp_out, ref_out


def test_two_ranks_follow_the_single_process_loss_trajectory(ddp_runs):
    ddp_out, ref_out = ddp_runs
    ddp, ref = _losses(ddp_out / "full" / "tb"), _losses(ref_out / "full" / "tb")
    assert set(ddp) == set(ref) == {"train/sup_loss", "train/ent"}
    for tag in ref:
        assert len(ddp[tag]) == len(ref[tag]) == STEPS
        np.testing.assert_allclose(ddp[tag], ref[tag], rtol=1e-3, err_msg=tag)
    a, b = torch.load(ddp_out / "full-rank0.pt"), torch.load(ref_out / "full-rank0.pt")
    for k in b:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)


def test_ranks_agree_and_only_rank0_writes(ddp_runs):
    ddp_out, _ = ddp_runs
    r0, r1 = torch.load(ddp_out / "full-rank0.pt"), torch.load(ddp_out / "full-rank1.pt")
    for k in r0:
        torch.testing.assert_close(r0[k], r1[k], atol=0, rtol=0, msg=k)
    run = ddp_out / "full"
    writers = {f.name.split(".")[-2] for f in (run / "tb").glob("events.*")}  # events.out.tfevents.T.HOST.PID.N
    assert len(writers) == 1, f"TensorBoard files from several processes: {writers}"
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == STEPS


def test_resume_reproduces_the_uninterrupted_run(ddp_runs):
    ddp_out, _ = ddp_runs
    full, resumed = torch.load(ddp_out / "full-rank0.pt"), torch.load(ddp_out / "resumed-rank0.pt")
    for k in full:
        torch.testing.assert_close(full[k], resumed[k], atol=1e-6, rtol=1e-5, msg=k)
    r1 = torch.load(ddp_out / "resumed-rank1.pt")
    for k in full:
        torch.testing.assert_close(resumed[k], r1[k], atol=0, rtol=0, msg=k)


def test_batcher_state_resumes_every_rank():
    """Rank 0's saved sampler state must give rank 1 its own shard, not rank 0's."""
    from genssl.data.batching import EpochSampler

    ranks = [EpochSampler(10, 3, seed=5, device="cpu", shard=(r, 2)) for r in range(2)]
    for s in ranks:
        s.next()
    state = ranks[0].state_dict()
    resumed = EpochSampler(10, 3, seed=0, device="cpu", shard=(1, 2))
    resumed.load_state_dict(state)
    second = [r.next() for r in ranks]  # this batch wraps into the next epoch's permutation
    assert torch.equal(resumed.next(), second[1])
    single = EpochSampler(10, 6, seed=0, device="cpu")
    single.load_state_dict(state)  # a 2-rank run resumed by one process continues the shared order
    assert sorted(single.next().tolist()) == sorted(torch.cat(second).tolist())


def _write_idx_dataset(root: Path) -> None:
    """The synthetic images as MNIST IDX files, so `genssl train` reads them like the real dataset."""
    from conftest import synthetic_images

    folder = root / "mnist"
    folder.mkdir(parents=True)
    for prefix, n, seed in (("train", 400, 0), ("t10k", 100, 1)):
        data = synthetic_images(n, seed=seed)
        for kind, arr in (("images-idx3", data.images[:, 0].numpy()), ("labels-idx1", data.labels.numpy())):
            arr = np.ascontiguousarray(arr, dtype=np.uint8)
            header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
            (folder / f"{prefix}-{kind}-ubyte").write_bytes(header + arr.tobytes())


def test_torchrun_cli_trains(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip("torchrun is not installed next to this python")
    _write_idx_dataset(tmp_path / "data")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "method: {name: pseudo_label, hidden: [64], dropout: 0.1}\n"
        f"data: {{dataset: mnist, root: '{tmp_path / 'data'}', download: false, n_labels: 20, n_val: 50}}\n"
        "train: {steps: 4, batch_size: 16, labeled_batch_size: 10, eval_every: 2, log_every: 1, ckpt_every: 2,"
        " eval_batch_size: 100, progress: false, device: cpu}\n"
    )
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [str(torchrun), "--standalone", f"--nproc_per_node={WORLD}", "-m", "genssl", "train", str(cfg),
            "--run-dir", str(run_dir)]
    first = subprocess.run(base, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 4
    assert (run_dir / "last.pt").is_file() and (run_dir / "best.pt").is_file()
    assert first.stdout.count('"test_acc"') == 1  # results printed by rank 0 only
