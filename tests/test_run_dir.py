"""The run folder's owner (genssl.runs.run_dir.RunDir): checksummed checkpoints, the prev.pt fallback on resume, models
rebuilt from a checkpoint alone (the data root removed), and stacked seeds killed and resumed exactly."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from genssl import Trainer
from genssl.cli import main
from genssl.config import build_run_config
from genssl.fileio import CheckpointError
from genssl.runs.run_dir import RunDir, state_digest

from datafiles import write_idx_dataset


def _flip_a_byte_inside(path: Path, needle: bytes) -> None:
    raw = bytearray(path.read_bytes())
    at = raw.find(needle)
    assert at >= 0, "the tensor's bytes were not found in the file"
    raw[at + 1] ^= 0x40
    path.write_bytes(bytes(raw))


def test_a_byte_flipped_inside_tensor_data_is_caught(tmp_path):
    run = RunDir(tmp_path)
    weights = torch.arange(1000, dtype=torch.float32) * 0.123 + 7
    run.save_checkpoint("best.pt", {"method": "x", "model": {"w": weights}})
    assert torch.equal(run.load_checkpoint("best.pt")["model"]["w"], weights)
    _flip_a_byte_inside(tmp_path / "best.pt", weights[500:502].numpy().tobytes())
    # torch itself loads the damaged file without complaint: only the checksum notices
    assert not torch.equal(torch.load(tmp_path / "best.pt", weights_only=True)["model"]["w"], weights)
    with pytest.raises(CheckpointError, match=r"best.pt: checksum mismatch .* damaged after it was written"):
        run.load_checkpoint("best.pt")


def test_state_digest_sees_values_not_key_order():
    a = {"x": torch.ones(3), "y": {"z": 1, "w": [1.0, 2]}}
    b = {"y": {"w": [1.0, 2], "z": 1}, "x": torch.ones(3)}
    assert state_digest(a) == state_digest(b)
    assert state_digest(a) != state_digest({**a, "x": torch.tensor([1.0, 1.0, 1.0001])})
    assert state_digest(a) != state_digest({**a, "x": torch.ones(3, dtype=torch.float64)})


def test_resume_falls_back_to_prev_when_last_is_damaged(run_config_factory, tiny_data):
    cfg = run_config_factory("supervised", train={"steps": 6, "ckpt_every": 3, "eval_every": 3})
    trainer = Trainer(cfg, data=tiny_data)
    trainer.fit()
    run = RunDir(trainer.run_dir)
    assert run.load_checkpoint("prev.pt")["step"] == 3 and run.load_checkpoint("last.pt")["step"] == 6
    raw = bytearray((run / "last.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (run / "last.pt").write_bytes(bytes(raw))
    longer = build_run_config({**cfg.to_dict(), "method": {"name": "supervised", **cfg.to_dict()["method"]},
                               "train": {**cfg.to_dict()["train"], "steps": 9}})
    with pytest.warns(RuntimeWarning, match=r"resuming .* from prev.pt \(step 3\): .*last.pt"):
        results = Trainer(longer, data=tiny_data, resume=True).fit()
    assert results["steps"] == 9 and run.load_checkpoint("last.pt")["step"] == 9


def test_no_usable_checkpoint_is_one_clear_error(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="no usable checkpoint to resume from: .*last.pt.*prev.pt: missing"):
        run.load_resume_checkpoint()


def test_a_run_is_rebuilt_exported_and_predicts_with_the_data_root_removed(tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"
    write_idx_dataset(root / "fashion-mnist", n_train=300, n_test=100)
    cfg_path = tmp_path / "m1.yaml"
    cfg_path.write_text(
        "method: {name: vae_m1, hidden: [32], z_dim: 4, readout: linear}\n"
        f"data: {{dataset: fashion_mnist, root: {root}, n_labels: 20, n_val: 50, download: false}}\n"
        "train: {steps: 6, batch_size: 32, labeled_batch_size: 10, eval_every: 3, ckpt_every: 3, progress: false}\n")
    run_dir = tmp_path / "run"
    assert main(["train", str(cfg_path), "--run-dir", str(run_dir)]) == 0
    x = torch.rand(7, 1, 28, 28)
    before = RunDir(run_dir).load_method()[0].predict(x)
    shutil.rmtree(root)
    monkeypatch.setenv("GENSSL_DATA", str(tmp_path / "nowhere"))
    method, cfg, ckpt = RunDir(run_dir).load_method()
    assert cfg.method_name == "vae_m1" and ckpt["data_spec"]["image_shape"] == [1, 28, 28]
    torch.testing.assert_close(method.predict(x), before)  # M1's fitted readout came back with the weights
    assert main(["export", str(run_dir)]) == 0
    assert (run_dir / "encoder" / "encoder.yaml").is_file()
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 2  # scoring needs the test images: one clear error names the root
    assert "fashion_mnist" in capsys.readouterr().err


def _weights(run_dir: Path) -> dict:
    return RunDir(run_dir).load_checkpoint("last.pt")["method_state"]["model"]


def test_stacked_seeds_killed_and_resumed_equal_the_uninterrupted_run(run_config_factory, tiny_data, tmp_path,
                                                                      monkeypatch):
    """Two optimizers, an EMA and noise everywhere (sgan): killed right after its step-4 checkpoint, the
    stacked group resumes from every seed's last.pt and ends bit for bit where the uninterrupted group ends."""
    cfg = run_config_factory("sgan", {"d_hidden": [32, 16], "g_hidden": [16], "z_dim": 8},
                             train={"steps": 8, "eval_every": 4, "ckpt_every": 4, "log_every": 2})
    seeds = [0, 1]
    full = [tmp_path / "full" / f"s{s}" for s in seeds]
    Trainer(cfg, data=tiny_data, seeds=seeds, run_dirs=full).fit_all()

    part = [tmp_path / "part" / f"s{s}" for s in seeds]
    real_save = RunDir.save_checkpoint
    saved = []

    def save_then_die(self, name, payload):
        real_save(self, name, payload)
        if name == "last.pt":
            saved.append(self.path)
            if len(saved) == len(seeds):
                raise KeyboardInterrupt("killed after the step-4 checkpoints")

    monkeypatch.setattr(RunDir, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, data=tiny_data, seeds=seeds, run_dirs=part).fit_all()
    monkeypatch.undo()
    assert [RunDir(d).load_checkpoint("last.pt")["step"] for d in part] == [4, 4]
    resumed = Trainer(cfg, data=tiny_data, seeds=seeds, run_dirs=part, resume=True).fit_all()
    assert [r["seed"] for r in resumed] == seeds and all((d / "results.json").is_file() for d in part)
    for a, b in zip(full, part):
        wa, wb = _weights(a), _weights(b)
        for k in wa:
            if isinstance(wa[k], torch.Tensor):
                assert torch.equal(wa[k], wb[k]), k
    assert not torch.equal(_weights(full[0])["disc.head.1.v"], _weights(full[1])["disc.head.1.v"])


def test_a_stacked_seed_resumes_alone_from_its_own_slice(run_config_factory, tiny_data, tmp_path):
    """Each stacked seed's last.pt is an ordinary checkpoint: one seed continues alone with `--resume`."""
    cfg = run_config_factory("supervised", {"dropout": 0.0, "hidden": [16]},
                             train={"steps": 4, "eval_every": 2, "ckpt_every": 2})
    dirs = [tmp_path / f"s{s}" for s in (0, 1)]
    Trainer(cfg, data=tiny_data, seeds=[0, 1], run_dirs=dirs).fit_all()
    state = RunDir(dirs[1]).load_checkpoint("last.pt")["method_state"]
    first_param = next(RunDir(dirs[1]).load_method("last.pt")[0].net.parameters())
    assert state["optimizers"]["main"]["state"][0]["exp_avg"].shape == first_param.shape  # a slice, not a stack
    from dataclasses import replace

    longer = replace(cfg, train=replace(cfg.train, seed=1, steps=6))
    results = Trainer(longer, run_dir=dirs[1], data=tiny_data, resume=True).fit()
    assert results["steps"] == 6 and np.isfinite(results["test_acc"])
