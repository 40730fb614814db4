"""Data-parallel training on CPU with gloo and 2 processes.

The strict check uses a small batch-norm-free, noise-free method (registered only inside the spawned
workers, so the registry the other tests see is untouched): with the unlabeled stream sharded and the
labeled stream shared, 2 ranks x 16 unlabeled images per step must follow the same loss trajectory as one
process with 32, up to float reduction order (stated tolerance: rtol 1e-3 on every logged loss, atol 1e-5
on the final weights). A checkpoint written by the 2 ranks is resumed by one process.

sgan against one process with the same global batch: per-example losses (the discriminator's) average exactly
across ranks, but two things make a data-parallel GAN step differ from the global-batch one by design, as for
batch norm (genssl/training/distributed.py): batch statistics (the generator's batch norm: off here, g_hidden
is empty) and losses of batch means: feature matching, || mean f(x) - mean f(G(z)) ||^2, is computed per rank,
so the ranks average the gradients of per-shard losses. With the noise fixed per global batch (each rank takes
its shard's rows), the Gaussian noise layers off, and the data-dependent init on the labeled batch (the same on
every rank), 2 ranks must match one process whose feature matching is that per-shard average exactly, up to
float reduction order (rtol 1e-4 on every logged loss, atol 1e-5 on the weights). The torchrun test runs a
method with batch norm end to end through the CLI.
"""

from __future__ import annotations

import json
import os
import shutil
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
            self.seen = []
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, spec.num_classes))

        def configure_optimizers(self):
            return {"main": torch.optim.Adam(self.net.parameters(), lr=self.cfg.lr)}

        def train_step(self, batch, step):
            self.seen.append((step, batch.x_u.clone()))  # the unlabeled batches this process drew
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
        torch.save(dict(tr.method.seen), out / f"full-batches-rank{rank}.pt")
        if world > 1:
            # Stopped after 3 steps (last.pt at step 3), then resumed to the end.
            Trainer(_probe_config(out, per_rank, steps=3), run_dir=out / "resumed", data=data, rank=rank,
                    world_size=world).fit()
            if rank == 0:  # its files are complete once its fit() returned; one process resumes this copy
                shutil.copytree(out / "resumed", out / "resumed_by_one")
            tr = Trainer(_probe_config(out, per_rank), run_dir=out / "resumed", resume=True, data=data, rank=rank,
                         world_size=world)
            tr.fit()
            torch.save({k: v.detach().clone() for k, v in tr.method.state_dict().items()},
                       out / f"resumed-rank{rank}.pt")
            # sgan on the ranks (its one-process reference is the sgan_reference fixture). The patches are plain
            # setattr: this runs only in the spawned children, never in the test process.
            _apply_sgan_patches(setattr, per_shard_feature_matching=False)
            tr = Trainer(_sgan_config(out, per_rank), run_dir=out / "sgan", data=data, rank=rank, world_size=world)
            tr.fit()
            torch.save({k: v.detach().clone() for k, v in tr.method.state_dict().items()
                        if isinstance(v, torch.Tensor)}, out / f"sgan-rank{rank}.pt")
    finally:
        shutdown()


# ---------------------------------------------------------------------------------------------- sgan set-up

def _sgan_config(out_dir: Path, batch_size: int):
    from conftest import tiny_run_config

    return tiny_run_config("sgan", out_dir, {"d_hidden": [32, 16], "g_hidden": [], "z_dim": 8, "input_noise": 0.0,
                                             "hidden_noise": 0.0, "n_samples": 16},
                           train={"steps": STEPS, "batch_size": batch_size, "labeled_batch_size": 16,
                                  "log_every": 1, "eval_every": 3, "ckpt_every": 3})


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _shard_noise(self, n: int, device=None) -> torch.Tensor:
    """z for this rank's n unlabeled images: its rows (rank::world) of one global batch, new at every call (one
    per step), the same global batch in any world size."""
    rank, world = _rank_world()
    self.noise_calls = getattr(self, "noise_calls", 0) + 1
    z = torch.rand(n * world, self.cfg.z_dim, generator=torch.Generator().manual_seed(self.noise_calls))
    return z[rank::world].to(device if device is not None else self.fixed_z.device)


def _init_on_labeled(self, batch) -> None:
    """SGAN.initialize on what every rank has alike: the labeled batch, and the generator on fixed_z."""
    from genssl.nn.layers import data_dependent_init

    data_dependent_init(self.gen, self.fixed_z[:batch.x_l.shape[0]])
    data_dependent_init(self.disc, batch.x_l)
    self.ema.reset(self.disc)


def _per_shard_feature_matching(f_real, f_fake, norm="l2"):
    """What WORLD ranks compute together: the mean of each shard's feature matching (rank r has rows r::WORLD)."""
    from genssl.losses import feature_matching_loss

    return torch.stack([feature_matching_loss(f_real[r::WORLD], f_fake[r::WORLD], norm) for r in range(WORLD)]).mean()


