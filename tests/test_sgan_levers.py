"""The SGAN's optional levers (issue #15): augmentation of the real images, the conv28 discriminator, Bad GAN's
conditional entropy and pull-away terms, manifold regularization and the two-view consistency term (a hybrid).
Each loss on a hand-computed case, finite at extreme logits, its gradient reaching only the network it should;
each lever logged, trained end to end, and stopped by the NaN / collapse guards. Tiny synthetic data, one thread."""

import math

import pytest
import torch

from genssl import Trainer
from genssl.data.spec import DataSpec
from genssl.losses import (conditional_entropy_loss, fixmatch_loss, kl_consistency_loss, manifold_loss,
                           perturb_unit, pull_away_loss)
from genssl.methods import create_method

from sgan_parts import SMALL, tiny_batch, tiny_sgan
from genssl.nn.gan import Conv28Discriminator, make_gan
from genssl.nn.layers import ByteDropout, GaussianNoise, frozen, noiseless
from genssl.training.trainer import DivergenceError

SPEC = DataSpec((1, 28, 28), 10, 20, 500, hflip=True)
ALL_ON = {"augment_shift": 2, "entropy_weight": 0.3, "pt_weight": 0.8, "manifold_weight": 0.5,
          "consistency": "fixmatch", "consistency_threshold": 0.0}
# Each lever alone: its config, the weight that scales it, the log it adds and the stage whose loss it joins.
LEVERS = [
    ({"entropy_weight": 0.5}, "entropy_weight", "train/cond_entropy", "d"),
    ({"manifold_weight": 1.0}, "manifold_weight", "train/manifold_loss", "d"),
    ({"consistency": "kl"}, "consistency_weight", "train/consistency_loss", "d"),
    ({"consistency": "fixmatch", "consistency_threshold": 0.0}, "consistency_weight", "train/consistency_loss", "d"),
    ({"pt_weight": 0.8}, "pt_weight", "train/pt_loss", "g"),
]

def small_sgan(spec=SPEC, **overrides):
    return tiny_sgan(spec, **overrides)


def batch(spec=SPEC, n_l=10, n_u=16):
    return tiny_batch(spec, n_l, n_u)


# ---------------------------------------------------------------- the pure losses, by hand
def test_conditional_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # p = (1/2, 1/2) and (3/4, 1/4)
    h2 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert conditional_entropy_loss(logits).item() == pytest.approx((math.log(2) + h2) / 2, rel=1e-6)


def test_pull_away_by_hand():
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])  # cosines: (1,2) 0, (1,3) and (2,3) 1/sqrt(2)
    assert pull_away_loss(f).item() == pytest.approx(2 * (0 + 0.5 + 0.5) / (3 * 2), rel=1e-6)
    assert pull_away_loss(torch.ones(4, 5)).item() == pytest.approx(1.0)  # collapsed: all parallel
    with pytest.raises(ValueError, match="at least 2"):
        pull_away_loss(torch.ones(1, 5))


def test_manifold_loss_and_perturbation_by_hand():
    a = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    assert manifold_loss(a, b).item() == pytest.approx((5.0 + 9.0) / 2)
    z = torch.rand(64, 8)
    step = perturb_unit(z, 0.25) - z
    torch.testing.assert_close(step.norm(dim=1), torch.full((64,), 0.25))


def test_kl_consistency_matches_torch_distributions():
    torch.manual_seed(0)
    t, s = torch.randn(6, 5) * 2, torch.randn(6, 5) * 2
    ref = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=t),
                                            torch.distributions.Categorical(logits=s)).mean()
    torch.testing.assert_close(kl_consistency_loss(t, s), ref)
    two = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])  # KL((1/2,1/2) || (3/4,1/4))
    assert kl_consistency_loss(*two).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)


