"""Exact resume for every registered method, for M1+M2 (vae_m2 on an M1 run folder) and for the generated-samples
classifier of a grid (genssl.compare.samples), in process: a run interrupted at a step drawn from a fixed seed
(printed in every assertion message) and resumed from its last checkpoint ends bit for bit where the
uninterrupted run ends: weights, optimizer, scaler, sampler and RNG states, best checkpoint, results and
TensorBoard curves. (tests/test_reliability.py kills real `genssl train` processes with SIGKILL.)"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_run_config
from genssl import Trainer, list_methods
from genssl.compare.runner import run_grid
from genssl.runs.run_dir import RunDir
from genssl.training import trainer as trainer_mod
from method_recipes import recipe

KILL_SEED = 2020
"""Each case's kill step is random.Random(f"{KILL_SEED}/{case}").randint(CKPT, STEPS - 1)."""
STEPS, CKPT, EVAL, LOG = 12, 4, 6, 5  # eval and log cadences misaligned with checkpoints: resumes land mid-interval
SAME_KEYS = ("method_state", "batcher", "rng", "rng_ranks", "step", "best_val", "best_step", "method", "config",
             "data_spec")


def kill_step(case: str) -> int:
    return random.Random(f"{KILL_SEED}/{case}").randint(CKPT, STEPS - 1)


def assert_same(a, b, where: str, path: str = "") -> None:
    """Bit-for-bit equality of nested checkpoint contents."""
    assert type(a) is type(b), f"{where}: {path} has types {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: {path} keys differ: {sorted(a)} vs {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], where, f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: {path} lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, where, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), f"{where}: tensor {path} differs"
    else:
        assert a == b, f"{where}: {path}: {a!r} != {b!r}"


