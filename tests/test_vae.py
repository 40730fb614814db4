"""The VAE family: loss functions, M2's enumerated bound, registry round trips for vae_m1 and vae_m2."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import synthetic_images, tiny_run_config
from genssl import DataSpec, SSLBatch, Trainer, create_method, losses
from genssl.encoders.from_run import method_from_run
from genssl.fileio import safe_torch_load
from genssl.nn.vae import Decoder, GaussianEncoder

SPEC = DataSpec((1, 28, 28), 10, 20, 200)
SMALL = {"vae_m1": {"hidden": [64, 32], "z_dim": 8},
         "vae_m2": {"enc_hidden": [32], "dec_hidden": [32], "cls_hidden": [32], "z_dim": 6}}


def _batch(spec=SPEC, b_l=6, b_u=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return SSLBatch(torch.rand(b_l, *spec.image_shape, generator=g), torch.arange(b_l) % spec.num_classes,
                    torch.rand(b_u, *spec.image_shape, generator=g))


# ------------------------------------------------------------------ pure losses
def test_standard_normal_kl_matches_torch_distributions():
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(losses.gaussian_kl_standard(mu, logvar), expected)


def test_gaussian_kl_matches_torch_distributions():
    mu_q, logvar_q, mu_p, logvar_p = (torch.randn(4, 3) for _ in range(4))
    q = torch.distributions.Normal(mu_q, (0.5 * logvar_q).exp())
    p = torch.distributions.Normal(mu_p, (0.5 * logvar_p).exp())
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(losses.gaussian_kl(mu_q, logvar_q, mu_p, logvar_p), expected)
    zero = torch.zeros(3)
    torch.testing.assert_close(losses.gaussian_kl(mu_q, logvar_q, zero, zero), losses.gaussian_kl_standard(mu_q, logvar_q))


def test_likelihoods_match_torch_distributions():
    logits, x = torch.randn(4, 1, 5, 5), torch.bernoulli(torch.full((4, 1, 5, 5), 0.4))
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum((1, 2, 3))
    torch.testing.assert_close(losses.bernoulli_log_likelihood(logits, x, 3), expected)
    mean, logvar, v = torch.randn(4, 7), torch.randn(4, 7), torch.randn(4, 7)
    expected = torch.distributions.Normal(mean, (0.5 * logvar).exp()).log_prob(v).sum(-1)
    torch.testing.assert_close(losses.gaussian_log_likelihood(v, mean, logvar, 1), expected)


def test_unlabeled_bound_is_expectation_plus_entropy():
    neg_L, logits = torch.randn(3, 4), torch.randn(3, 4)
    q = logits.softmax(-1)
    expected = (q * neg_L).sum(-1) + losses.entropy_from_logits(logits)
    torch.testing.assert_close(losses.unlabeled_bound(neg_L, logits), expected)
    # A certain classifier makes U(x) the labeled bound of its class.
    sharp = torch.full((3, 4), -1e4).scatter(1, torch.tensor([[1], [0], [3]]), 0.0)
    torch.testing.assert_close(losses.unlabeled_bound(neg_L, sharp), neg_L[[0, 1, 2], [1, 0, 3]])


# ------------------------------------------------------------------ networks
@pytest.mark.parametrize("arch,shape", [("mlp", (1, 28, 28)), ("conv", (1, 28, 28)), ("conv", (3, 32, 32)),
                                        ("mlp", (50,))])
def test_encoder_decoder_shapes(arch, shape):
    enc = GaussianEncoder(shape, 4, arch, (16, 8), cond_dim=3)
    dec = Decoder(shape, 4, arch, (8, 16), cond_dim=3, n_params=2)
    x = torch.rand(5, *shape)
    mu, logvar = enc.posterior_all(x)
    assert mu.shape == logvar.shape == (5, 3, 4)
    out = dec(mu, torch.eye(3))
    assert out.shape == (5, 3, 2, *shape)
    for k in range(3):  # the broadcast enumeration equals conditioning on each class in turn
        mu_k, _ = enc.posterior(x, F.one_hot(torch.full((5,), k), 3).float())
        torch.testing.assert_close(mu[:, k], mu_k, rtol=1e-5, atol=1e-5)
    assert GaussianEncoder(**enc.spec_args()).spec_args() == enc.spec_args()


def test_bad_arch_and_likelihood_fail_loudly():
    with pytest.raises(ValueError, match="mlp, conv"):
        GaussianEncoder((1, 28, 28), 4, "resnet")
    with pytest.raises(ValueError, match=r"H, W >= 4, got \(1, 3, 3\)"):  # conv takes any size from 4x4 up
        GaussianEncoder((1, 3, 3), 4, "conv")
    with pytest.raises(ValueError, match="bernoulli, gaussian"):
        create_method("vae_m1", {"likelihood": "poisson"}, SPEC)
    with pytest.raises(ValueError, match="linear, mlp, knn"):
        create_method("vae_m1", {"readout": "svm"}, SPEC)


# ------------------------------------------------------------------ M2's objective
@pytest.mark.parametrize("likelihood,prior", [("bernoulli", "standard"), ("gaussian", "standard"),
                                              ("bernoulli", "mixture")])
def test_enumerated_bound_equals_loop_over_classes(likelihood, prior):
    torch.manual_seed(0)
    m2 = create_method("vae_m2", {**SMALL["vae_m2"], "likelihood": likelihood, "prior": prior}, SPEC).eval()
    if prior == "mixture":  # a prior that differs per class
        with torch.no_grad():
            m2.prior_mu.normal_()
            m2.prior_logvar.normal_(0.0, 0.5)
    b = _batch()
    neg_L_l, neg_L_u, _ = m2.bounds(b.x_l, b.y_l, b.x_u, sample=False)
    assert neg_L_l.shape == (6,) and neg_L_u.shape == (5, 10)
    for k in range(10):
        loop = m2.neg_labeled_bound(b.x_u, torch.full((5,), k), sample=False)
        torch.testing.assert_close(neg_L_u[:, k], loop, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(neg_L_l, m2.neg_labeled_bound(b.x_l, b.y_l, sample=False), rtol=1e-5, atol=1e-3)
    # and -U(x) is the q(y|x)-weighted loop plus the entropy
    logits = m2.classifier(b.x_u)
    loop_U = sum(logits.softmax(-1)[:, k] * m2.neg_labeled_bound(b.x_u, torch.full((5,), k), sample=False)
                 for k in range(10)) + losses.entropy_from_logits(logits)
    torch.testing.assert_close(losses.unlabeled_bound(neg_L_u, logits), loop_U, rtol=1e-5, atol=1e-3)


def test_all_labels_observed_reduces_to_labeled_elbo_plus_classifier_term():
    torch.manual_seed(0)
    m2 = create_method("vae_m2", SMALL["vae_m2"], SPEC).eval()
    b = _batch(b_u=0)
    out = m2.objective(b.x_l, b.y_l, b.x_u, sample=False)
    ce = F.cross_entropy(m2.classifier(b.x_l), b.y_l)
    expected = -m2.neg_labeled_bound(b.x_l, b.y_l, sample=False).mean() + m2.cls_weight * ce
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-3)
    assert "neg_U" not in out


def test_m2_class_conditional_samples_feed_the_samples_classifier():
    from genssl.downstream.samples import SampleClassifierConfig, labeled_samples, train_sample_classifier

    torch.manual_seed(0)
    m2 = create_method("vae_m2", SMALL["vae_m2"], SPEC)
    y = torch.tensor([0, 3, 9, 3])
    x = m2.sample(4, y)
    assert x.shape == (4, 1, 28, 28) and 0 <= x.min() and x.max() <= 1
    # same z, other classes: the decoder's class input changes the images
    torch.manual_seed(1)
    a = m2.sample(4, y)
    torch.manual_seed(1)
    assert not torch.equal(a, m2.sample(4, (y + 1) % 10))
    assert m2.sample(5).shape == (5, 1, 28, 28)  # classes drawn from p(y)
    with pytest.raises(ValueError, match=r"y must be 3 class indices in \[0, 9\]"):
        m2.sample(3, torch.tensor([0, 1, 10]))
    x_g, y_g, conf = labeled_samples(m2, 6, 10, "conditional", torch.Generator().manual_seed(0))
    assert x_g.shape == (6, 1, 28, 28) and y_g.shape == conf.shape == (6,) and ((0 <= conf) & (conf <= 1)).all()
    b = _batch()
    cfg = SampleClassifierConfig(hidden=(16,), steps=3, batch_size=8, labeled_batch_size=4, threshold=0.0,
                                 label_source="conditional", eval_every=3)
    net, stats = train_sample_classifier(m2, b.x_l, b.y_l, 10, cfg, b.x_l, b.y_l)
    assert net(b.x_l).shape == (6, 10) and stats["kept_fraction"] == 1.0


def test_m1_m2_cannot_sample_images(tmp_path):
    from genssl.encoders.format import export_encoder

    torch.manual_seed(0)
    m1 = create_method("vae_m1", SMALL["vae_m1"], SPEC)
    export_encoder(m1.encoder_module(), tmp_path / "m1", input_shape=SPEC.image_shape)
    m1m2 = create_method("vae_m2", {**SMALL["vae_m2"], "encoder": str(tmp_path / "m1"),
                                    "likelihood": "gaussian"}, SPEC)
    with pytest.raises(ValueError, match=r"M1\+vae_m2\) generates M1 latents"):
        m1m2.sample(2)


def test_classification_weight_is_alpha_times_N_over_N_labeled():
    m2 = create_method("vae_m2", {**SMALL["vae_m2"], "alpha": 0.1}, DataSpec((1, 28, 28), 10, 100, 54900))
    assert m2.cls_weight == pytest.approx(0.1 * 55000 / 100)
    assert create_method("vae_m2", {**SMALL["vae_m2"], "classifier_weight": 3.0}, SPEC).cls_weight == 3.0
    # Fashion-MNIST, 100 labels, 1,000 unlabeled drawn from a pool of 55,000: N counts the pool, unless `drawn`
    spec = DataSpec((1, 28, 28), 10, 100, 1100, n_pool=55000)
    assert create_method("vae_m2", SMALL["vae_m2"], spec).cls_weight == pytest.approx(0.1 * 55100 / 100)
    drawn = create_method("vae_m2", {**SMALL["vae_m2"], "cls_weight_pool": "drawn"}, spec).cls_weight
    assert drawn == pytest.approx(0.1 * 1200 / 100)
    old = DataSpec.from_dict({k: v for k, v in spec.to_dict().items() if k != "n_pool"})  # a spec saved before
    assert old.n_pool is None and create_method("vae_m2", SMALL["vae_m2"], old).cls_weight == pytest.approx(drawn)
    with pytest.raises(ValueError, match="cls_weight_pool must be one of full, drawn, got 'all'"):
        create_method("vae_m2", {**SMALL["vae_m2"], "cls_weight_pool": "all"}, spec)


def test_cls_weight_with_n_unlabeled_1000_is_the_whole_pools(tmp_path):
    """Issue 37: data.n_unlabeled changes the data, not the classification weight. 1,500 images, 100 for
    validation, 20 labeled: the whole pool is 1,400 (labeled ones included), w = 0.1 * 1,420 / 20 with 1,000
    unlabeled drawn as with all of them; the old rule (cls_weight_pool: drawn) gives 0.1 * 1,040 / 20."""
    data = (synthetic_images(1500, seed=0), synthetic_images(100, seed=1))

    def weight(name, n_unlabeled, pool="full"):
        cfg = tiny_run_config("vae_m2", tmp_path, {**SMALL["vae_m2"], "cls_weight_pool": pool},
                              data={"n_unlabeled": n_unlabeled}, train={"steps": 2, "eval_every": 2})
        Trainer(cfg, run_dir=tmp_path / name, data=data).fit()
        method, _, _ = method_from_run(tmp_path / name)  # rebuilt from the checkpoint's data spec alone
        assert method.spec.n_pool == 1400 and method.spec.n_unlabeled == (1400 if n_unlabeled is None else 1020)
        return method.cls_weight

    whole = weight("whole", None)
    assert whole == pytest.approx(0.1 * 1420 / 20)
    assert weight("u1000", 1000) == pytest.approx(whole)
    assert weight("u1000-drawn", 1000, "drawn") == pytest.approx(0.1 * 1040 / 20)


def test_labeled_weight_is_per_example():
    torch.manual_seed(0)
    m2 = create_method("vae_m2", SMALL["vae_m2"], SPEC).eval()
    b = _batch(b_l=4, b_u=8)
    balanced = m2.objective(b.x_l, b.y_l, b.x_u, sample=False)
    m2.cfg.labeled_weight = 8 / 4  # B_u / B_l: the balanced loss halved (a weighted mean over 2 * B_u images)
    torch.testing.assert_close(m2.objective(b.x_l, b.y_l, b.x_u, sample=False)["loss"], balanced["loss"] / 2)
    # by hand: [lambda * sum_l (L + w CE) + sum_u U] / (lambda * B_l + B_u)
    m2.cfg.labeled_weight = 0.5
    ce = F.cross_entropy(m2.classifier(b.x_l), b.y_l, reduction="none")
    neg_L_l, neg_L_u, _ = m2.bounds(b.x_l, b.y_l, b.x_u, sample=False)
    neg_U = losses.unlabeled_bound(neg_L_u, m2.classifier(b.x_u))
    expected = (0.5 * (-neg_L_l + m2.cls_weight * ce).sum() - neg_U.sum()) / (0.5 * 4 + 8)
    torch.testing.assert_close(m2.objective(b.x_l, b.y_l, b.x_u, sample=False)["loss"], expected, rtol=1e-5,
                               atol=1e-3)
    with pytest.raises(ValueError, match="labeled_weight must be a positive number"):
        create_method("vae_m2", {**SMALL["vae_m2"], "labeled_weight": -1.0}, SPEC)


def test_classifier_input_noise_only_while_training():
    torch.manual_seed(0)
    plain = create_method("vae_m2", SMALL["vae_m2"], SPEC)
    noisy = create_method("vae_m2", {**SMALL["vae_m2"], "cls_input_noise": 0.5}, SPEC)
    noisy.load_state_dict(plain.state_dict())
    b = _batch()
    for mode in ("eval", "train"):
        getattr(plain, mode)(), getattr(noisy, mode)()
        a, n = (m.objective(b.x_l, b.y_l, b.x_u, sample=False)["ce"] for m in (plain, noisy))
        assert torch.equal(a, n) == (mode == "eval"), mode


@pytest.mark.parametrize("kind", ["fixmatch", "kl"])
def test_hybrid_adds_the_consistency_term_on_q_y_and_nothing_else(kind):
    """M2 + consistency (the hybrid): in eval mode (batch norm on running statistics, z = mu) the loss is the
    pure M2 loss plus weight * the consistency term between q(y | x_u) and q(y | strong view), computed here by
    hand from the classifier; the term's gradient reaches only the classifier."""
    torch.manual_seed(0)
    hybrid = create_method("vae_m2", {**SMALL["vae_m2"], "consistency": kind, "consistency_weight": 0.7,
                                      "consistency_threshold": 0.11}, SPEC).eval()
    b = _batch(b_u=12)
    x_strong = torch.rand_like(b.x_u)
    pure = hybrid.objective(b.x_l, b.y_l, b.x_u, sample=False)
    both = hybrid.objective(b.x_l, b.y_l, b.x_u, sample=False, x_strong=x_strong)
    with torch.no_grad():
        p_weak = F.softmax(hybrid.classifier(b.x_u), 1)
        log_q = F.log_softmax(hybrid.classifier(x_strong), 1)
    if kind == "kl":
        expected = (p_weak * (p_weak.log() - log_q)).sum(1).mean()
    else:
        conf, hard = p_weak.max(1)
        mask = (conf >= 0.11).float()
        expected = (-log_q.gather(1, hard[:, None])[:, 0] * mask).mean()
        assert 0 < float(both["mask_rate"]) == pytest.approx(float(mask.mean()))
    torch.testing.assert_close(both["consistency_loss"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both["loss"], pure["loss"] + 0.7 * expected, rtol=1e-5, atol=1e-5)
    extra = both["loss"] - pure["loss"]
    hybrid.zero_grad()
    extra.backward()
    touched = {n.split(".")[0] for n, p in hybrid.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert touched == {"classifier"}


def test_hybrid_options_are_checked():
    with pytest.raises(ValueError, match="consistency='fixmach' is not one of none, kl, fixmatch"):
        create_method("vae_m2", {**SMALL["vae_m2"], "consistency": "fixmach"}, SPEC)
    with pytest.raises(ValueError, match="consistency_threshold in \\[0, 1\\], got 1.0 / 1.5"):
        create_method("vae_m2", {**SMALL["vae_m2"], "consistency": "kl", "consistency_threshold": 1.5}, SPEC)


def test_classifier_weight_decay_on_classifier_weights_only():
    m2 = create_method("vae_m2", {**SMALL["vae_m2"], "cls_weight_decay": 0.01}, SPEC)
    m2.setup(10)
    opt = m2.optimizers["main"]
    assert isinstance(opt, torch.optim.AdamW)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(p) for p in m2.classifier.parameters() if p.dim() > 1}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(m2.parameters()))
    plain = create_method("vae_m2", SMALL["vae_m2"], SPEC)
    plain.setup(10)
    assert type(plain.optimizers["main"]) is torch.optim.Adam  # the default stays plain Adam