def test_fixmatch_by_hand():
    weak = torch.tensor([[5.0, 0.0], [0.0, 0.0], [0.0, 6.0]])  # confidences 0.9933, 0.5, 0.9975
    strong = torch.tensor([[0.0, 0.0], [9.0, 9.0], [math.log(3.0), 0.0]])
    loss, mask = fixmatch_loss(weak, strong, 0.95)
    # row 0: target 0, CE log 2; row 1 masked; row 2: target 1, CE -log(1/4); mean over all 3 rows
    assert loss.item() == pytest.approx((math.log(2) + math.log(4)) / 3, rel=1e-6)
    assert mask.item() == pytest.approx(2 / 3)
    assert fixmatch_loss(weak, strong, 1.0)[0].item() == 0.0


def test_targets_get_no_gradient():
    t, s = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    (kl_consistency_loss(t, s) + fixmatch_loss(t, s, 0.0)[0]).backward()
    assert t.grad is None and s.grad.abs().sum() > 0


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_levers_finite_at_extreme_logits(scale):
    torch.manual_seed(0)
    a = (torch.randn(8, 10) * scale).requires_grad_(True)
    b = (torch.randn(8, 10) * scale).requires_grad_(True)
    terms = [conditional_entropy_loss(a), kl_consistency_loss(b, a), fixmatch_loss(b, a, 0.5)[0],
             manifold_loss(a / abs(scale), b / abs(scale)), pull_away_loss(a), pull_away_loss(torch.zeros(4, 3))]
    total = sum(terms)
    total.backward()
    assert all(torch.isfinite(t) for t in terms)
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_losses_are_float32_under_bf16_inputs():
    a, b = torch.randn(4, 10, dtype=torch.bfloat16), torch.randn(4, 10, dtype=torch.bfloat16)
    for v in (conditional_entropy_loss(a), kl_consistency_loss(a, b), fixmatch_loss(a, b, 0.0)[0],
              manifold_loss(a, b), pull_away_loss(a)):
        assert v.dtype == torch.float32


# ---------------------------------------------------------------- networks
def test_conv28_discriminator_shapes_noise_and_errors():
    d = Conv28Discriminator(1, 10, width=8)
    x = torch.rand(5, 1, 28, 28)
    assert d(x).shape == (5, 10) and d.features(x).shape == (5, 16) and d.feature_dim == 16
    d.eval()
    torch.testing.assert_close(d(x), d(x))
    d.train()
    assert not torch.equal(d(x), d(x))
    disc, gen = make_gan("conv28", (1, 28, 28), 10, z_dim=8, g_hidden=(16,), conv_width=8)
    assert isinstance(disc, Conv28Discriminator) and gen(torch.rand(3, 8)).shape == (3, 1, 28, 28)
    with pytest.raises(ValueError, match="28x28"):
        make_gan("conv28", (3, 32, 32), 10)
    disc, gen = make_gan("conv28", (1, 28, 28), 10, z_dim=8, conv_width=8, generator="conv28")
    x = gen(torch.rand(3, 8))
    assert x.shape == (3, 1, 28, 28) and 0 <= x.min() and x.max() <= 1 and x.is_contiguous()
    assert isinstance(make_gan("mlp", (1, 28, 28), 10, generator="conv28")[1], type(gen))
    with pytest.raises(ValueError, match="auto, mlp, conv28"):
        make_gan("conv28", (1, 28, 28), 10, generator="resnet")


def test_byte_dropout_rate_scale_and_eval():
    torch.manual_seed(0)
    d = ByteDropout(0.3)
    x = torch.ones(200_000)
    y = d(x)
    kept = (y > 0).float().mean().item()
    assert kept == pytest.approx(1 - d.cut / 256, abs=0.005)
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)  # inverted dropout keeps the mean
    assert torch.equal(d.eval()(x), x)
    with pytest.raises(ValueError, match="dropout"):
        ByteDropout(1.0)


