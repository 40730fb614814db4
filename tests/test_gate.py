"""The atypical-input gate (genssl.methods.detectors, genssl.encoders.density): the feature density against
torch.distributions; the detectors' interface; gate.pt written at the end of training and feature_density.pt by
export, both loaded without the dataset; `genssl predict` flags a noise image and constant black and white images
by default for a tiny trained run of every registered method (M1+M2 included); --gate across runs; --no-gate."""

from __future__ import annotations

import csv
import math
import shutil

import numpy as np
import pytest
import torch

from conftest import tiny_run_config
from genssl import DataSpec, create_method, list_methods
from genssl.cli import main
from genssl.data.folder import decode_files
from genssl.downstream.predict import default_gate, load_predictor
from genssl.encoders.density import (
    DENSITY_FILE,
    GATE_FILE,
    FeatureDensity,
    crossfit_scores,
    load_density,
    read_gate,
)
from genssl.encoders.from_run import export_run
from genssl.encoders.load import load_encoder
from genssl.methods.base import Method
from genssl.methods.detectors import (
    DETECTORS,
    PSEUDO_LABEL_CONFIDENCE,
    RANGE_POOL_IMAGES,
    RANGE_TAIL,
    RANGE_TAIL_MIN_IMAGES,
    InputRange,
    available_detectors,
    default_detector,
    detector_scores,
    fit_feature_density,
    gate_input_range,
    input_statistics,
    range_pool_draw,
    resolve_kind,
)
from genssl.methods.typicality import batch_features, typicality_scores
from genssl.runs.run_dir import RunDir
from genssl.training.trainer import Trainer
from imagefiles import save
from method_recipes import recipe

STEPS = 20


def _train(name: str, root, data, overrides: dict | None = None, run: str | None = None):
    cfg = tiny_run_config(name, root, {**recipe(name), **(overrides or {})},
                          train={"steps": STEPS, "eval_every": 10, "ckpt_every": 10, "device": "cpu"})
    trainer = Trainer(cfg, run_dir=root / (run or name), data=data)
    trainer.fit()
    return trainer.run_dir


# ------------------------------------------------------------------ the feature density
def test_density_is_the_gaussian_mixture_of_torch_distributions():
    g = torch.Generator().manual_seed(0)
    k, d, n = 3, 4, 300
    y = torch.arange(n) % k
    f = torch.randn(n, d, generator=g) * torch.tensor([0.3, 1.0, 3.0, 10.0]) + 3 * torch.eye(k, d)[y]
    density = FeatureDensity.fit(f, y, k)
    assert 0 <= density.shrinkage < 0.05  # N >> D, far from isotropic: the sample covariance needs little shrinkage
    iso = FeatureDensity.fit(torch.randn(n, d, generator=g) + 3 * torch.eye(k, d)[y], y, k)
    assert iso.shrinkage > 0.3  # isotropic: the target is the truth, and Ledoit-Wolf leans on it
    cov = density.cholesky @ density.cholesky.T
    x = torch.randn(7, d, generator=g, dtype=torch.float64)
    per_class = torch.stack([torch.distributions.MultivariateNormal(density.means[j], cov).log_prob(x)
                             for j in range(k)], 1)  # (7, K)
    torch.testing.assert_close(density.class_log_density(x), per_class)
    mix = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(logits=density.log_prior),
                                                torch.distributions.MultivariateNormal(density.means, cov))
    torch.testing.assert_close(density.log_density(x), mix.log_prob(x))
    torch.testing.assert_close(density.log_prior.exp(), torch.full((k,), 1 / k, dtype=torch.float64), atol=1e-6,
                               rtol=0)
    # the pooled within-class covariance, shrunk toward a scaled identity (Ledoit-Wolf)
    dev = f.double() - density.means[y]
    s = dev.T @ dev / n
    a = density.shrinkage
    torch.testing.assert_close(cov, (1 - a) * s + a * torch.trace(s) / d * torch.eye(d, dtype=torch.float64),
                               atol=1e-5, rtol=1e-5)


