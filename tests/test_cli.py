"""`genssl train | eval` through the command line: clear errors with a non-zero exit, and a real run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datafiles import write_idx_dataset
from genssl.cli import main

REPO = Path(__file__).resolve().parent.parent
TINY = ("method: {name: supervised, hidden: [32]}\n"
        "data: {dataset: fashion_mnist, n_labels: 20, n_val: 40, download: false}\n"
        "train: {steps: 6, batch_size: 16, labeled_batch_size: 10, eval_every: 3, log_every: 3, ckpt_every: 3,\n"
        "        progress: false, threads: 1}\n")


@pytest.fixture
def tiny_dataset(tmp_path, monkeypatch):
    write_idx_dataset(tmp_path / "data" / "fashion-mnist", n_train=150, n_test=50)
    monkeypatch.setenv("GENSSL_DATA", str(tmp_path / "data"))
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    return cfg


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("method", [
    [],
    # a readout fitted at evaluation (seeded by the run's seed, in training and in `genssl eval` alike)
    ["--method.name=vae_m1", "--method.hidden=[32]", "--method.z_dim=4", "--method.readout=mlp"],
])
def test_train_then_eval(tiny_dataset, tmp_path, capsys, method):
    run_dir = tmp_path / "run"
    rc, out, err = _run(capsys, "train", str(tiny_dataset), "--run-dir", str(run_dir), "--train.seed=2", *method)
    assert rc == 0, err
    results = json.loads(out)
    assert results["steps"] == 6 and results["seed"] == 2
    rc, out, err = _run(capsys, "eval", str(run_dir), "--device", "cpu")
    assert rc == 0, err
    assert json.loads(out)["test_acc"] == pytest.approx(results["test_acc"])
    if method:  # the reloaded readout is the one seeded like the run's, not any other
        from genssl.training.evaluate import load_run

        model, _, split, (train, test) = load_run(run_dir, device="cpu")
        x_l, y_l, x = train.images[split.labeled].float() / 255, train.labels[split.labeled], test.images.float() / 255
        reloaded = model.predict(x)
        model.fit_readout(x_l, y_l, seed=2)
        assert torch.equal(model.predict(x), reloaded)
        model.fit_readout(x_l, y_l, seed=0)
        assert not torch.equal(model.predict(x), reloaded)


@pytest.mark.parametrize("args, code, match", [
    (["--train.stpes=3"], 2, "unknown key train.stpes; valid keys in train: steps"),
    (["--method.name=nope"], 1, "unknown method 'nope'; registered methods: "),
    (["--train.steps=abc"], 2, "train.steps: expected an integer, got 'abc'"),
    (["--data.dataset=imagenet"], 1, "unknown dataset 'imagenet'"),
    (["--data.root=/nonexistent", "--data.dataset=mnist"], 2, "dataset 'mnist' not found. Looked in: /nonexistent"),
    (["train.steps=3"], 2, "expected an override like --train.steps=100"),
])
def test_train_errors(tiny_dataset, tmp_path, capsys, monkeypatch, args, code, match):
    import genssl.data.datasets as ds

    monkeypatch.setattr(ds, "DEBIAN_ROOT", tmp_path / "no-debian")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rc, _, err = _run(capsys, "train", str(tiny_dataset), "--run-dir", str(tmp_path / "r"), *args)
    assert rc == code
    assert err.startswith("genssl train: error: ") and match in err, err
    assert "Traceback" not in err


def test_missing_config_file(tmp_path, capsys):
    rc, _, err = _run(capsys, "train", str(tmp_path / "nope.yaml"))
    assert rc == 2 and f"config file not found: {tmp_path / 'nope.yaml'}" in err and "Traceback" not in err


def test_resume_refusal_via_cli(tiny_dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert _run(capsys, "train", str(tiny_dataset), "--run-dir", str(run_dir))[0] == 0
    rc, _, err = _run(capsys, "train", str(tiny_dataset), "--run-dir", str(run_dir), "--resume", "--method.lr=0.5")
    assert rc == 1 and "method.lr: 0.001 -> 0.5" in err
    rc, _, err = _run(capsys, "train", str(tiny_dataset), "--run-dir", str(run_dir))
    assert rc == 2 and "already holds a run" in err
    rc, out, err = _run(capsys, "train", str(tiny_dataset), "--run-dir", str(run_dir), "--resume", "--train.steps=9")
    assert rc == 0 and json.loads(out)["resume_overrides"] == {"train.steps": [6, 9]}


def test_real_entry_point_reports_errors(tmp_path):
    """The installed `python -m genssl` prints one clear line and exits non-zero (no traceback). One interpreter
    start: main()'s error paths behind the entry point are tested in this process (test_train_errors,
    test_missing_config_file)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: {name: supervised}\ntrain: {stepz: 3}\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "genssl", "train", str(bad)], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "unknown key train.stepz" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