def test_gaussian_noise_keeps_dtype_and_scale():
    torch.manual_seed(0)
    x = torch.zeros(100_000, dtype=torch.bfloat16)
    y = GaussianNoise(0.5)(x)
    assert y.dtype == torch.bfloat16 and y.float().std().item() == pytest.approx(0.5, rel=0.02)


def test_noiseless_restores_each_modules_mode():
    d = Conv28Discriminator(1, 10, width=8)
    d.head.eval()  # a mixed state must come back as it was
    with noiseless(d):
        assert not any(m.training for m in d.modules())
    assert d.training and not d.head.training and d.body.training


# ---------------------------------------------------------------- the method
@pytest.mark.parametrize("arch, generator", [("mlp", "auto"), ("conv28", "auto"), ("conv28", "conv28")])
def test_all_levers_step_logs_every_term(arch, generator):
    m = small_sgan(arch=arch, conv_width=8, generator=generator, **ALL_ON)
    m.initialize(batch())
    m.train()
    logs = m.train_step(batch(), 0)
    assert {"train/cond_entropy", "train/pt_loss", "train/manifold_loss", "train/consistency_loss",
            "train/mask_rate", "train/fm_loss", "train/unsup_loss"} <= set(logs)
    assert all(v.dim() == 0 and not v.requires_grad and torch.isfinite(v) for v in logs.values())
    assert m.disc.training and all(mod.training for mod in m.disc.modules())  # noiseless restored train mode


def _stage_grads(m, stage, b, seed):
    """(logs, disc grads, gen grads) of `stage`'s loss with the RNG reset to `seed`, so that two configs differing
    only in a weight draw the same noise; the generator's stage runs with the discriminator frozen, as in
    train_step."""
    torch.manual_seed(seed)
    m.zero_grad(set_to_none=True)
    loss, logs, carry = m.stage_loss("d", b, 0, {})
    if stage == "g":
        with frozen(m.disc):
            loss, logs, _ = m.stage_loss("g", b, 0, carry)
    loss.backward()
    grab = lambda net: [None if p.grad is None else p.grad.clone() for p in net.parameters()]  # noqa: E731
    return logs, grab(m.disc), grab(m.gen)


@pytest.mark.parametrize("lever, weight, log, stage", LEVERS, ids=[f"{lv[2][6:]}-{i}" for i, lv in enumerate(LEVERS)])
def test_each_lever_reaches_only_its_network(lever, weight, log, stage):
    """Doubling the lever's weight changes its own network's gradient (the term is in the graph); the other
    network gets no gradient from that stage; the term is logged only when on."""
    b = batch()
    out = {}
    for scale in (0.0, 1.0, 2.0):
        cfg = {**lever, weight: scale * lever.get(weight, 1.0)}
        if scale == 0.0 and "consistency" in lever:
            cfg["consistency"] = "none"
        m = small_sgan(**cfg)
        m.initialize(b)
        m.train()
        out[scale] = _stage_grads(m, stage, b, seed=7)
    own, other = (1, 2) if stage == "d" else (2, 1)
    assert log not in out[0.0][0] and log in out[1.0][0] and torch.isfinite(out[1.0][0][log])
    for scale in (1.0, 2.0):
        assert all(g is None for g in out[scale][other])  # nothing reaches the other network
        assert all(g is not None for g in out[scale][own])
    assert any(not torch.equal(x, y) for x, y in zip(out[1.0][own], out[2.0][own]))