def test_density_with_more_features_than_images_is_shrunk_and_finite():
    g = torch.Generator().manual_seed(1)
    f, y = torch.randn(30, 64, generator=g), torch.arange(30) % 3
    density = FeatureDensity.fit(f, y, 4)  # class 3 has no images: prior 0
    assert 0.1 < density.shrinkage <= 1 and density.log_prior[3] == -math.inf
    scores = density.log_density(torch.randn(5, 64, generator=g))
    assert bool(torch.isfinite(scores).all())
    # cross-fitted validation scores are lower than in-sample ones (a density favours what it was fitted on)
    fv, yv = torch.randn(40, 64, generator=g), torch.arange(40) % 3
    out = crossfit_scores(f, y, fv, yv, 4)
    inside = FeatureDensity.fit(torch.cat([f, fv]), torch.cat([y, yv]), 4).log_density(fv)
    assert out.shape == (40,) and float(out.mean()) < float(inside.mean())
    with pytest.raises(ValueError, match="non-finite"):
        FeatureDensity.fit(torch.full((4, 2), math.nan), torch.zeros(4, dtype=torch.long), 2)


def test_density_file_round_trip_is_weights_only(tmp_path):
    g = torch.Generator().manual_seed(2)
    f, y = torch.randn(50, 6, generator=g), torch.arange(50) % 5
    density = FeatureDensity.fit(f, y, 5)
    density.save(tmp_path / "d.pt")
    state = torch.load(tmp_path / "d.pt", weights_only=True)
    assert state["means"].shape == (5, 6) and state["cholesky"].shape == (6, 6) and state["dim"] == 6
    back = FeatureDensity.load(tmp_path / "d.pt")
    torch.testing.assert_close(back.log_density(f), density.log_density(f), rtol=0, atol=0)


# ------------------------------------------------------------------ detectors and the input statistics
def test_input_range_is_two_sided():
    g = torch.Generator().manual_seed(3)
    val = (torch.rand(50, 1, 8, 8, generator=g) * 100 + 50).to(torch.uint8)
    rng = InputRange.from_validation(input_statistics(val))
    odd = torch.stack([torch.zeros(1, 8, 8), torch.full((1, 8, 8), 255.0),
                       torch.randint(0, 256, (1, 8, 8), generator=g).float()]).to(torch.uint8)
    outside = rng.outside(odd)
    assert outside["std"][:2].tolist() == [True, True] and outside["mean"][:2].tolist() == [True, True]
    assert bool(outside["std"][2])  # noise over 0..255 spreads more than any validation image
    assert not any(bool(v.any()) for v in rng.outside(val).values())  # min and max: no validation image is outside


def test_input_range_of_many_images_ignores_a_few_odd_ones():
    """From RANGE_TAIL_MIN_IMAGES images on the range is the RANGE_TAIL quantiles, so that one constant image a
    user left in the pool does not let every constant image through; below that, min and max."""
    g = torch.Generator().manual_seed(4)
    typical = (torch.rand(RANGE_TAIL_MIN_IMAGES, 1, 8, 8, generator=g) * 100 + 50).to(torch.uint8)
    black = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    many = InputRange.from_images(torch.cat([typical, black]))
    assert many.tail == RANGE_TAIL and bool(many.outside(black)["std"][0])
    few = InputRange.from_images(torch.cat([typical[:50], black]))
    assert few.tail == 0.0 and not bool(few.outside(black)["std"][0])
    assert len(range_pool_draw(10 * RANGE_POOL_IMAGES)) == RANGE_POOL_IMAGES
    assert torch.equal(range_pool_draw(7), torch.arange(7))
    assert InputRange.from_state(many.state_dict()) == many
    # a gate written before it held a range falls back to the validation images' min and max
    stats = input_statistics(typical[:50])
    assert gate_input_range({"val_stats": stats}) == InputRange.from_validation(stats)


class _NoFeatures(Method):
    name = "no_features"
    has_features = False

    def __init__(self, spec):
        super().__init__(None, spec)
        self.lin = torch.nn.Linear(16, spec.num_classes)

    def predict(self, x):
        return self.lin(x.flatten(1))


