"""The semi-supervised GAN: its loss algebra, numerical stability, gradient routing, EMA, health check and
checkpoint round trip. All on tiny synthetic data; the whole file runs in seconds on one thread."""

import math

import pytest
import torch
import torch.nn.functional as F

from genssl import Trainer
from genssl.nn.ema import EMA
from genssl.nn.gan import MLPDiscriminator, make_gan
from genssl.nn.layers import WNConv2d, WNLinear, data_dependent_init
from genssl.losses import (feature_matching_loss, sgan_d_prob, sgan_unsupervised_loss,
                           sgan_unsupervised_loss_explicit)
from genssl.data.spec import DataSpec
from genssl.methods import create_method

from sgan_parts import SMALL, tiny_batch, tiny_sgan

SPEC = DataSpec((1, 28, 28), 10, 20, 500)


def small_sgan(spec=SPEC, **overrides):
    return tiny_sgan(spec, **overrides)


def batch(spec=SPEC, n_l=10, n_u=16):
    return tiny_batch(spec, n_l, n_u)


def test_implicit_fake_logit_equals_explicit_softmax_with_zero_fake_logit():
    torch.manual_seed(0)
    real, fake = torch.randn(32, 10) * 3, torch.randn(24, 10) * 3
    implicit = sgan_unsupervised_loss(real, fake)
    pad = lambda l: torch.cat([l, torch.zeros(l.shape[0], 1)], 1)  # noqa: E731
    explicit = sgan_unsupervised_loss_explicit(pad(real), pad(fake))
    torch.testing.assert_close(implicit, explicit)
    # ... and both equal the textbook -E log(1 - p_{K+1}(x)) - E log p_{K+1}(G(z)) of a K+1 softmax.
    p_real, p_fake = F.softmax(pad(real).double(), 1)[:, -1], F.softmax(pad(fake).double(), 1)[:, -1]
    textbook = -(1 - p_real).log().mean() - p_fake.log().mean()
    torch.testing.assert_close(implicit.double(), textbook)
    torch.testing.assert_close(sgan_d_prob(real), 1 - p_real.float())


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_unsupervised_loss_is_finite_for_huge_logits(scale):
    logits = torch.randn(8, 10) * scale
    logits.requires_grad_(True)
    loss = sgan_unsupervised_loss(logits, logits * 0.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    pad = torch.cat([logits.detach(), torch.zeros(8, 1)], 1)
    assert torch.isfinite(sgan_unsupervised_loss_explicit(pad, pad))


def test_feature_matching_loss_values():
    a, b = torch.ones(4, 3), torch.zeros(5, 3)
    assert feature_matching_loss(a, b).item() == pytest.approx(1.0)
    assert feature_matching_loss(2 * a, b, "l1").item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="l2"):
        feature_matching_loss(a, b, "l3")


def test_feature_matching_gradients_reach_generator_not_discriminator():
    m = small_sgan()
    m.initialize(batch())
    m.train()
    grads = {}
    real_update = m.update

    def spy(loss, name):  # record both nets' gradients right after each optimizer's update
        real_update(loss, name)
        grads[name] = ([None if p.grad is None else p.grad.clone() for p in m.disc.parameters()],
                       [None if p.grad is None else p.grad.clone() for p in m.gen.parameters()])

    m.update = spy
    m.train_step(batch(), 0)
    d_after_d, g_after_d = grads["d"]
    d_after_g, g_after_g = grads["g"]
    assert all(g is None for g in g_after_d)  # the discriminator's loss sees generated images detached
    assert all(g is not None and g.abs().sum() > 0 for g in g_after_g)  # feature matching reaches G ...
    assert all(torch.equal(a, b) for a, b in zip(d_after_d, d_after_g))  # ... and adds nothing to D's grads
    assert all(p.requires_grad for p in m.disc.parameters())  # D is unfrozen again after the G step