def test_augmentation_follows_the_datasets_flip_rule(monkeypatch):
    import genssl.methods.sgan as sgan_mod

    seen = []

    def spy(kind):
        real = getattr(sgan_mod, kind)

        def wrapped(x, *, flip, **kw):
            seen.append((kind, flip, kw.get("max_shift")))
            return real(x, flip=flip, **kw)
        return wrapped

    monkeypatch.setattr(sgan_mod, "weak", spy("weak"))
    monkeypatch.setattr(sgan_mod, "strong", spy("strong"))
    for hflip in (True, False):  # clothes flip, digits never
        seen.clear()
        spec = DataSpec((1, 28, 28), 10, 20, 500, hflip=hflip)
        m = small_sgan(spec, augment_shift=3, consistency="kl")
        m.initialize(batch(spec))
        m.train()
        m.train_step(batch(spec), 0)
        assert seen == [("weak", hflip, 3), ("weak", hflip, 3), ("strong", hflip, None)]
    seen.clear()
    m = small_sgan()  # the paper: no augmentation at all
    m.train_step(batch(), 0)
    assert seen == []
    m = small_sgan(labeled_augment="strong")  # the labeled images alone get the strong view
    m.train_step(batch(), 0)
    assert seen == [("strong", True, None)]


def test_bad_lever_values_fail_loudly():
    with pytest.raises(ValueError, match="none, kl, fixmatch"):
        create_method("sgan", {"consistency": "mixmatch"}, SPEC)
    with pytest.raises(ValueError, match="labeled_augment='weak' is not one of same, strong"):
        create_method("sgan", {"labeled_augment": "weak"}, SPEC)
    with pytest.raises(ValueError, match="pt_weight"):
        create_method("sgan", {"pt_weight": -1.0}, SPEC)
    with pytest.raises(ValueError, match="manifold_eps"):
        create_method("sgan", {"manifold_weight": 1.0, "manifold_eps": 0.0}, SPEC)
    with pytest.raises(ValueError, match="consistency_threshold"):
        create_method("sgan", {"consistency": "fixmatch", "consistency_threshold": 1.5}, SPEC)


# ---------------------------------------------------------------- end to end, guards
def test_all_levers_train_and_resume_exactly(run_config_factory, tiny_data, tmp_path):
    over = {**SMALL, **ALL_ON, "arch": "conv28", "generator": "conv28", "conv_width": 8, "ema_decay": 0.9}
    full = Trainer(run_config_factory("sgan", over, train={"steps": 6}), run_dir=tmp_path / "full", data=tiny_data)
    results = full.fit()
    assert math.isfinite(results["test_acc"])
    part = Trainer(run_config_factory("sgan", over, train={"steps": 3}), run_dir=tmp_path / "part", data=tiny_data)
    part.fit()
    Trainer(run_config_factory("sgan", over, train={"steps": 6}), run_dir=tmp_path / "part", resume=True,
            data=tiny_data).fit()
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["method_state"]["model"]
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)["method_state"]["model"]
    for k in a:  # augmentation, dropout and the perturbations all draw from the checkpointed RNG
        torch.testing.assert_close(a[k], b[k], msg=k)


@pytest.mark.parametrize("term", ["manifold_loss", "pull_away_loss", "consistency_loss"])
def test_a_nan_in_a_new_term_stops_the_run(term, run_config_factory, tiny_data, monkeypatch):
    import genssl.methods.sgan as sgan_mod

    real = getattr(sgan_mod, term)

    def poisoned(*args, **kw):
        out = real(*args, **kw)
        if isinstance(out, tuple):
            return (out[0] * float("nan"),) + out[1:]
        return out * float("nan")

    monkeypatch.setattr(sgan_mod, term, poisoned)
    with pytest.raises(DivergenceError, match="diverged"):
        Trainer(run_config_factory("sgan", {**SMALL, **ALL_ON}), data=tiny_data).fit()


def test_collapse_check_still_works_with_levers_on():
    m = small_sgan(collapse_window=100, **ALL_ON)
    m.initialize(batch())
    m.train()
    logs = {k: float(v) for k, v in m.train_step(batch(), 0).items()}
    assert m.check_health(logs, 50) is None
    collapsed = logs | {"train/unsup_loss": 1e-6, "train/d_fake": 1e-7}
    assert m.check_health(collapsed, 100) is None
    assert "discriminator collapse" in m.check_health(collapsed, 250)
