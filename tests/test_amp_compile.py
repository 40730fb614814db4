"""Mixed precision and torch.compile through the Trainer, on tiny nets: bf16 autocast and fp16 with its loss
scaler train with finite losses, save, and resume exactly (a run interrupted at a seeded step ends where the
uninterrupted one ends, scaler state included); `train.compile: true` trains like eager; and the same on a CUDA
device where there is one. (Stacked seeds in every precision: tests/test_multiseed.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_run_config
from genssl import Trainer
from genssl.runs.run_dir import RunDir
from method_recipes import recipe
from test_exact_resume import CKPT, EVAL, LOG, STEPS, check_interrupted_run_equals_uninterrupted, scalar_series

# One discriminative method, the class-enumerating VAE (likelihoods and KLs kept in fp32 inside autocast) and the
# GAN (two optimizers, two loss scalers).
METHODS = ["supervised", "vae_m2", "sgan"]


def _cfg(method: str, precision: str, **train):
    def make(run_dir):
        return tiny_run_config(method, run_dir.parent / "out", recipe(method),
                               train={"steps": STEPS, "ckpt_every": CKPT, "eval_every": EVAL, "log_every": LOG,
                                      "seed": 5, "precision": precision, **train})
    return make


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("method", METHODS)
def test_mixed_precision_trains_finite_and_resumes_exactly(method, precision, tiny_data, tmp_path, monkeypatch):
    check_interrupted_run_equals_uninterrupted(_cfg(method, precision), tiny_data, tmp_path, monkeypatch,
                                               f"{method}/{precision}")
    run = RunDir(tmp_path / "part")
    curves = scalar_series(run.path)
    losses = {t: [v for _, v in curves[t]] for t in curves if t.startswith("train/") and "loss" in t}
    assert losses and all(np.isfinite(v).all() for v in losses.values()), losses
    last = run.load_checkpoint("last.pt")
    assert last["config"]["train"]["precision"] == precision
    scalers = last["method_state"]["scalers"]
    if precision == "fp16":  # a live loss scaler per optimizer, its scale saved and restored
        assert scalers and all(s and s["scale"] > 0 for s in scalers.values()), scalers
    else:
        assert all(not s for s in scalers.values()), scalers  # bf16 needs no scaling


def test_compile_trains_like_eager(tiny_data, tmp_path):
    """Inductor on the CPU (it needs a C++ compiler) on the smallest method; the compiled networks compute what
    the eager ones do, up to the fused kernels' float rounding."""
    pytest.importorskip("torch._inductor")
    runs = {}
    for compiled in (False, True):
        cfg = tiny_run_config("supervised", tmp_path / str(compiled), {"hidden": [16], "dropout": 0.0},
                              train={"steps": 4, "eval_every": 4, "ckpt_every": 4, "log_every": 1,
                                     "compile": compiled})
        runs[compiled] = (Trainer(cfg, data=tiny_data).fit(), Trainer(cfg).run_dir)
    (eager, eager_dir), (comp, comp_dir) = runs[False], runs[True]
    a, b = scalar_series(eager_dir)["train/sup_loss"], scalar_series(comp_dir)["train/sup_loss"]
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4]
    np.testing.assert_allclose([v for _, v in b], [v for _, v in a], rtol=1e-4)
    assert comp["test_acc"] == pytest.approx(eager["test_acc"], abs=0.02)
    wa = RunDir(eager_dir).load_checkpoint("last.pt")["method_state"]["model"]
    wb = RunDir(comp_dir).load_checkpoint("last.pt")["method_state"]["model"]
    assert wa.keys() == wb.keys()  # compiled networks save under the eager names (no _orig_mod. prefix)
    # A bias right before batch norm has zero gradient up to rounding, which Adam scales to steps of size lr:
    # those biases (and the running means they shift) are held to 4 steps x lr, everything else to rtol 1e-4.
    pre_bn = {k.replace(f".{k.split('.')[-2]}.running_mean", f".{int(k.split('.')[-2]) - 1}.bias")
              for k in wa if k.endswith("running_mean")} | {k for k in wa if k.endswith("running_mean")}
    assert pre_bn, "expected batch norm in the MLP"
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=4 * 1e-3 if k in pre_bn else 1e-5, msg=k)


# ---------------------------------------------------------------------------------------------- CUDA

@pytest.fixture
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the GPU variants of the precision and compile tests need one")
    return torch.device("cuda")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("method", ["vae_m2", "sgan"])
def test_cuda_mixed_precision_trains_finite_and_resumes(method, precision, cuda, tiny_data, tmp_path):
    """On the GPU: finite losses, a checkpoint, and a resume that continues (kernels may not be bit-reproducible
    on a GPU, so the resumed run is checked for finiteness and progress, not bit equality)."""
    make = _cfg(method, precision, device="cuda", steps=6, eval_every=3, ckpt_every=3)
    run_dir = tmp_path / "run"
    first = Trainer(make(run_dir), run_dir=run_dir, data=tiny_data).fit()
    assert first["device"].startswith("cuda") and np.isfinite(first["test_acc"])
    from dataclasses import replace

    cfg = make(run_dir)
    longer = replace(cfg, train=replace(cfg.train, steps=9))
    resumed = Trainer(longer, run_dir=run_dir, data=tiny_data, resume=True).fit()
    assert resumed["steps"] == 9 and resumed["resume_overrides"] == {"train.steps": [6, 9]}
    curves = scalar_series(run_dir)
    assert all(np.isfinite([v for _, v in curves[t]]).all() for t in curves if t.startswith("train/"))
    assert [s for s, _ in curves["val/acc"]] == [3, 6, 9]


def test_cuda_compile_trains(cuda, tiny_data, tmp_path):
    cfg = tiny_run_config("sgan", tmp_path, recipe("sgan"),
                          train={"steps": 4, "eval_every": 2, "ckpt_every": 2, "device": "cuda", "compile": True,
                                 "precision": "bf16"})
    results = Trainer(cfg, data=tiny_data).fit()
    assert results["device"].startswith("cuda") and np.isfinite(results["test_acc"])