def test_mixture_prior_starts_as_the_standard_prior_and_generates_per_class():
    torch.manual_seed(0)
    std = create_method("vae_m2", SMALL["vae_m2"], SPEC).eval()
    mix = create_method("vae_m2", {**SMALL["vae_m2"], "prior": "mixture"}, SPEC).eval()
    missing = mix.load_state_dict(std.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["prior_logvar", "prior_mu"]
    b = _batch()
    for a, m in zip(std.bounds(b.x_l, b.y_l, b.x_u, sample=False), mix.bounds(b.x_l, b.y_l, b.x_u, sample=False)):
        torch.testing.assert_close(a, m)
    with torch.no_grad():
        mix.prior_mu[3] = 5.0
        mix.prior_logvar[3] = math.log(0.25)
    z = mix.prior_sample(torch.full((4000,), 3))
    torch.testing.assert_close(z.mean(0), torch.full((6,), 5.0), atol=0.05, rtol=0)
    torch.testing.assert_close(z.std(0), torch.full((6,), 0.5), atol=0.05, rtol=0)
    assert mix.sample(3, torch.tensor([3, 3, 0])).shape == (3, 1, 28, 28)
    with pytest.raises(ValueError, match="standard, mixture"):
        create_method("vae_m2", {**SMALL["vae_m2"], "prior": "vamp"}, SPEC)


def test_rec_gain_is_the_predicted_class_against_the_others():
    from genssl.methods.enumerated import rec_gain

    rec = torch.tensor([[0.0, -10.0, -10.0], [-5.0, -1.0, -3.0]])
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert float(rec_gain(rec, logits)) == pytest.approx((10.0 + 3.0) / 2)
    torch.manual_seed(0)
    m2 = create_method("vae_m2", SMALL["vae_m2"], SPEC)
    m2.setup(5)
    assert "train/rec_gain_y" in m2.train_step(_batch(), 0)


def _m1_with_dead_dims(folder, dead: int = 3):
    """An exported M1 whose first `dead` latent means are constant over images."""
    from genssl.encoders.format import export_encoder

    torch.manual_seed(0)
    m1 = create_method("vae_m1", SMALL["vae_m1"], SPEC)
    with torch.no_grad():
        m1.encoder.head.weight[:dead] = 0.0
    export_encoder(m1.encoder_module(), folder, input_shape=SPEC.image_shape)
    return str(folder)


def test_m1_m2_keeps_only_active_m1_dims(tmp_path):
    enc = _m1_with_dead_dims(tmp_path / "m1")
    cfg = {**SMALL["vae_m2"], "encoder": enc, "likelihood": "gaussian", "m1_active_threshold": 0.01}
    torch.manual_seed(0)
    m = create_method("vae_m2", cfg, SPEC)
    assert m.m1_keep.all()  # until initialize() has seen data
    b = _batch(b_u=16)
    m.initialize(b)
    keep = m.m1_keep.clone()
    assert keep.tolist() == [False] * 3 + [True] * 5
    z1 = m.prepare(b.x_u)
    assert (z1[:, :3] == 0).all() and (z1[:, 3:] != 0).all()  # dead dims zeroed at the networks' inputs
    m.eval()
    # log p(z1 | y, z2) counts the active dims only
    x, y = m.features_in(b.x_l), b.y_l
    y_code = F.one_hot(y, 10).float()
    mu, _ = m.encoder.posterior(x, y_code)
    params = m.decoder(mu, y_code)  # (B, 2, 8)
    rec = losses.gaussian_log_likelihood(x[:, 3:], params[:, 0, 3:],
                                         -6.0 + F.softplus(params[:, 1, 3:] + 6.0), 1)
    expected = rec + m.log_prior_y - losses.gaussian_kl_standard(*m.encoder.posterior(x, y_code))
    torch.testing.assert_close(m.neg_labeled_bound(x, y, sample=False), expected, rtol=1e-5, atol=1e-4)
    # the mask is state: a checkpoint restores it
    fresh = create_method("vae_m2", cfg, SPEC)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.m1_keep, keep)
    with pytest.raises(ValueError, match="no M1 latent dim"):
        create_method("vae_m2", {**cfg, "m1_active_threshold": 1e6}, SPEC).initialize(b)
    with pytest.raises(ValueError, match="m1_active_threshold selects M1 latent dims: it needs `encoder`"):
        create_method("vae_m2", {**SMALL["vae_m2"], "m1_active_threshold": 0.1}, SPEC)