def _apply_sgan_patches(set_attr, per_shard_feature_matching: bool) -> None:
    import genssl.methods.sgan as sgan_mod

    set_attr(sgan_mod.SGAN, "noise", _shard_noise)
    set_attr(sgan_mod.SGAN, "initialize", _init_on_labeled)
    if per_shard_feature_matching:
        set_attr(sgan_mod, "feature_matching_loss", _per_shard_feature_matching)


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


@pytest.fixture(scope="module")
def sgan_reference(tmp_path_factory):
    """sgan in one process with the global batch (32), its feature matching averaged over the 2 ranks' shards."""
    from conftest import synthetic_images

    from genssl.training.trainer import Trainer

    out = tmp_path_factory.mktemp("sgan_ref")
    with pytest.MonkeyPatch.context() as mp_:
        _apply_sgan_patches(mp_.setattr, per_shard_feature_matching=True)
        tr = Trainer(_sgan_config(out, 32), run_dir=out / "sgan",
                     data=(synthetic_images(600, seed=0), synthetic_images(200, seed=1)))
        tr.fit()
    return out, {k: v.detach().clone() for k, v in tr.method.state_dict().items() if isinstance(v, torch.Tensor)}


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


def test_sgan_on_two_ranks_is_the_global_batch_step(ddp_runs, sgan_reference):
    ddp_out, _ = ddp_runs
    ref_out, ref_weights = sgan_reference
    ddp, ref = _losses(ddp_out / "sgan" / "tb"), _losses(ref_out / "sgan" / "tb")
    assert {"train/sup_loss", "train/unsup_loss", "train/fm_loss", "train/d_real", "train/d_fake"} <= set(ref)
    assert set(ddp) == set(ref)
    for tag in ref:
        assert len(ddp[tag]) == len(ref[tag]) == STEPS, tag
        np.testing.assert_allclose(ddp[tag], ref[tag], rtol=1e-4, atol=1e-6, err_msg=tag)
    r0, r1 = torch.load(ddp_out / "sgan-rank0.pt"), torch.load(ddp_out / "sgan-rank1.pt")
    assert r0.keys() == ref_weights.keys()
    for k in ref_weights:
        torch.testing.assert_close(r0[k], r1[k], atol=0, rtol=0, msg=k)
        torch.testing.assert_close(r0[k], ref_weights[k], atol=1e-5, rtol=1e-4, msg=k)
    assert not torch.equal(r0["disc.head.1.v"], torch.load(ddp_out / "sgan-rank0.pt")["ema.shadow.head.1.v"])


def test_a_two_rank_checkpoint_is_resumed_by_one_process(ddp_runs, monkeypatch):
    """One process continues a 2-rank run from its step-3 last.pt (per-rank batch size, as the config says):
    from the ranks' weights, with rank 0's RNG state, drawing the images the two ranks would have drawn next
    (the shared unlabeled order), to the end."""
    from conftest import synthetic_images

    from genssl import registry
    from genssl.runs.run_dir import RunDir
    from genssl.training.trainer import Trainer

    ddp_out, _ = ddp_runs
    run = RunDir(ddp_out / "resumed_by_one")
    ckpt = run.load_checkpoint("last.pt")
    assert ckpt["step"] == 3 and len(ckpt["rng_ranks"]) == WORLD
    probe = _probe_class()
    first = {}
    real_step = probe.train_step

    def recording(self, batch, step):
        if not first:
            first.update(state={k: v.clone() for k, v in self.state_dict().items()}, rng=torch.get_rng_state())
        return real_step(self, batch, step)

    monkeypatch.setattr(probe, "train_step", recording)
    monkeypatch.setitem(registry.METHODS._entries, "ddp_probe", probe)
    tr = Trainer(_probe_config(ddp_out, 32 // WORLD), run_dir=run.path, resume=True,
                 data=(synthetic_images(600, seed=0), synthetic_images(200, seed=1)))
    results = tr.fit()
    assert results["steps"] == STEPS and np.isfinite(results["test_acc"])
    for k, v in ckpt["method_state"]["model"].items():
        assert torch.equal(first["state"][k], v), f"the resumed process did not start from the ranks' {k}"
    assert torch.equal(first["rng"], ckpt["rng_ranks"][0]["torch"])
    # Its first two batches of 16 are the 32 images the two ranks drew together at step 3 (any order).
    seen = dict(tr.method.seen)
    ranks = [torch.load(ddp_out / f"full-batches-rank{r}.pt")[3] for r in range(WORLD)]
    rows = lambda x: torch.unique(x.flatten(1), dim=0)  # noqa: E731  (sorted distinct images)
    assert torch.equal(rows(torch.cat([seen[3], seen[4]])), rows(torch.cat(ranks)))


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
    """`torchrun` is `python -m torch.distributed.run`: launched through this interpreter, it needs no script on
    PATH."""
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
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}", "-m", "genssl", "train", str(cfg),
            "--run-dir", str(run_dir)]
    first = subprocess.run(base, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 4
    assert (run_dir / "last.pt").is_file() and (run_dir / "best.pt").is_file()
    assert first.stdout.count('"test_acc"') == 1  # results printed by rank 0 only
