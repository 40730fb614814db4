"""Faults that must never lose a run: kills during saves and during training, failing writes, malicious or
damaged checkpoints, divergence. The SIGKILL-and-resume test runs the real CLI in subprocesses on a tiny IDX
dataset written into tmp, for every registered method that has a resume recipe below."""

from __future__ import annotations

import ast
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

import genssl
from datafiles import write_idx_dataset
from genssl import Trainer
from genssl.fileio import CheckpointError, atomic_torch_save, atomic_write_json, safe_torch_load
from genssl.runs.run_dir import RunDir
from genssl.training.trainer import DivergenceError

REPO = Path(__file__).resolve().parent.parent
PACKAGE = Path(genssl.__file__).resolve().parent


def _env(data_root: Path) -> dict:
    env = dict(os.environ, GENSSL_DATA=str(data_root), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


# ---------------------------------------------------------------------------------------------- atomic writes

SAVER = textwrap.dedent("""
    import sys, torch
    from genssl.fileio import atomic_torch_save
    path = sys.argv[1]
    i = 1
    while True:  # each save is ~16 MB, so a kill lands inside torch.save / write / fsync most of the time
        atomic_torch_save({"i": i, "w": torch.full((4_000_000,), float(i))}, path)
        print(i, flush=True)
        i += 1
""")


KILL_SEED = 1234
"""Seeds the kill points of the SIGKILL tests: each test draws from random.Random(f"{KILL_SEED}/<test case>") and
prints what it drew in its assertion messages."""


@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_sigkill_during_save_leaves_a_loadable_file(tmp_path, delay):
    path = tmp_path / "last.pt"
    atomic_torch_save({"i": 0, "w": torch.zeros(10)}, path)
    wait = delay + random.Random(f"{KILL_SEED}/save/{delay}").random() * 0.05
    where = f"(killed {wait:.4f}s after the first save, KILL_SEED={KILL_SEED})"
    with subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, text=True,
                          env=_env(tmp_path)) as proc:
        try:
            assert proc.stdout.readline().strip() == "1", "the saver did not start"  # an event: the first save
            time.sleep(wait)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, where
    state = safe_torch_load(path)
    i = state["i"]
    assert i >= 1, where
    assert torch.equal(state["w"], torch.full((4_000_000,), float(i))), f"the file mixes two saves {where}"