def test_m1_m2_active_dims_survive_the_run_folder(tmp_path, run_config_factory, tiny_data):
    from genssl.encoders.from_run import method_from_run

    enc = _m1_with_dead_dims(tmp_path / "m1", dead=2)
    cfg = run_config_factory("vae_m2", {**SMALL["vae_m2"], "encoder": enc, "likelihood": "gaussian",
                                        "m1_active_threshold": 0.01})
    trainer = Trainer(cfg, data=tiny_data)
    trainer.fit()
    assert trainer.method.m1_keep.tolist() == [False] * 2 + [True] * 6
    reloaded, _, _ = method_from_run(trainer.run_dir, data=tiny_data)
    assert torch.equal(reloaded.m1_keep, trainer.method.m1_keep)


def test_kl_warmup_only_changes_the_loss_not_the_bounds():
    torch.manual_seed(0)
    m2 = create_method("vae_m2", SMALL["vae_m2"], SPEC).eval()
    b = _batch()
    full, warm = (m2.objective(b.x_l, b.y_l, b.x_u, sample=False, beta=beta) for beta in (1.0, 0.0))
    torch.testing.assert_close(full["neg_U"], warm["neg_U"])
    assert warm["loss"] < full["loss"]


# ------------------------------------------------------------------ methods through the registry
@pytest.mark.parametrize("method,overrides", [
    ("vae_m1", {}), ("vae_m1", {"readout": "knn", "binarize": True, "kl_warmup": 0.5}),
    ("vae_m1", {"readout": "mlp", "arch": "conv", "hidden": [32]}),
    ("vae_m2", {}), ("vae_m2", {"binarize": True, "kl_warmup": 0.5}),
    ("vae_m2", {"prior": "mixture", "labeled_weight": 2.0, "cls_input_noise": 0.1, "cls_weight_decay": 1e-3}),
    ("vae_m2", {"consistency": "fixmatch", "consistency_threshold": 0.2}),  # the hybrid
])
def test_method_trains_and_round_trips(method, overrides, run_config_factory, tiny_data):
    cfg = run_config_factory(method, {**SMALL[method], **overrides})
    trainer = Trainer(cfg, data=tiny_data)
    results = trainer.fit()
    assert 0.0 <= results["test_acc"] <= 1.0
    m = trainer.method.eval()
    x = tiny_data[1].images[:7].float() / 255
    assert m.predict(x).shape == (7, 10)
    assert m.encode(x).dim() == 2 and m.encode(x).shape[0] == 7
    for tag, imgs in m.eval_images(x).items():
        imgs, nrow = imgs if isinstance(imgs, tuple) else (imgs, None)
        assert imgs.dim() == 4 and torch.isfinite(imgs).all() and 0 <= imgs.min() and imgs.max() <= 1, tag
    # save -> load into a fresh method gives the same predictions
    best = safe_torch_load(trainer.run_dir / "best.pt")
    fresh = create_method(method, cfg.method, m.spec)
    fresh.lay_out(cfg.train.channels_last)  # as genssl.runs.run_dir.load_method does: the layout it trained in
    fresh.load_state_dict(best["model"])
    fresh.fit_readout(*_labeled(trainer, tiny_data))
    m.load_state_dict(best["model"])
    m.fit_readout(*_labeled(trainer, tiny_data))
    torch.testing.assert_close(fresh.eval().predict(x), m.predict(x))