def test_pseudo_labeled_density():
    """With pool images the classifier labels with confidence >= PSEUDO_LABEL_CONFIDENCE, the density is fitted on
    the labeled images and those, under their predicted labels, the validation images held out (their scores are
    the density's own); without any, on the labeled and validation images (cross-fitted)."""
    spec = DataSpec((1, 4, 4), 3, 12, 30)
    torch.manual_seed(0)
    method = create_method("supervised", {"hidden": [8]}, spec).eval()
    g = torch.Generator().manual_seed(5)
    x_l, x_v = torch.randint(0, 256, (12, 1, 4, 4), generator=g, dtype=torch.uint8), \
        torch.randint(0, 256, (9, 1, 4, 4), generator=g, dtype=torch.uint8)
    y_l, y_v = torch.arange(12) % 3, torch.arange(9) % 3
    pool = torch.randint(0, 256, (30, 1, 4, 4), generator=g, dtype=torch.uint8)
    f_l, f_v = batch_features(method, x_l, 64), batch_features(method, x_v, 64)
    with torch.no_grad():
        method.net.head.weight.mul_(20)  # confident on some images (8 of 30)
        probs = torch.softmax(method.predict(pool.float() / 255), 1)
    sure = probs.max(1).values >= PSEUDO_LABEL_CONFIDENCE
    assert 0 < int(sure.sum()) < 30
    density, how = fit_feature_density(method, (f_l, y_l), f_v, y_v, pool, 64)
    expected = FeatureDensity.fit(torch.cat([f_l, batch_features(method, pool[sure], 64)]),
                                  torch.cat([y_l, probs.argmax(1)[sure]]), 3)
    torch.testing.assert_close(density.log_density(f_v), expected.log_density(f_v))
    torch.testing.assert_close(density.val_scores, density.log_density(f_v))
    assert how.startswith(f"12 labeled and {int(sure.sum())} of 30 pool images")
    with torch.no_grad():
        method.net.head.weight.mul_(0)  # uniform: no pool image is sure
        method.net.head.bias.zero_()
    _, how = fit_feature_density(method, (f_l, y_l), f_v, y_v, pool, 64)
    assert how == "12 labeled and 9 validation images, the validation scores cross-fitted"


def test_the_default_detector_follows_the_evidence(tmp_path):
    spec = DataSpec((1, 4, 4), 3, 10, 10)
    m1 = {"hidden": [8], "z_dim": 2}
    g = torch.Generator().manual_seed(0)
    density = FeatureDensity.fit(torch.randn(20, 2, generator=g), torch.arange(20) % 3, 3)
    gaussian = create_method("vae_m1", {**m1, "likelihood": "gaussian"}, spec)
    bernoulli = create_method("vae_m1", {**m1, "likelihood": "bernoulli"}, spec)
    assert default_detector(gaussian, density) == "model"  # M1's raw ELBO: the typicality study's best for M1
    assert default_detector(bernoulli, density) == "feature_density"  # measured under a Gaussian decoder only
    vae_m2 = create_method("vae_m2", recipe("vae_m2"), spec)
    assert default_detector(vae_m2, density) == "feature_density"  # its bound fails on digits (Nalisnick et al.)
    assert default_detector(create_method("sgan", recipe("sgan"), spec), density) == "feature_density"
    assert default_detector(create_method("supervised", {"hidden": [8]}, spec), None) == "max_softmax"  # no density
    assert default_detector(_NoFeatures(spec), None) == "max_softmax"
    assert set(available_detectors(_NoFeatures(spec))) == {"max_softmax", "energy"}
    assert resolve_kind("confidence", bernoulli) == "max_softmax" and resolve_kind("elbo", bernoulli) == "model"
    with pytest.raises(ValueError, match="unknown detector 'nope'; choose one of .*feature_density"):
        resolve_kind("nope", bernoulli)
    with pytest.raises(ValueError, match="no ELBO"):
        detector_scores("elbo_complexity", create_method("sgan", recipe("sgan"), spec),
                        torch.zeros(2, 1, 4, 4, dtype=torch.uint8))


