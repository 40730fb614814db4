"""Seeds trained together (genssl.training.stacked) against the same seeds trained one by one.

With dropout off and no augmentation, the supervised baseline draws no random numbers while training, so a
seed trained in a stacked group must follow its separate run's loss trajectory and end at its weights up to
float reduction order (batched vs plain matrix products): stated tolerance rtol 1e-4 / atol 1e-5.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genssl import Trainer
from genssl.registry import get_method_class
from genssl.training.seeds import parse_seeds, train_seeds

SEEDS = [3, 7]


def _losses(tb_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {tag: np.array([e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.step)])
            for tag in acc.Tags()["scalars"]}


def _assert_same_weights(wa: dict, wb: dict, pre_bn_atol: float, msg: str) -> None:
    """Two state dicts equal to rtol 1e-4 / atol 1e-5, except that a bias right before batch norm (and the
    running mean it shifts) is held to `pre_bn_atol`: its gradient is zero up to rounding, and Adam scales that
    rounding noise to steps of size up to lr, possibly in opposite directions in the two runs (so at most
    2 x steps x lr apart)."""
    pre_bn = {k.replace(f".{j}.running_mean", f".{int(j) - 1}.bias") for k in wb if k.endswith("running_mean")
              for j in [k.split(".")[-2]]} | {k for k in wb if k.endswith("running_mean")}
    assert wa.keys() == wb.keys()
    for k in wb:
        if isinstance(wb[k], torch.Tensor):
            atol = pre_bn_atol if k in pre_bn else 1e-5
            torch.testing.assert_close(wa[k].float(), wb[k].float(), rtol=1e-4, atol=atol,
                                       msg=lambda detail, k=k: f"{msg}: {k}: {detail}")


@pytest.fixture
def deterministic_cfg(run_config_factory):
    return run_config_factory("supervised", {"dropout": 0.0, "hidden": [64, 32]},
                              train={"steps": 8, "log_every": 1, "eval_every": 4, "ckpt_every": 4})


def test_seeds_together_match_separate_runs(deterministic_cfg, tiny_data, tmp_path):
    cfg = deterministic_cfg
    together = Trainer(cfg, data=tiny_data, seeds=SEEDS, run_dirs=[tmp_path / "g" / f"s{s}" for s in SEEDS]).fit_all()
    for seed, res in zip(SEEDS, together):
        sep_dir = tmp_path / "sep" / f"s{seed}"
        from dataclasses import replace

        sep = Trainer(replace(cfg, train=replace(cfg.train, seed=seed)), run_dir=sep_dir, data=tiny_data).fit()
        a, b = _losses(tmp_path / "g" / f"s{seed}" / "tb"), _losses(sep_dir / "tb")
        np.testing.assert_allclose(a["train/sup_loss"], b["train/sup_loss"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a["val/acc"], b["val/acc"], atol=1.5 / 100)  # a near-tie may flip one image
        wa = torch.load(tmp_path / "g" / f"s{seed}" / "best.pt", weights_only=True)["model"]
        wb = torch.load(sep_dir / "best.pt", weights_only=True)["model"]
        _assert_same_weights(wa, wb, 8 * cfg.method.lr, f"seed {seed}")
        assert res["seed"] == seed and res["test_acc"] == pytest.approx(sep["test_acc"], abs=0.02)


def test_each_seed_is_its_own_run(deterministic_cfg, tiny_data, tmp_path):
    results = train_seeds(deterministic_cfg, SEEDS, run_dir=str(tmp_path / "grp"), data=tiny_data, stack="on")
    assert [r["seeds_trained_together"] for r in results] == [2, 2]
    splits = []
    for seed in SEEDS:
        d = tmp_path / "grp" / f"s{seed}"
        assert json.loads((d / "results.json").read_text())["seed"] == seed
        assert f"seed: {seed}" in (d / "config.yaml").read_text()
        splits.append(torch.load(d / "split.pt", weights_only=True))
    assert not torch.equal(splits[0]["labeled"], splits[1]["labeled"])  # own split per seed


def test_unsupported_methods_fall_back_to_separate_runs(run_config_factory, tiny_data, tmp_path):
    cfg = run_config_factory("self_training", train={"steps": 2, "eval_every": 2, "ckpt_every": 2})
    assert not get_method_class("self_training").supports_stacking
    results = train_seeds(cfg, [0, 1], run_dir=str(tmp_path / "seq"), data=tiny_data, stack="on")
    assert [r["seed"] for r in results] == [0, 1] and "seeds_trained_together" not in results[0]


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="distinct"):
        parse_seeds("1,1")
    with pytest.raises(ValueError, match="expected"):
        parse_seeds("a,b")


def test_gan_seeds_train_together(run_config_factory, tiny_data, tmp_path):
    """Two optimizers, an EMA, batch norm in the generator and noise everywhere: every seed trains, differs from
    the others, and writes a best.pt that the ordinary method loads."""
    from genssl.methods import create_method

    assert get_method_class("sgan").supports_stacking
    cfg = run_config_factory("sgan", {"d_hidden": [32, 16], "g_hidden": [16], "z_dim": 8},
                             train={"steps": 4, "eval_every": 2, "ckpt_every": 2, "log_every": 2})
    results = train_seeds(cfg, [0, 1], run_dir=str(tmp_path / "gan"), data=tiny_data, stack="on")
    assert all(r["seeds_trained_together"] == 2 and 0 <= r["test_acc"] <= 1 for r in results)
    states = [torch.load(tmp_path / "gan" / f"s{s}" / "best.pt", weights_only=True)["model"] for s in (0, 1)]
    assert not torch.equal(states[0]["disc.head.1.v"], states[1]["disc.head.1.v"])
    method = create_method("sgan", cfg.method, _spec(tiny_data))
    method.load_state_dict(states[0])


def _spec(data):
    from genssl.data.spec import DataSpec

    train, _ = data
    return DataSpec(train.image_shape, train.num_classes, 20, len(train))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_stacked_seeds_train_in_every_precision(precision, run_config_factory, tiny_data, tmp_path):
    """bf16 autocast and fp16 with its loss scaler, stacked (the GAN's generator has batch norm, which under
    vmap once refused bf16 inputs): finite losses, per-seed checkpoints, and a resume that continues."""
    cfg = run_config_factory("sgan", {"d_hidden": [32, 16], "g_hidden": [16], "z_dim": 8},
                             train={"steps": 4, "eval_every": 2, "ckpt_every": 2, "log_every": 2,
                                    "precision": precision})
    results = train_seeds(cfg, [0, 1], run_dir=str(tmp_path / "p"), data=tiny_data, stack="on")
    assert [r["precision"] for r in results] == [precision] * 2
    assert all(r["seeds_trained_together"] == 2 for r in results)
    for s in (0, 1):
        losses = _losses(tmp_path / "p" / f"s{s}" / "tb")
        assert np.isfinite(losses["train/sup_loss"]).all() and np.isfinite(losses["train/fm_loss"]).all()
    from dataclasses import replace

    longer = replace(cfg, train=replace(cfg.train, steps=6))
    resumed = train_seeds(longer, [0, 1], run_dir=str(tmp_path / "p"), resume=True, data=tiny_data, stack="on")
    assert [r["steps"] for r in resumed] == [6, 6] and all(r["seeds_trained_together"] == 2 for r in resumed)


def test_gan_seeds_together_match_separate_runs_with_the_noise_fixed_per_seed(run_config_factory, tiny_data,
                                                                              tmp_path, monkeypatch):
    """sgan stacked against the same seeds trained one by one. Stacked, every seed's noise comes from one shared
    generator (vmap randomness="different"), never the numbers its separate run draws, so bit-equal noise needs
    the noise fixed per seed: the Gaussian noise layers off, and z taken from the seed's own `fixed_z` buffer
    (drawn when the method is built, after seeding with the seed; stacked, each seed reads its own slice). Then
    a stacked seed follows its separate run (two optimizers, the EMA, the generator's batch norm) up to float
    reduction order: every logged loss to rtol 1e-4, the final weights to rtol 1e-4 / atol 1e-5."""
    from dataclasses import replace

    from genssl.methods.sgan import SGAN

    monkeypatch.setattr(SGAN, "noise", lambda self, n, device=None: self.fixed_z[:n])
    cfg = run_config_factory("sgan", {"d_hidden": [32, 16], "g_hidden": [16], "z_dim": 8, "input_noise": 0.0,
                                      "hidden_noise": 0.0, "n_samples": 48},  # 48: initialize's 16 + 32 images
                             train={"steps": 8, "log_every": 1, "eval_every": 4, "ckpt_every": 4})
    Trainer(cfg, data=tiny_data, seeds=SEEDS, run_dirs=[tmp_path / "g" / f"s{s}" for s in SEEDS]).fit_all()
    finals = []
    for seed in SEEDS:
        sep_dir = tmp_path / "sep" / f"s{seed}"
        Trainer(replace(cfg, train=replace(cfg.train, seed=seed)), run_dir=sep_dir, data=tiny_data).fit()
        a, b = _losses(tmp_path / "g" / f"s{seed}" / "tb"), _losses(sep_dir / "tb")
        for tag in ("train/sup_loss", "train/unsup_loss", "train/fm_loss", "train/d_real", "train/d_fake"):
            assert len(a[tag]) == 8, tag
            np.testing.assert_allclose(a[tag], b[tag], rtol=1e-4, atol=1e-6, err_msg=f"seed {seed}: {tag}")
        wa = torch.load(tmp_path / "g" / f"s{seed}" / "last.pt", weights_only=True)["method_state"]["model"]
        wb = torch.load(sep_dir / "last.pt", weights_only=True)["method_state"]["model"]
        assert wa.keys() == wb.keys()
        for k in wb:
            if isinstance(wb[k], torch.Tensor):
                torch.testing.assert_close(wa[k].float(), wb[k].float(), rtol=1e-4, atol=1e-5, msg=f"seed {seed}: {k}")
            else:  # the EMA's update count
                assert wa[k] == wb[k], f"seed {seed}: {k}"
        finals.append(wb["disc.head.1.v"])
    assert not torch.equal(*finals), "the seeds trained the same network"


def test_auto_runs_seeds_one_after_another_on_a_cpu_and_says_why(deterministic_cfg, tiny_data, tmp_path, capsys):
    """On a CPU stacking measured no cheaper per step than separate runs (benchmarks/README.md), so `auto`
    (the default) trains the seeds one after another there, and says so; `off` does too, for any device."""
    results = train_seeds(deterministic_cfg, SEEDS, run_dir=str(tmp_path / "auto"), data=tiny_data)
    assert all("seeds_trained_together" not in r for r in results) and [r["seed"] for r in results] == SEEDS
    assert "one after another (auto: on a CPU stacked seeds cost as much per step" in capsys.readouterr().err
    with pytest.raises(ValueError, match="stack must be one of auto, on, off, got 'maybe'"):
        train_seeds(deterministic_cfg, SEEDS, run_dir=str(tmp_path / "x"), data=tiny_data, stack="maybe")


@pytest.mark.parametrize("name, overrides", [
    ("vae_m1", {"hidden": [32], "z_dim": 4}),
    ("vae_m2", {"enc_hidden": [32], "dec_hidden": [32], "cls_hidden": [32], "z_dim": 4, "prior": "mixture"}),
])
def test_vae_seeds_together_match_separate_runs_with_the_posterior_noise_off(name, overrides, run_config_factory,
                                                                            tiny_data, tmp_path, monkeypatch):
    """The VAE family stacked against the same seeds one by one. Their only training noise is the
    reparameterized posterior sample, which stacked seeds draw from one shared generator; with z = mu (noise
    off) a stacked seed must follow its separate run up to float reduction order: the logged bound terms to
    rtol 1e-4, the final weights to rtol 1e-4 / atol 1e-5. (M2: all K classes enumerated, the class-mixture
    prior's parameters trained, fused Adam over the stacked parameters.)"""
    from dataclasses import replace

    monkeypatch.setattr(f"genssl.methods.{name}.reparameterize", lambda mu, logvar: mu)
    cfg = run_config_factory(name, overrides, train={"steps": 6, "log_every": 1, "eval_every": 3, "ckpt_every": 3})
    Trainer(cfg, data=tiny_data, seeds=SEEDS, run_dirs=[tmp_path / "g" / f"s{s}" for s in SEEDS]).fit_all()
    tags = ("train/elbo", "train/kl") if name == "vae_m1" else ("train/loss", "train/neg_L_l", "train/ce")
    finals = []
    for seed in SEEDS:
        sep_dir = tmp_path / "sep" / f"s{seed}"
        Trainer(replace(cfg, train=replace(cfg.train, seed=seed)), run_dir=sep_dir, data=tiny_data).fit()
        a, b = _losses(tmp_path / "g" / f"s{seed}" / "tb"), _losses(sep_dir / "tb")
        for tag in tags:
            assert len(a[tag]) == 6, tag
            np.testing.assert_allclose(a[tag], b[tag], rtol=1e-4, atol=1e-5, err_msg=f"seed {seed}: {tag}")
        wa = torch.load(tmp_path / "g" / f"s{seed}" / "last.pt", weights_only=True)["method_state"]["model"]
        wb = torch.load(sep_dir / "last.pt", weights_only=True)["method_state"]["model"]
        _assert_same_weights(wa, wb, 2 * 6 * cfg.method.lr, f"seed {seed}")
        finals.append(wb["decoder.body.1.weight" if name == "vae_m1" else "classifier.head.weight"])
    assert not torch.equal(*finals), "the seeds trained the same network"