def scalar_series(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    # in step order: the event files of a run and of its resumption, written within one second, are read in the
    # order of their names (which hold the pid), so the same events can come back in another order
    return {tag: sorted((e.step, e.value) for e in acc.Scalars(tag)) for tag in acc.Tags()["scalars"]}


def interrupt_at(monkeypatch, at: int) -> None:
    """The next Trainer raises KeyboardInterrupt (as Ctrl-C would) just before computing step `at`."""
    real = trainer_mod.SingleStep.__call__

    def step(self, batches, s):
        if s == at:
            raise KeyboardInterrupt(f"interrupted before step {at}")
        return real(self, batches, s)

    monkeypatch.setattr(trainer_mod.SingleStep, "__call__", step)


def check_interrupted_run_equals_uninterrupted(cfg_for, data, tmp_path, monkeypatch, case: str) -> None:
    at = kill_step(case)
    where = f"[{case}: interrupted before step {at} (KILL_SEED={KILL_SEED}), resumed from step {at // CKPT * CKPT}]"
    full = tmp_path / "full"
    a = Trainer(cfg_for(full), run_dir=full, data=data).fit()

    part = tmp_path / "part"
    with monkeypatch.context() as m:
        interrupt_at(m, at)
        with pytest.raises(KeyboardInterrupt):
            Trainer(cfg_for(part), run_dir=part, data=data).fit()
    ckpt, _ = RunDir(part).load_resume_checkpoint()
    assert ckpt["step"] == at // CKPT * CKPT and not (part / "results.json").exists(), where
    b = Trainer(cfg_for(part), run_dir=part, data=data, resume=True).fit()

    for key in ("test_acc", "best_val_acc", "best_step", "steps"):
        assert a[key] == b[key], f"results {key}: {a[key]} vs {b[key]} {where}"
    la, lb = RunDir(full).load_checkpoint("last.pt"), RunDir(part).load_checkpoint("last.pt")
    for key in SAME_KEYS:
        assert_same(la.get(key), lb.get(key), f"last.pt {where}", key)
    assert_same(RunDir(full).load_checkpoint("best.pt")["model"], RunDir(part).load_checkpoint("best.pt")["model"],
                f"best.pt {where}")
    sa, sb = scalar_series(full), scalar_series(part)
    assert "val/acc" in sa and any(t.startswith("train/") for t in sa), sa.keys()
    assert sa == sb, f"TensorBoard curves differ {where}"


def _cfg(method: str, overrides: dict | None = None):
    def make(run_dir: Path):
        return tiny_run_config(method, run_dir.parent / "out", {**recipe(method), **(overrides or {})},
                               train={"steps": STEPS, "ckpt_every": CKPT, "eval_every": EVAL, "log_every": LOG,
                                      "seed": 3})
    return make


@pytest.mark.parametrize("method", list_methods())
def test_every_method_resumes_exactly(method, tiny_data, tmp_path, monkeypatch):
    check_interrupted_run_equals_uninterrupted(_cfg(method), tiny_data, tmp_path, monkeypatch, method)


@pytest.fixture(scope="module")
def m1_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("m1")
    cfg = tiny_run_config("vae_m1", out, {"hidden": [32], "z_dim": 6, "readout": "linear"},
                          train={"steps": 6, "eval_every": 3, "ckpt_every": 3})
    Trainer(cfg, run_dir=out / "m1", data=tiny_data).fit()
    return out / "m1"


def test_m1_m2_resumes_exactly(m1_run, tiny_data, tmp_path, monkeypatch):
    """M2 on a frozen M1's latents, z1 re-sampled every step, and the active-dims buffer set at initialization."""
    cfg = _cfg("vae_m2", {"encoder": str(m1_run), "enc_hidden": [32], "dec_hidden": [32], "cls_hidden": [32],
                          "z_dim": 4, "m1_active_threshold": 0.01})
    check_interrupted_run_equals_uninterrupted(cfg, tiny_data, tmp_path, monkeypatch, "m1+m2")
    keep = RunDir(tmp_path / "part").load_checkpoint("last.pt")["method_state"]["model"]["m1_keep"]
    assert keep.dtype == torch.bool and keep.any()


# ---------------------------------------------------------------------------------------------- grids

def _grid(tmp_path: Path, name: str) -> Path:
    train = {"steps": STEPS, "batch_size": 32, "labeled_batch_size": 16, "eval_every": EVAL, "log_every": LOG,
             "ckpt_every": CKPT, "eval_batch_size": 128, "progress": False}
    grid = {"out": str(tmp_path / name), "overrides": {"train": train}, "n_labels": [20], "seeds": [1],
            "methods": {"sgan": {"method": {"name": "sgan", **recipe("sgan")},
                                 "data": {"dataset": "synthetic", "n_val": 100}},
                        "sgan+samples": {"samples_from": "sgan",
                                         "classifier": {"steps": 10, "eval_every": 4, "batch_size": 16,
                                                        "labeled_batch_size": 8, "threshold": 0.2,
                                                        "hidden": [32]}}}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def _results(out: Path, run: str) -> dict:
    res = json.loads((out / "runs" / run / "results.json").read_text())
    timeless = [{k: v for k, v in p.items() if k != "clock_s"} for p in res.get("curve", [])]  # seconds, not math
    return {**{k: v for k, v in res.items() if "wall_time" not in k and "clock" not in k
               and k not in ("source_run", "device", "curve")}, "curve": timeless}


def test_a_grid_interrupted_in_its_gan_and_in_its_samples_classifier_ends_as_an_uninterrupted_one(
        tiny_data, tmp_path, monkeypatch):
    """The grid is stopped twice (seeded points, printed): inside the SGAN run (resumed from its last.pt on
    restart) and inside the samples classifier (which keeps no checkpoint: restarted from scratch, seeded)."""
    import genssl.downstream.samples as samples_mod

    run_grid(_grid(tmp_path, "full"), data=tiny_data, progress=False)
    gan_at = kill_step("grid-sgan")
    sample_call = random.Random(f"{KILL_SEED}/grid-samples").randint(2, 9)
    where = (f"[sgan interrupted before step {gan_at}, samples classifier at its step {sample_call} "
             f"(KILL_SEED={KILL_SEED})]")
    grid = _grid(tmp_path, "part")
    with monkeypatch.context() as m:
        interrupt_at(m, gan_at)
        with pytest.raises(KeyboardInterrupt):
            run_grid(grid, data=tiny_data, progress=False)
    assert RunDir(tmp_path / "part" / "runs" / "sgan-n20-s1").has("last.pt"), where
    real, calls = samples_mod.labeled_samples, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == sample_call:
            raise KeyboardInterrupt("interrupted in the samples classifier")
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(samples_mod, "labeled_samples", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_grid(grid, data=tiny_data, progress=False)
    assert not (tmp_path / "part" / "runs" / "sgan+samples-n20-s1" / "results.json").exists(), where
    run_grid(grid, data=tiny_data, progress=False)
    for run in ("sgan-n20-s1", "sgan+samples-n20-s1"):
        assert _results(tmp_path / "full", run) == _results(tmp_path / "part", run), f"{run} differs {where}"
    assert_same(RunDir(tmp_path / "full" / "runs" / "sgan-n20-s1").load_checkpoint("last.pt")["method_state"],
                RunDir(tmp_path / "part" / "runs" / "sgan-n20-s1").load_checkpoint("last.pt")["method_state"],
                f"sgan last.pt {where}")


@pytest.mark.parametrize("leave", ["nothing_checkpointed", "prev_only"])
def test_a_grid_restarts_a_run_killed_before_or_between_its_checkpoint_writes(leave, tiny_data, tmp_path,
                                                                              monkeypatch):
    """A grid stopped before a run's first checkpoint leaves a folder with config, split and events but no
    last.pt; one killed between the two renames of a checkpoint save leaves prev.pt without last.pt. Restarting
    the grid must train (or resume) that run, not fail it as 'already holds a run'."""
    grid = _grid(tmp_path, "g")
    run_dir = tmp_path / "g" / "runs" / "sgan-n20-s1"
    with monkeypatch.context() as m:
        interrupt_at(m, 2 if leave == "nothing_checkpointed" else CKPT + 2)
        with pytest.raises(KeyboardInterrupt):
            run_grid(grid, data=tiny_data, progress=False)
    if leave == "prev_only":
        (run_dir / "last.pt").replace(run_dir / "prev.pt")  # as a kill between RunDir's two renames leaves it
    assert not (run_dir / "last.pt").exists() and (run_dir / "split.pt").is_file()
    with pytest.warns(RuntimeWarning, match="from prev.pt") if leave == "prev_only" else _no_warning():
        table = run_grid(grid, data=tiny_data, progress=False)
    assert [r["seeds"] for r in table] == [1, 1], table
    assert json.loads((run_dir / "results.json").read_text())["steps"] == STEPS


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