def test_every_detector_scores_higher_for_typical_in_its_own_units(tiny_data):
    """Each detector the method has returns (N,) finite float64 scores, repeatably, and energy is the logits'
    log-sum-exp."""
    spec = DataSpec((1, 28, 28), 10, 20, 100)
    torch.manual_seed(0)
    m = create_method("vae_m2", recipe("vae_m2"), spec)
    x = tiny_data[0].images[:40]
    f = batch_features(m, x, 16)
    density = FeatureDensity.fit(f, tiny_data[0].labels[:40], 10)
    names = available_detectors(m, density)
    assert set(names) == set(DETECTORS.names())
    for name in names:
        s = detector_scores(name, m, x[:9], density, batch_size=4)
        assert s.shape == (9,) and s.dtype == torch.float64 and bool(torch.isfinite(s).all()), name
        torch.testing.assert_close(detector_scores(name, m, x[:9], density, batch_size=4), s)
    with torch.no_grad():
        m.eval()
        energy = torch.logsumexp(m.predict(x[:9].float() / 255), 1).double()
    torch.testing.assert_close(detector_scores("energy", m, x[:9], density), energy)
    torch.testing.assert_close(detector_scores("model", m, x[:9], density), typicality_scores(m, x[:9]))


# ------------------------------------------------------------------ gate.pt and the export's density
@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("gate-runs")
    return {"supervised": _train("supervised", root, tiny_data),
            "vae_m1": _train("vae_m1", root, tiny_data, {"likelihood": "gaussian"})}


