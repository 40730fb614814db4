"""ADGM and SDGM (genssl.methods.adgm): the enumerated bound, the objective's reductions, predictions over
samples of a, generation, the exported encoder, M1 latents, and short training runs through the registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from genssl import DataSpec, SSLBatch, Trainer, create_method, load_encoder, losses
from genssl.encoders.format import export_encoder
from genssl.fileio import safe_torch_load

SPEC = DataSpec((1, 28, 28), 10, 20, 200)
SMALL = {"a_dim": 5, "z_dim": 6, "hidden": [32, 16], "cls_hidden": [24]}
METHODS = ["adgm", "sdgm"]


def _batch(spec=SPEC, b_l=6, b_u=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return SSLBatch(torch.rand(b_l, *spec.image_shape, generator=g), torch.arange(b_l) % spec.num_classes,
                    torch.rand(b_u, *spec.image_shape, generator=g))


def _model(method, **overrides):
    torch.manual_seed(0)
    return create_method(method, {**SMALL, **overrides}, SPEC)


# ------------------------------------------------------------------ the bounds
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("method", METHODS)
def test_enumerated_bound_equals_loop_over_classes(method, likelihood):
    m = _model(method, likelihood=likelihood).eval()
    b = _batch()
    neg_L_l, neg_L_u, parts = m.bounds(b.x_l, b.y_l, b.x_u, sample=False)
    assert neg_L_l.shape == (6,) and neg_L_u.shape == (5, 10) and parts["logits"].shape == (11, 10)
    for k in range(10):
        loop = m.neg_labeled_bound(b.x_u, torch.full((5,), k), sample=False)
        torch.testing.assert_close(neg_L_u[:, k], loop, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(neg_L_l, m.neg_labeled_bound(b.x_l, b.y_l, sample=False), rtol=1e-5, atol=1e-3)
    # -U(x) is the q(y|a,x)-weighted loop plus the entropy, q(y|a,x) at the same a (here its mean)
    x = b.x_u.flatten(1)
    logits = m.aux.logits(x, m.aux.posterior_a(x)[0])
    torch.testing.assert_close(parts["logits"][6:], logits, rtol=1e-5, atol=1e-5)
    loop_U = sum(logits.softmax(-1)[:, k] * m.neg_labeled_bound(b.x_u, torch.full((5,), k), sample=False)
                 for k in range(10)) + losses.entropy_from_logits(logits)
    torch.testing.assert_close(losses.unlabeled_bound(neg_L_u, logits), loop_U, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("method", METHODS)
def test_all_labels_observed_reduces_to_labeled_bound_plus_classification_term(method):
    m = _model(method).eval()
    b = _batch(b_u=0)
    out = m.objective(b.x_l, b.y_l, b.x_u, sample=False)
    x = b.x_l.flatten(1)
    ce = F.cross_entropy(m.aux.logits(x, m.aux.posterior_a(x)[0]), b.y_l)
    expected = -m.neg_labeled_bound(b.x_l, b.y_l, sample=False).mean() + m.cls_weight * ce
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-3)
    assert "neg_U" not in out
    # per-example labeled weighting: with only labeled images it is the same mean
    m.cfg.labeled_weight = 3.0
    torch.testing.assert_close(m.objective(b.x_l, b.y_l, b.x_u, sample=False)["loss"], expected, rtol=1e-5,
                               atol=1e-3)


def test_labeled_weight_is_per_example():
    m = _model("adgm").eval()
    b = _batch(b_l=4, b_u=8)
    balanced = m.objective(b.x_l, b.y_l, b.x_u, sample=False)["loss"]
    m.cfg.labeled_weight = 8 / 4  # B_u / B_l: the balanced loss, halved (a weighted mean over 2 * B_u images)
    torch.testing.assert_close(m.objective(b.x_l, b.y_l, b.x_u, sample=False)["loss"], balanced / 2)


def test_kl_warmup_only_changes_the_loss_not_the_bounds():
    m = _model("sdgm").eval()
    b = _batch()
    full, warm = (m.objective(b.x_l, b.y_l, b.x_u, sample=False, beta=beta) for beta in (1.0, 0.0))
    torch.testing.assert_close(full["neg_U"], warm["neg_U"])
    assert warm["loss"] != full["loss"]


# ------------------------------------------------------------------ training steps
@pytest.mark.parametrize("method", METHODS)
def test_train_steps_finite_and_loss_decreasing(method):
    m = _model(method)
    m.setup(30)
    assert m.grad_clip == 5.0
    b = _batch(b_l=10, b_u=10)
    logs = [m.train_step(b, i) for i in range(20)]
    assert all(math.isfinite(float(v)) for log in logs for v in log.values())
    for key in ("train/loss", "train/neg_U", "train/kl_a_l", "train/kl_a_u", "train/kl_z_l", "train/rec_gain_y"):
        assert key in logs[-1], key
    assert float(logs[-1]["train/loss"]) < float(logs[0]["train/loss"])


def test_no_batch_norm_anywhere():
    for method in METHODS:
        m = _model(method)
        assert not any(isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for mod in m.modules())


# ------------------------------------------------------------------ inference
@pytest.mark.parametrize("method", METHODS)
def test_predictions_average_q_y_over_samples_of_a(method):
    m = _model(method, eval_samples=4).eval()
    x = _batch().x_u
    logits = m.predict(x)
    assert logits.shape == (5, 10)
    torch.testing.assert_close(m.predict(x), logits)  # fixed noise: a function of the weights
    torch.testing.assert_close(logits.exp().sum(1), torch.ones(5))  # log of an average of distributions
    mu, logvar = m.aux.posterior_a(x.flatten(1))
    g = torch.Generator().manual_seed(0)
    eps = torch.randn((4, *mu.shape), generator=g)
    probs = [m.aux.logits(x.flatten(1), mu + torch.exp(0.5 * logvar) * eps[s]).softmax(-1) for s in range(4)]
    torch.testing.assert_close(logits, (sum(probs) / 4).log(), rtol=1e-5, atol=1e-5)
    m.cfg.eval_samples = 0
    torch.testing.assert_close(m.predict(x), m.aux.logits(x.flatten(1), mu))


@pytest.mark.parametrize("method", METHODS)
def test_class_conditional_samples(method):
    m = _model(method)
    y = torch.tensor([0, 3, 9, 3])
    x = m.sample(4, y)
    assert x.shape == (4, 1, 28, 28) and 0 <= x.min() and x.max() <= 1
    torch.manual_seed(1)
    a = m.sample(4, y)
    torch.manual_seed(1)
    assert not torch.equal(a, m.sample(4, (y + 1) % 10))  # same noise, other classes: other images
    assert m.sample(5).shape == (5, 1, 28, 28)
    with pytest.raises(ValueError, match=r"y must be 3 class indices in \[0, 9\]"):
        m.sample(3, torch.tensor([0, 1, 10]))
    images = m.eval().eval_images(_batch().x_u)
    grid, nrow = images[f"{method}/class_samples"]
    assert grid.shape == (10 * 10, 1, 28, 28) and nrow == 10  # a row per class
    recon, _ = images[f"{method}/reconstructions"]
    assert recon.shape == (10, 1, 28, 28) and torch.isfinite(recon).all()


@pytest.mark.parametrize("method", METHODS)
def test_exported_encoder_is_the_classifier_features(method, tmp_path):
    m = _model(method).eval()
    x = _batch().x_u
    export_encoder(m.encoder_module(), tmp_path / "enc", input_shape=SPEC.image_shape)
    enc = load_encoder(tmp_path / "enc")
    assert enc.out_dim == 24
    torch.testing.assert_close(enc(x), m.encode(x))


@pytest.mark.parametrize("method", METHODS)
def test_conv_classifier_is_the_convnet_seeing_each_image_once(method, tmp_path):
    """cls_arch: conv (issue 30's matched networks): x enters q(y|a,x) through the classifiers' ConvNet, whose batch
    norm sees the B_l + B_u images once each, never the B_u * K enumerated rows; the bound's enumeration, the
    predictions and the exported encoder are unchanged by it."""
    from genssl.nn.classifiers import ConvNet
    m = _model(method, cls_arch="conv")
    assert isinstance(m.aux.qy_x, ConvNet)
    seen = []
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    b = _batch()
    m.setup(5)
    log = m.train_step(b, 0)
    assert math.isfinite(float(log["train/loss"])) and set(seen) == {6 + 5}
    m.eval()
    neg_L_l, neg_L_u, _ = m.bounds(b.x_l, b.y_l, b.x_u, sample=False)
    for k in (0, 7):
        torch.testing.assert_close(neg_L_u[:, k], m.neg_labeled_bound(b.x_u, torch.full((5,), k), sample=False),
                                   rtol=1e-5, atol=1e-3)
    assert m.predict(b.x_u).shape == (5, 10)
    export_encoder(m.encoder_module(), tmp_path / "enc", input_shape=SPEC.image_shape)
    torch.testing.assert_close(load_encoder(tmp_path / "enc")(b.x_u), m.encode(b.x_u))
    with pytest.raises(ValueError, match="unknown classifier arch 'resnet' for q\\(y\\|a,x\\)"):
        _model(method, cls_arch="resnet")
    with pytest.raises(ValueError, match=r"cls_arch='conv' takes \(C, H, W\) images"):
        create_method(method, {**SMALL, "cls_arch": "conv"}, DataSpec((12,), 10, 20, 200))


def test_bad_config_fails_loudly():
    with pytest.raises(ValueError, match="eval_samples must be >= 0"):
        _model("adgm", eval_samples=-1)
    with pytest.raises(ValueError, match="labeled_weight must be a positive number"):
        _model("sdgm", labeled_weight=0.0)
    with pytest.raises(ValueError, match="binarize=True needs pixels with likelihood='bernoulli'"):
        _model("adgm", binarize=True, likelihood="gaussian")
    with pytest.raises(ValueError, match="bernoulli, gaussian"):
        _model("adgm", likelihood="poisson")


def test_on_m1_latents(tmp_path):
    torch.manual_seed(0)
    m1 = create_method("vae_m1", {"hidden": [32], "z_dim": 8}, SPEC)
    export_encoder(m1.encoder_module(), tmp_path / "m1", input_shape=SPEC.image_shape)
    m = _model("sdgm", encoder=str(tmp_path / "m1"))
    assert m.input_shape == (8,) and m.likelihood == "gaussian"
    m.setup(5)
    b = _batch()
    logs = [m.train_step(b, i) for i in range(3)]
    assert all(math.isfinite(float(v)) for log in logs for v in log.values())
    assert not any(p.requires_grad for p in m.m1.parameters())
    assert m.eval().predict(b.x_u).shape == (5, 10) and m.eval_images(b.x_u) == {}
    with pytest.raises(ValueError, match="export the M1 encoder instead"):
        m.encoder_module()
    with pytest.raises(ValueError, match="generates M1 latents"):
        m.sample(2)
    with pytest.raises(ValueError, match="a stacked model reads latent vectors: arch and cls_arch must be 'mlp'"):
        _model("adgm", encoder=str(tmp_path / "m1"), cls_arch="conv")


# ------------------------------------------------------------------ through the registry and the Trainer
@pytest.mark.parametrize("method", METHODS)
def test_method_trains_and_round_trips(method, run_config_factory, tiny_data):
    cfg = run_config_factory(method, {**SMALL, "binarize": True, "kl_warmup": 0.5})
    trainer = Trainer(cfg, data=tiny_data)
    results = trainer.fit()
    assert 0.0 <= results["test_acc"] <= 1.0
    m = trainer.method.eval()
    x = tiny_data[1].images[:7].float() / 255
    best = safe_torch_load(trainer.run_dir / "best.pt")
    fresh = create_method(method, cfg.method, m.spec)
    fresh.load_state_dict(best["model"])
    m.load_state_dict(best["model"])
    torch.testing.assert_close(fresh.eval().predict(x), m.predict(x))
    assert m.encode(x).shape == (7, 24)


@pytest.mark.parametrize("method", METHODS)
def test_learns_tiny_synthetic_data_well_above_chance(method, run_config_factory, tiny_data):
    """20 labels of 10 classes (each a bright square at its own place, under noise): chance is 10%."""
    cfg = run_config_factory(method, {"a_dim": 8, "z_dim": 8, "hidden": [64], "lr": 3e-3, "eval_samples": 4},
                             train={"steps": 150, "eval_every": 50, "ckpt_every": 150, "log_every": 50,
                                    "batch_size": 32, "labeled_batch_size": 20})
    results = Trainer(cfg, data=tiny_data).fit()
    assert results["best_val_acc"] >= 0.8, results
    assert results["test_acc"] >= 0.7, results