def _labeled(trainer, data):
    from genssl.data.split import Split

    split = Split.load(trainer.run_dir / "split.pt")
    return data[0].images[split.labeled].float() / 255, data[0].labels[split.labeled]


def test_m2_train_step_losses_finite_and_decreasing():
    torch.manual_seed(0)
    m2 = create_method("vae_m2", SMALL["vae_m2"], SPEC)
    m2.setup(20)
    b = _batch(b_l=10, b_u=10)
    logs = [m2.train_step(b, i) for i in range(15)]
    assert all(math.isfinite(float(v)) for log in logs for v in log.values())
    assert float(logs[-1]["train/loss"]) < float(logs[0]["train/loss"])


def test_m1_elbo_improves():
    torch.manual_seed(0)
    m1 = create_method("vae_m1", SMALL["vae_m1"], SPEC)
    m1.setup(20)
    b = _batch(b_u=16)
    logs = [m1.train_step(b, i) for i in range(15)]
    assert float(logs[-1]["train/elbo"]) > float(logs[0]["train/elbo"])
    assert m1.encoder_module() is m1.encoder


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_bf16_keeps_the_delicate_outputs_in_fp32(arch):
    # bf16-rounded mu/logvar (M2) and Gaussian means (M1) cost a point of accuracy: they are computed in fp32
    torch.manual_seed(0)
    shape = (1, 28, 28)
    enc = GaussianEncoder(shape, z_dim=4, arch=arch, hidden=(16,), cond_dim=3)
    gauss = Decoder(shape, z_dim=4, arch=arch, hidden=(16,), n_params=2)
    bern = Decoder(shape, z_dim=4, arch=arch, hidden=(16,), n_params=1)
    x, z = torch.rand(5, *shape), torch.randn(5, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mu, logvar = enc.posterior_all(x)
        mean_params, logits = gauss(z), bern(z)
    assert mu.dtype == logvar.dtype == mean_params.dtype == torch.float32
    assert logits.dtype == torch.bfloat16  # M2's largest matmul stays in bf16
    with torch.no_grad():
        torch.testing.assert_close(mean_params, gauss(z), rtol=0.05, atol=0.05)  # same layer, fp32 inputs