def test_gate_is_written_at_the_end_of_training_and_read_without_the_dataset(runs, tiny_data, monkeypatch,
                                                                              tmp_path):
    monkeypatch.setenv("GENSSL_DATA", str(tmp_path / "nowhere"))  # the synthetic dataset has no files anyway
    run = runs["supervised"]
    state = torch.load(run / GATE_FILE, weights_only=True)
    best = torch.load(run / RunDir.BEST, weights_only=True)
    assert state["step"] == best["step"] and state["n_val"] == 100 and state["default"] == "feature_density"
    assert set(state["val_scores"]) == {"max_softmax", "energy", "feature_density"}
    assert set(state["val_stats"]) == {"mean", "std", "bits"}
    predictor = load_predictor(run)
    density = load_density(run)
    assert density.means.shape == (10, 64) and density.cholesky.shape == (64, 64)  # recipe: one hidden layer of 64
    split = RunDir(run).read_split()
    val = tiny_data[0].images[split.val]
    f = batch_features(predictor.method, val, 128)
    # no pool image is labeled with confidence >= 0.95 by this 6-step run, so the density is fitted on the labeled
    # and validation images' features of best.pt (test_pseudo_labeled_density covers the pool's fit)
    assert state["density_fit"].endswith("validation scores cross-fitted")
    lab = split.labeled
    refit = FeatureDensity.fit(torch.cat([batch_features(predictor.method, tiny_data[0].images[lab], 128), f]),
                               torch.cat([tiny_data[0].labels[lab], tiny_data[0].labels[split.val]]), 10)
    torch.testing.assert_close(refit.log_density(f), density.log_density(f), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(density.val_scores, state["val_scores"]["feature_density"])
    # the stored validation scores are the detectors' scores of those images
    torch.testing.assert_close(state["val_scores"]["energy"], detector_scores("energy", predictor.method, val, None,
                                                                              128))
    flag, why = default_gate(predictor, run)
    assert why is None and flag.kind == "feature_density"
    n = density.val_scores.numel()  # the conformal cut: too few images for 1%, so the lowest, flagging 1/(n+1)
    assert flag.threshold == float(density.val_scores.min()) and flag.expected_rate == pytest.approx(1 / (n + 1))
    assert f"expected to flag {100 / (n + 1):.1f}% of in-distribution images" in flag.describe()
    # the input range reads the validation images and the pool (no labels needed), not the validation images alone
    pool = tiny_data[0].images[split.unlabeled[range_pool_draw(len(split.unlabeled))]]
    expected = InputRange.from_images(torch.cat([val, pool]))
    assert flag.input_range.lo == pytest.approx(expected.lo) and flag.input_range.hi == pytest.approx(expected.hi)
    assert flag.input_range.lo["std"] <= InputRange.from_validation(input_statistics(val)).lo["std"]
    m1 = read_gate(runs["vae_m1"])
    assert m1["default"] == "model" and {"model", "elbo_complexity"} <= set(m1["val_scores"])


def test_export_writes_the_density_beside_the_encoder(runs, tiny_data, tmp_path, capsys):
    run = runs["supervised"]
    out = export_run(run, tmp_path / "enc", data=tiny_data)
    state = torch.load(out / DENSITY_FILE, weights_only=True)
    assert state["format"] == "genssl-feature-density" and state["dim"] == 64
    exported, gate = load_density(out), load_density(run)
    encoder = load_encoder(out)
    x = tiny_data[1].images[:20]
    with torch.no_grad():
        feats = encoder(x.float() / 255).double()
    torch.testing.assert_close(exported.log_density(feats), gate.log_density(feats), rtol=0, atol=0)
    torch.testing.assert_close(feats, batch_features(load_predictor(run).method, x))  # the same features
    # another checkpoint: fitted at export on its own features (the dataset given, or readable)
    last = export_run(run, tmp_path / "last", checkpoint=RunDir.LAST, data=tiny_data)
    assert load_density(last).val_scores.shape == (100,)
    # the CLI says whether the export has one: this run's synthetic dataset cannot be read, but gate.pt fits best.pt
    assert main(["export", str(run), "--out", str(tmp_path / "cli")]) == 0
    assert "with its feature density" in capsys.readouterr().out and (tmp_path / "cli" / DENSITY_FILE).is_file()
    old = tmp_path / "old-run"  # a run trained before gates, its dataset unreadable: the encoder alone
    shutil.copytree(run, old)
    (old / GATE_FILE).unlink()
    assert main(["export", str(old), "--out", str(tmp_path / "cli-old")]) == 0
    assert "without a feature density" in capsys.readouterr().err
    assert not (tmp_path / "cli-old" / DENSITY_FILE).exists()
    # --force over an export with a density, from a run without one, leaves no stale density
    assert main(["export", str(old), "--out", str(tmp_path / "cli"), "--force"]) == 0
    assert not (tmp_path / "cli" / DENSITY_FILE).exists()


# ------------------------------------------------------------------ genssl predict's default gate, every method
def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory, tiny_data):
    """PNG files: uniform noise, a black and a white image, and four of the test set's images."""
    folder = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(0)
    save(rng.integers(0, 256, (28, 28), dtype=np.uint8), folder / "noise.png")
    save(np.zeros((28, 28), np.uint8), folder / "black.png")
    save(np.full((28, 28), 255, np.uint8), folder / "white.png")
    for i in range(4):
        save(tiny_data[1].images[i, 0].numpy(), folder / f"typical{i}.png")
    return folder


@pytest.fixture(scope="module")
def m1_upstream(tiny_data, tmp_path_factory):
    return _train("vae_m1", tmp_path_factory.mktemp("m1-upstream"), tiny_data, run="m1")


CASES = [*list_methods(), "m1+m2"]


