"""data.filter_run: the unlabeled pool filtered by a finished run's typicality score keeps exactly the images it
reports, no labeled, validation or test image is touched, and a filter run trained on another split is refused;
data.filter_score takes every detector (the feature density from gate.pt or fitted now), and one the filter run
cannot have is refused naming the run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import tiny_run_config
from genssl import Trainer
from genssl import ConfigError
from genssl.encoders.density import GATE_FILE, read_gate
from genssl.encoders.from_run import method_from_run
from genssl.methods.detectors import detector_kinds
from genssl.methods.typicality import score_images, threshold_from_validation
from genssl.runs.run_dir import RunDir

DATA = {"classes": [0, 1, 2, 3, 4], "n_unlabeled": 200, "mismatch": 0.5, "n_val": 40, "n_labels": 10}


@pytest.fixture(scope="module")
def filter_run(tiny_data, tmp_path_factory):
    """A small M1 trained on the mismatched pool: the filter."""
    out = tmp_path_factory.mktemp("filter")
    cfg = tiny_run_config("vae_m1", out, {"hidden": [64], "z_dim": 8, "readout": "linear"}, data=DATA,
                          train={"steps": 20, "eval_every": 10, "ckpt_every": 10})
    Trainer(cfg, run_dir=out / "m1", data=tiny_data).fit()
    return out / "m1"


def test_the_filter_keeps_exactly_what_it_reports(tiny_data, tmp_path, filter_run):
    cfg = tiny_run_config("supervised", tmp_path, {"hidden": [32]},
                          data={**DATA, "filter_run": str(filter_run), "filter_quantile": 0.1})
    trainer = Trainer(cfg, run_dir=tmp_path / "r", data=tiny_data)
    res = trainer.fit()
    report = res["filter"]
    assert report == json.loads((tmp_path / "r" / "filter.json").read_text())
    assert report["same_pool"] and report["score"] == "elbo" and report["detector"] == "model" and report["pool"] == 210
    assert report["scored"] == 200 and report["kept"] + report["dropped"] == 200
    split = RunDir(tmp_path / "r").read_split()
    assert len(split.unlabeled) == report["kept"] + report["labeled_kept"] == res["n_unlabeled"]
    assert set(split.labeled.tolist()) <= set(split.unlabeled.tolist())  # labeled images always stay
    source = RunDir(filter_run).read_split()  # labeled and validation images are the filter run's own
    assert torch.equal(split.labeled, source.labeled) and torch.equal(split.val, source.val)
    assert set(split.unlabeled.tolist()) <= set(source.unlabeled.tolist())
    # the counts it reports are the counts it kept: recompute them from the filter's scores
    train = trainer.lanes[0].batcher.images
    labels = trainer.lanes[0].batcher.labels
    method, _, _ = method_from_run(filter_run)
    threshold = threshold_from_validation(score_images(method, train[split.val]).float(), 0.1)
    assert threshold == pytest.approx(report["threshold"])
    lab = set(source.labeled.tolist())  # in the filter's order: a stochastic bound's noise is seeded per batch
    candidates = torch.tensor([i for i in source.unlabeled.tolist() if i not in lab])
    keep = score_images(method, train[candidates]).float() >= threshold
    assert set(candidates[keep].tolist()) == set(split.unlabeled.tolist()) - set(split.labeled.tolist())
    out_of_task = labels[candidates] >= 5
    assert report["out_of_task_scored"] == int(out_of_task.sum()) == 100
    assert report["out_of_task_kept"] == int((out_of_task & keep).sum())


def test_a_resumed_filtered_run_keeps_its_saved_pool(tiny_data, tmp_path, filter_run):
    cfg = tiny_run_config("supervised", tmp_path, {"hidden": [32]}, data={**DATA, "filter_run": str(filter_run)})
    first = Trainer(cfg, run_dir=tmp_path / "r", data=tiny_data).fit()
    (tmp_path / "r" / "results.json").unlink()
    again = Trainer(cfg, run_dir=tmp_path / "r", data=tiny_data, resume=True).fit()
    assert again["filter"] == first["filter"] and again["n_unlabeled"] == first["n_unlabeled"]


@pytest.fixture(scope="module")
def classifier_run(tiny_data, tmp_path_factory):
    """A small supervised MLP on the same split: a filter without a generative score."""
    out = tmp_path_factory.mktemp("classifier")
    Trainer(tiny_run_config("supervised", out, {"hidden": [32]}, data=DATA), run_dir=out / "sup", data=tiny_data).fit()
    return out / "sup"


def _filtered(tiny_data, root, run_name, filter_run, **data):
    """(report, the kept pool images) of a tiny supervised run whose pool `filter_run` filters."""
    cfg = tiny_run_config("supervised", root, {"hidden": [32]}, data={**DATA, "filter_run": str(filter_run), **data},
                          train={"steps": 2})
    res = Trainer(cfg, run_dir=root / run_name, data=tiny_data).fit()
    split = RunDir(root / run_name).read_split()
    return res["filter"], set(split.unlabeled.tolist()) - set(split.labeled.tolist())


def test_a_classifier_run_filters_by_confidence_only(tiny_data, tmp_path, classifier_run):
    with pytest.raises(ValueError, match=r"data.filter_run='.*sup', data.filter_score: model: supervised has no "
                                         r"generative model.*this supervised run has \(energy, feature_density, "
                                         r"max_softmax; confidence is max_softmax\)"):
        _filtered(tiny_data, tmp_path, "a", classifier_run)
    report, kept = _filtered(tiny_data, tmp_path, "b", classifier_run, filter_score="confidence")
    assert report["score"] == report["detector"] == "max_softmax" and report["kept"] + report["dropped"] == 200
    # confidence is max_softmax's older name: the same filter, image for image
    again, kept_again = _filtered(tiny_data, tmp_path, "c", classifier_run, filter_score="max_softmax")
    assert kept_again == kept and {**again, "cost_s": 0} == {**report, "cost_s": 0}


def test_a_detector_the_filter_run_cannot_have_is_refused_naming_it(tiny_data, tmp_path, classifier_run):
    with pytest.raises(ValueError, match=r"data.filter_run='.*sup', data.filter_score: elbo_complexity: supervised "
                                         r"has no ELBO.*with a run of a method that has elbo_complexity"):
        _filtered(tiny_data, tmp_path, "r", classifier_run, filter_score="elbo_complexity")
    assert not (tmp_path / "r" / "filter.json").exists()
    with pytest.raises(ConfigError, match=r"data.filter_score: 'mahalanobis' is not one of "
                                          + ", ".join(detector_kinds() + ["two_sided"])):
        tiny_run_config("supervised", tmp_path, data={**DATA, "filter_score": "mahalanobis"})


def test_the_feature_density_filter_keeps_most_in_task_images(tiny_data, tmp_path, filter_run):
    """M1's latent density, from its gate.pt (of best.pt's step) and refitted where there is none: the same
    filter; its threshold is the gate's cross-fitted validation scores', so about 1 - quantile of the in-task
    pool images pass."""
    report, kept = _filtered(tiny_data, tmp_path, "r", filter_run, filter_score="feature_density",
                             filter_quantile=0.2)
    assert report["detector"] == report["score"] == "feature_density" and report["density"].startswith(GATE_FILE)
    gate = read_gate(filter_run)
    assert report["threshold"] == threshold_from_validation(gate["val_scores"]["feature_density"], 0.2)
    in_task = report["scored"] - report["out_of_task_scored"]
    share = (report["kept"] - report["out_of_task_kept"]) / in_task
    assert 0.65 <= share <= 0.95, share  # 1 - 0.2, within the noise of 100 images and 40 validation ones
    no_gate = tmp_path / "no_gate"
    shutil.copytree(filter_run, no_gate)
    (no_gate / GATE_FILE).unlink()
    refit, kept_refit = _filtered(tiny_data, tmp_path, "refit", no_gate, filter_score="feature_density",
                                  filter_quantile=0.2)
    assert refit["density"].startswith("fitted now on ") and "(no gate.pt" in refit["density"]
    assert kept_refit == kept and refit["threshold"] == pytest.approx(report["threshold"])


def test_two_sided_keeps_the_band_around_the_validation_median(tiny_data, tmp_path, filter_run):
    cfg = tiny_run_config("supervised", tmp_path, {"hidden": [32]},
                          data={**DATA, "filter_run": str(filter_run), "filter_score": "two_sided",
                                "filter_quantile": 0.2})
    trainer = Trainer(cfg, run_dir=tmp_path / "r", data=tiny_data)
    report = trainer.fit()["filter"]
    assert report["score"] == "elbo, two-sided" and report["kept"] + report["dropped"] == 200
    split, source = RunDir(tmp_path / "r").read_split(), RunDir(filter_run).read_split()
    method, _, _ = method_from_run(filter_run)
    images = trainer.lanes[0].batcher.images
    val = score_images(method, images[split.val]).float()
    lab = set(source.labeled.tolist())
    candidates = torch.tensor([i for i in source.unlabeled.tolist() if i not in lab])
    distance = (score_images(method, images[candidates]).float() - val.median()).abs()
    kept = set(split.unlabeled.tolist()) - set(split.labeled.tolist())
    band = threshold_from_validation(-(val - val.median()).abs(), 0.2)
    assert kept == set(candidates[-distance >= band].tolist())  # high and low outliers both dropped


@pytest.mark.parametrize("data, train, match", [
    ({}, {"seed": 1}, r"another split than this run's: split seed 0 there, 1 here; its labeled images \(as many, "
                      r"other ones\), val images \(as many, other ones\), unlabeled images \(as many, other ones\)"),
    ({"n_val": 50}, {}, r"val images \(40 there, 50 here\)"),
    ({"mismatch_mode": "add"}, {}, r"its unlabeled images \(210 there, 410 here\) differ\. Its data section: .*"
                                   r"mismatch_mode='replace'"),
])
def test_a_filter_run_on_another_split_is_refused(tiny_data, tmp_path, filter_run, data, train, match):
    """The filter run (seed 0, DATA) against a run of another seed, validation size or pool: refused before any
    image is scored, naming what differs and the filter run's data section."""
    cfg = tiny_run_config("supervised", tmp_path, {"hidden": [32]},
                          data={**DATA, **data, "filter_run": str(filter_run)}, train=train)
    with pytest.raises(ValueError, match=match):
        Trainer(cfg, run_dir=tmp_path / "r", data=tiny_data).fit()
    assert not (tmp_path / "r" / "filter.json").exists()