@pytest.mark.parametrize("overrides", [{}, {"augment_shift": 2, "entropy_weight": 1.0, "fm_real": "d_step"}])
def test_train_step_updates_both_nets_and_logs_detached_scalars(overrides):
    m = small_sgan(**overrides)
    m.initialize(batch())
    m.train()
    d0 = [p.clone() for p in m.disc.parameters()]
    g0 = [p.clone() for p in m.gen.parameters()]
    logs = m.train_step(batch(), 0)
    assert {"train/sup_loss", "train/unsup_loss", "train/fm_loss", "train/d_real", "train/d_fake"} <= set(logs)
    assert all(v.dim() == 0 and not v.requires_grad for v in logs.values())
    assert any(not torch.equal(a, p) for a, p in zip(d0, m.disc.parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(g0, m.gen.parameters()))
    assert 0 <= logs["train/d_fake"] <= 1


@pytest.mark.parametrize("layer", [WNLinear(30, 7), WNConv2d(3, 5, 3, padding=1)])
def test_data_dependent_init_normalizes_preactivations(layer):
    x = torch.randn(64, 30) * 4 + 2 if isinstance(layer, WNLinear) else torch.randn(16, 3, 8, 8) * 3 + 1
    data_dependent_init(layer, x)
    out = layer(x)
    dims = (0,) if out.dim() == 2 else (0, 2, 3)
    torch.testing.assert_close(out.mean(dims), torch.zeros(out.shape[1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(dims, unbiased=False), torch.ones(out.shape[1]), atol=1e-3, rtol=0)


def test_mlp_discriminator_shapes_and_noise_only_in_training():
    d = MLPDiscriminator(784, 10, (64, 32))
    x = torch.rand(5, 1, 28, 28)
    assert d(x).shape == (5, 10) and d.features(x).shape == (5, 32)
    d.eval()
    torch.testing.assert_close(d(x), d(x))
    d.train()
    assert not torch.equal(d(x), d(x))


def test_conv_architecture_on_rgb32():
    disc, gen = make_gan("conv", (3, 32, 32), 10, z_dim=8, conv_width=8)
    z = torch.rand(4, 8)
    x = gen(z)
    assert x.shape == (4, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
    assert disc(x).shape == (4, 10)
    with pytest.raises(ValueError, match="32x32"):
        make_gan("conv", (1, 28, 28), 10)
    with pytest.raises(ValueError, match="mlp, conv"):
        make_gan("resnet", (1, 28, 28), 10)


def test_ema_tracks_weights_and_round_trips_through_state_dict():
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, decay=0.9)
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    d = min(0.9, 2 / 11)
    assert torch.allclose(ema.shadow.weight, net.weight - d * 1.0)
    other = EMA(torch.nn.Linear(3, 2), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1 and torch.equal(other.shadow.weight, ema.shadow.weight)
    with pytest.raises(ValueError, match="decay"):
        EMA(net, decay=1.0)


def test_bad_config_values_fail_loudly():
    with pytest.raises(ValueError, match="implicit, explicit"):
        create_method("sgan", {"fake_logit": "both"}, SPEC)
    with pytest.raises(ValueError, match="mlp, conv"):
        create_method("sgan", {"arch": "vit"}, SPEC)


def test_health_check_reports_discriminator_collapse():
    m = small_sgan(collapse_window=100, collapse_threshold=1e-3)
    healthy = {"train/unsup_loss": 0.4, "train/d_fake": 0.2}
    collapsed = {"train/unsup_loss": 1e-5, "train/d_fake": 1e-6}
    assert m.check_health(healthy, 50) is None
    assert m.check_health(collapsed, 100) is None  # not yet a long window
    assert m.check_health(collapsed, 150) is None
    assert m.check_health(healthy, 160) is None  # recovery resets the window
    assert m.check_health(collapsed, 200) is None
    msg = m.check_health(collapsed, 300)
    assert msg and "discriminator collapse" in msg and "since step 200" in msg


def test_explicit_fake_logit_trains(run_config_factory, tiny_data):
    cfg = run_config_factory("sgan", {**SMALL, "fake_logit": "explicit"})
    results = Trainer(cfg, data=tiny_data).fit()
    assert math.isfinite(results["test_acc"])


def test_resume_is_exact_including_ema(run_config_factory, tiny_data, tmp_path):
    over = {**SMALL, "ema_decay": 0.9}
    full = Trainer(run_config_factory("sgan", over, train={"steps": 6}), run_dir=tmp_path / "full", data=tiny_data)
    full.fit()
    part = Trainer(run_config_factory("sgan", over, train={"steps": 3}), run_dir=tmp_path / "part", data=tiny_data)
    part.fit()
    resumed = Trainer(run_config_factory("sgan", over, train={"steps": 6}), run_dir=tmp_path / "part",
                      resume=True, data=tiny_data)
    resumed.fit()
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["method_state"]["model"]
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)["method_state"]["model"]
    assert any(k.startswith("ema.shadow.") for k in a) and a.keys() == b.keys()
    for k in a:  # bit for bit (the EMA's update count included), not merely close
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_sample_grid_and_sampling(tiny_data):
    m = small_sgan()
    m.eval()
    grid, nrow = m.eval_images(torch.rand(4, 1, 28, 28))["samples/fixed_noise"]
    assert grid.shape == (20, 1, 28, 28) and nrow == 10
    torch.testing.assert_close(grid, m.eval_images(None)["samples/fixed_noise"][0])  # fixed noise
    assert m.sample(7).shape == (7, 1, 28, 28)
    with pytest.raises(ValueError, match="unconditional"):
        m.sample(3, y=torch.zeros(3, dtype=torch.long))


def test_sample_classifier_trains_on_labeled_plus_confident_samples():
    from genssl.downstream.samples import SampleClassifierConfig, labeled_samples, train_sample_classifier

    m = small_sgan()
    m.initialize(batch())
    b = batch()
    cfg = SampleClassifierConfig(hidden=(16,), steps=4, batch_size=8, labeled_batch_size=5, threshold=0.0,
                                 eval_every=2)
    net, stats = train_sample_classifier(m, b.x_l, b.y_l, 10, cfg, b.x_l, b.y_l)
    assert net(b.x_l).shape == (10, 10) and stats["kept_fraction"] == 1.0 and 0 <= stats["best_val_acc"] <= 1
    assert m.training  # the model's mode is restored

    class Conditional(torch.nn.Module):  # an M2-like model: sample(n, y) draws images of the given classes
        def sample(self, n, y=None):
            return (y.float() / 10).view(-1, 1, 1, 1).expand(n, 1, 28, 28).clone()

        def predict(self, x):
            return F.one_hot((x[:, 0, 0, 0] * 10).round().long(), 10).float() * 5

    x, y, conf = labeled_samples(Conditional(), 6, 10, "conditional", torch.Generator().manual_seed(0))
    assert x.shape == (6, 1, 28, 28) and (conf > 0.9).all()
    with pytest.raises(ValueError, match="predict, conditional"):
        SampleClassifierConfig(label_source="oracle")