@pytest.mark.parametrize("case", CASES)
def test_predict_flags_noise_and_constant_images_by_default(case, tiny_data, odd_images, tmp_path, request, capsys):
    if case == "m1+m2":  # M2 on a frozen M1's latents: the M1 run comes first
        run = _train("vae_m2", tmp_path, tiny_data, {"encoder": str(request.getfixturevalue("m1_upstream"))},
                     run="m1m2")
    else:
        run = _train(case, tmp_path, tiny_data)
    assert (run / GATE_FILE).is_file()
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(odd_images), "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "atypical = " in err and "or an input statistic outside its range (the min and max of" in err
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in _rows(out)}
    assert list(next(iter(rows.values())))[-3:] == ["typicality", "atypical", "atypical_by"]
    for name in ("noise.png", "black.png", "white.png"):
        assert rows[name]["atypical"] == "1", f"{case}: {name} not flagged ({rows[name]})"
    # the input statistics flag them whatever the learned score says
    assert "std" in rows["black.png"]["atypical_by"].split("+") and "std" in rows["white.png"]["atypical_by"].split("+")
    assert "bits" in rows["noise.png"]["atypical_by"].split("+")
    typical = [rows[f"typical{i}.png"] for i in range(4)]
    assert sum(r["atypical"] == "1" for r in typical) <= 2, f"{case}: {typical}"
    for r in typical:
        assert (r["atypical"] == "1") == bool(r["atypical_by"]) and math.isfinite(float(r["typicality"]))


# ------------------------------------------------------------------ --gate, --no-gate, runs without a gate
def test_gate_across_runs(runs, odd_images, tmp_path, capsys):
    classifier_run, m1 = runs["supervised"], runs["vae_m1"]
    out = tmp_path / "p.csv"
    assert main(["predict", str(classifier_run), str(odd_images), "--gate", str(m1), "--out", str(out),
                 "--no-progress"]) == 0
    assert f"of run {m1}'s 100 validation images" in capsys.readouterr().err
    rows = _rows(out)
    m1_pred = load_predictor(m1)
    flag, _ = default_gate(m1_pred, m1)
    assert flag.kind == "model"
    images, _ = decode_files([r["path"] for r in rows], (28, 28), 1, False, "")
    expected, flagged, _ = flag.check(images, 128)
    for r, s, a in zip(rows, expected.tolist(), flagged.tolist()):
        assert float(r["typicality"]) == pytest.approx(s, rel=1e-6) and r["atypical"] == str(int(a))
    # the predictions are still the predicting run's
    own = _rows_of(classifier_run, odd_images, tmp_path, "--no-gate")
    assert [r["class"] for r in own] == [r["class"] for r in rows]
    # with KIND: the other run's detector alone
    assert main(["predict", str(classifier_run), str(odd_images), "--gate", str(m1), "--flag-atypical=elbo",
                 "--out", str(out), "--no-progress"]) == 0
    assert "atypical = elbo below" in capsys.readouterr().err
    rows = _rows(out)
    assert list(rows[0])[-2:] == ["typicality", "atypical"]
    torch.testing.assert_close(torch.tensor([float(r["typicality"]) for r in rows], dtype=torch.float64),
                               typicality_scores(m1_pred.method, images, 128), rtol=1e-6, atol=1e-3)


def _rows_of(run, images, tmp_path, *extra):
    out = tmp_path / "own.csv"
    assert main(["predict", str(run), str(images), "--out", str(out), "--no-progress", *extra]) == 0
    return _rows(out)


def test_no_gate_and_a_run_without_a_gate(runs, odd_images, tmp_path, capsys):
    run = runs["supervised"]
    rows = _rows_of(run, odd_images, tmp_path, "--no-gate")
    assert list(rows[0]) == ["path", "class", "probability", "class_2", "probability_2", "class_3", "probability_3"]
    assert main(["predict", str(run), str(odd_images), "--no-gate", "--flag-atypical=energy"]) == 1
    assert "--no-gate turns the typicality columns off" in capsys.readouterr().err
    # --flag-atypical=feature_density from gate.pt, no dataset
    rows = _rows_of(run, odd_images, tmp_path, "--flag-atypical=feature_density")
    assert list(rows[0])[-2:] == ["typicality", "atypical"] and "atypical = feature_density below" in \
        capsys.readouterr().err
    # a run trained before gates: predictions without the columns, and a line saying why
    moved = tmp_path / "old"
    shutil.copytree(run, moved)
    (moved / GATE_FILE).unlink()
    rows = _rows_of(moved, odd_images, tmp_path)
    assert "typicality" not in rows[0] and f"no gate: {moved} has no gate.pt" in capsys.readouterr().err