def test_failing_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_torch_save({"i": 0}, path)
    # 1. the object cannot be serialized: the old file is never touched
    # (a local lambda: AttributeError "Can't pickle local object" on Python 3.11, PicklingError on later ones)
    with pytest.raises((pickle.PicklingError, AttributeError), match="Can't pickle local object .*<lambda>"):
        atomic_torch_save({"i": 1, "bad": lambda: 0}, path)
    # 2. the disk fills up while writing (fsync fails): the temporary file is removed, the old file stays
    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        atomic_torch_save({"i": 2}, path)
    with pytest.raises(OSError, match="No space"):
        atomic_write_json({"i": 2}, tmp_path / "results.json")
    monkeypatch.undo()
    assert safe_torch_load(path) == {"i": 0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"], "a temporary file was left behind"


def test_trainer_keeps_last_good_checkpoint_when_a_save_fails(run_config_factory, tiny_data, monkeypatch):
    import genssl.runs.run_dir as run_dir_mod

    real = run_dir_mod.atomic_torch_save
    saves = []

    def flaky(obj, path):
        if Path(path).name in ("last.pt", "last.pt.staged"):
            saves.append(obj["step"])
            if len(saves) == 2:
                raise OSError(28, "No space left on device")
        real(obj, path)

    monkeypatch.setattr(run_dir_mod, "atomic_torch_save", flaky)
    cfg = run_config_factory("supervised", train={"steps": 9, "ckpt_every": 3, "eval_every": 3})
    trainer = Trainer(cfg, data=tiny_data)
    with pytest.raises(OSError, match="No space"):
        trainer.fit()
    assert safe_torch_load(trainer.run_dir / "last.pt")["step"] == 3
    monkeypatch.undo()
    results = Trainer(cfg, data=tiny_data, resume=True).fit()  # the run continues from the good checkpoint
    assert results["steps"] == 9


def test_every_run_file_is_written_atomically():
    """Grep: run outputs go through genssl.fileio's atomic writers, never a bare open/save."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "fileio.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
            if (owner == "torch" and name == "save") or name in ("write_text", "write_bytes") or (
                    owner == "json" and name == "dump"):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {owner}.{name}")
    assert not offenders, f"non-atomic writes: {offenders}"


# ---------------------------------------------------------------------------------------------- safe loading

def test_every_torch_load_uses_weights_only():
    calls = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and getattr(node.func.value, "id", "") == "torch"):
                ok = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                         for k in node.keywords)
                calls.append((f"{path.relative_to(PACKAGE)}:{node.lineno}", ok))
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("load", "loads") and getattr(node.func.value, "id", "") == "pickle"):
                calls.append((f"{path.relative_to(PACKAGE)}:{node.lineno} pickle.{node.func.attr}", False))
    assert calls, "expected at least checkpoint.safe_torch_load"
    assert all(ok for _, ok in calls), [c for c, ok in calls if not ok]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "payload": _Evil(marker)}, path)
    with pytest.raises(CheckpointError) as err:
        safe_torch_load(path)
    msg = str(err.value)
    assert str(path) in msg and "refused" in msg and "exec" in msg
    assert not marker.exists(), "the payload ran"


def test_malicious_last_checkpoint_refused_on_resume(run_config_factory, tiny_data):
    cfg = run_config_factory("supervised", train={"steps": 3})
    trainer = Trainer(cfg, data=tiny_data)
    trainer.fit()
    marker = trainer.run_dir / "pwned"
    torch.save({"format_version": 1, "payload": _Evil(marker)}, trainer.run_dir / "last.pt")
    with pytest.raises(CheckpointError, match="last.pt: refused"):
        Trainer(cfg, data=tiny_data, resume=True).fit()
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "flipped_byte", "header_only"])
def test_damaged_checkpoint_gives_clear_error(tmp_path, damage):
    path = tmp_path / "last.pt"
    atomic_torch_save({"w": torch.randn(1000), "step": 3}, path)
    data = path.read_bytes()
    rng = random.Random(0)
    damaged = {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "garbage": bytes(rng.randrange(256) for _ in range(2000)),
        "flipped_byte": data[:100] + bytes([data[100] ^ 0xFF]) + data[101:],
        "header_only": data[:30],
    }[damage]
    path.write_bytes(damaged)
    try:
        state = safe_torch_load(path)
    except CheckpointError as e:
        assert str(path) in str(e)
    else:  # a flipped byte inside tensor data is undetectable without a checksum; it must still load cleanly
        assert damage == "flipped_byte" and set(state) == {"w", "step"}


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        safe_torch_load(tmp_path / "nothing.pt")


# ---------------------------------------------------------------------------------------------- divergence

def _nan_after(method_cls, bad_step: int, term: str, value: float):
    original = method_cls.train_step

    def train_step(self, batch, step):
        logs = original(self, batch, step)
        if step >= bad_step:
            logs = dict(logs, **{term: torch.tensor(value)})
        return logs

    return train_step


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_loss_stops_the_run_and_keeps_last_good_checkpoint(run_config_factory, tiny_data, monkeypatch, value):
    from genssl.methods.supervised import Supervised

    monkeypatch.setattr(Supervised, "train_step", _nan_after(Supervised, 7, "train/sup_loss", value))
    cfg = run_config_factory("supervised", train={"steps": 12, "ckpt_every": 3, "log_every": 1, "eval_every": 3})
    trainer = Trainer(cfg, data=tiny_data)
    with pytest.raises(DivergenceError) as err:
        trainer.fit()
    msg = str(err.value)
    assert "'supervised'" in msg and "step 8" in msg and "train/sup_loss" in msg and str(value) in msg
    assert "step 6" in msg and "intact" in msg
    last = safe_torch_load(trainer.run_dir / "last.pt")
    assert last["step"] == 6
    assert all(torch.isfinite(v).all() for v in last["method_state"]["model"].values())
    assert not (trainer.run_dir / "results.json").exists()


def test_exploding_learning_rate_is_caught(run_config_factory, tiny_data):
    """Adam's first step moves every weight by ~lr whatever the gradient: at lr 1e30 the weights are huge but
    finite after step 1 (checkpointed), and step 2's loss overflows."""
    cfg = run_config_factory("supervised", {"lr": 1e30, "weight_decay": 0.0},
                             train={"steps": 30, "ckpt_every": 1, "log_every": 1, "eval_every": 30})
    trainer = Trainer(cfg, data=tiny_data)
    with pytest.raises(DivergenceError, match="'supervised' diverged by step 2: train/sup_loss = (nan|inf)") as err:
        trainer.fit()
    state = safe_torch_load(trainer.run_dir / "last.pt")  # what was saved before the blow-up: loadable and finite
    assert state["step"] == 1 and "(step 1) is intact" in str(err.value)
    weights = state["method_state"]["model"]
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert max(float(v.abs().max()) for k, v in weights.items() if k.endswith("weight")) > 1e25  # it did blow up
    assert not (trainer.run_dir / "results.json").exists()


# ---------------------------------------------------------------------------------------------- exact resume

# Per-method settings for the kill-and-resume test: small networks and few steps, so each run takes seconds.
# Every registered method is resumed exactly in process by tests/test_exact_resume.py; these two are also killed
# for real: the plainest method and the one with the most state (two optimizers, an EMA, noise everywhere).
RESUME_RECIPES = {
    "supervised": {"method": {"hidden": [64]}, "steps": 60, "ckpt_every": 6},
    "sgan": {"method": {"d_hidden": [64, 32], "g_hidden": [64], "z_dim": 16, "n_samples": 10},
             "steps": 30, "ckpt_every": 3},
}
RESUME_METHODS = ["supervised", "sgan"]


def _assert_same(a, b, where: str, path: str = "") -> None:
    """Bit-for-bit equality of nested checkpoint contents."""
    assert type(a) is type(b), f"{where}: {path} has types {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: {path} keys differ"
        for k in a:
            _assert_same(a[k], b[k], where, f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: {path} lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, where, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.shape == b.shape and torch.equal(a, b), f"{where}: tensor {path} differs"
    else:
        assert a == b, f"{where}: {path}: {a!r} != {b!r}"


def _scalar_series(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# `genssl train` as the CLI runs it, announcing each last.pt it has written on stdout: the test kills it on
# that event (plus a seeded delay) instead of polling the file.
ANNOUNCING_TRAIN = textwrap.dedent("""
    import sys
    from genssl.runs.run_dir import RunDir
    save = RunDir.save_checkpoint
    def announced(self, name, payload):
        save(self, name, payload)
        if name == RunDir.LAST:
            print("saved", payload["step"], flush=True)
    RunDir.save_checkpoint = announced
    from genssl.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _train_cmd(cfg: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", ANNOUNCING_TRAIN, "train", str(cfg), "--run-dir", str(run_dir),
            "--train.threads=1", *extra]


def _run_until_killed(cmd, env, kill_after_saves: int, delay: float) -> None:
    """Start `cmd`, SIGKILL it `delay` seconds after it announced its `kill_after_saves`-th last.pt."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    saves = 0
    try:
        for line in proc.stdout:  # blocks until the next announcement (or the end of the process)
            if line.startswith("saved "):
                saves += 1
                if saves == kill_after_saves:
                    time.sleep(delay)
                    break
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill (rc {proc.returncode}): {err[-2000:]}"


@pytest.mark.parametrize("method", RESUME_METHODS)
def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path, method):
    recipe = RESUME_RECIPES[method]
    write_idx_dataset(tmp_path / "data" / "fashion-mnist", n_train=400, n_test=200, signal=0.1)
    # eval/log cadences deliberately misaligned with checkpoints, so resumes land mid-interval
    cfg = {"method": {"name": method, **recipe["method"]},
           "data": {"dataset": "fashion_mnist", "n_labels": 20, "n_val": 60, "download": False},
           "train": {"steps": recipe["steps"], "batch_size": 32, "labeled_batch_size": 16, "seed": 3,
                     "eval_every": recipe["ckpt_every"] * 3 // 2, "log_every": 7, "ckpt_every": recipe["ckpt_every"],
                     "eval_batch_size": 128, "progress": False}}
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(json.dumps(cfg))  # JSON is YAML
    env = _env(tmp_path / "data")
    n_saves = recipe["steps"] // recipe["ckpt_every"]

    ref = tmp_path / "reference"  # runs alongside the killed run (two cores, half the wall time)
    reference = subprocess.Popen(_train_cmd(cfg_path, ref), env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)

    rng = random.Random(f"{KILL_SEED}/train/{method}")
    kill_after, delay = rng.randint(1, max(1, n_saves // 2)), rng.uniform(0.0, 0.05)
    killed = tmp_path / "killed"
    try:
        _run_until_killed(_train_cmd(cfg_path, killed), env, kill_after, delay)
    finally:
        _, err = reference.communicate()
    assert reference.returncode == 0, err[-3000:]
    # A kill between the two renames of a save leaves prev.pt without last.pt; the resume falls back to it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        saved, saved_name = RunDir(killed).load_resume_checkpoint()
    saved_step = saved["step"]
    where = (f"(killed {delay:.4f}s after save #{kill_after}, KILL_SEED={KILL_SEED}; resuming from {saved_name} "
             f"at step {saved_step})")
    assert 0 < saved_step < recipe["steps"], where
    assert not (killed / "results.json").exists()

    resumed = subprocess.run(_train_cmd(cfg_path, killed, "--resume"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = json.loads((ref / "results.json").read_text())
    b = json.loads((killed / "results.json").read_text())
    for key in ("test_acc", "best_val_acc", "best_step", "steps"):
        assert a[key] == b[key], f"{key}: {a[key]} vs {b[key]} {where}"
    wa, wb = (safe_torch_load(d / "last.pt")["method_state"] for d in (ref, killed))
    _assert_same(wa, wb, f"last.pt method_state {where}")  # weights, optimizer and scaler states
    _assert_same(safe_torch_load(ref / "best.pt")["model"], safe_torch_load(killed / "best.pt")["model"],
                 f"best.pt {where}")
    # TensorBoard: the resumed curves equal the uninterrupted ones, no duplicate steps from the killed process
    sa, sb = _scalar_series(ref), _scalar_series(killed)
    assert {"val/acc"} <= set(sa) and any(t.startswith("train/") for t in sa)
    for tag in sa:
        assert sa[tag] == sb[tag], f"TensorBoard series {tag} differs {where}"
