"""Every config and grid in experiments/ loads and validates without its dataset (MNIST, SVHN, CIFAR-10 are not
here), and every method in them builds at its real size; and the CLI's `methods`, `compare` and
`train --seeds` run on a tiny IDX dataset written into a temporary root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from datafiles import write_idx_dataset
from genssl import DataSpec, create_method, list_methods
from genssl.cli import main
from genssl.compare.grid import load_grid
from genssl.config import RunConfig, build_run_config, load_run_config
from genssl.data.datasets import allows_hflip
from genssl.registry import get_method_class

REPO = Path(__file__).resolve().parent.parent
NOT_RUN_CONFIGS = {"demo_reference.yaml"}  # the demo's table of full-schedule figures, not a config
EXPERIMENTS = sorted(p for p in (REPO / "experiments").rglob("*.yaml") if p.name not in NOT_RUN_CONFIGS)
GRIDS = [p for p in EXPERIMENTS if "methods" in (yaml.safe_load(p.read_text()) or {})]
CONFIGS = [p for p in EXPERIMENTS if p not in GRIDS]
IMAGE_SHAPES = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32), "svhn": (3, 32, 32)}


@pytest.fixture(autouse=True)
def no_datasets_anywhere(tmp_path, monkeypatch):
    """Nothing to find in any root the loaders search, and no download: configs must not need their data."""
    import genssl.data.datasets as ds

    monkeypatch.setenv("GENSSL_DATA", str(tmp_path / "no-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "no-cache"))
    monkeypatch.setattr(ds, "DEBIAN_ROOT", tmp_path / "no-debian")


@pytest.fixture(scope="module")
def m1_stand_in(tmp_path_factory):
    """A tiny exported M1 encoder that stands in for the M1 runs the M1+M2 configs name (not trained here)."""
    import torch

    from genssl.encoders.format import export_encoder
    from genssl.nn.vae import GaussianEncoder

    torch.manual_seed(0)
    return str(export_encoder(GaussianEncoder((1, 28, 28), 10, "mlp", (16,)), tmp_path_factory.mktemp("m1") / "enc",
                              input_shape=(1, 28, 28)))


def _spec(cfg: RunConfig) -> DataSpec:
    d = cfg.data
    if d.dataset == "folder":
        size = d.image_size if isinstance(d.image_size, list) else [d.image_size] * 2
        shape = (d.channels, *size)
    else:
        assert d.dataset in IMAGE_SHAPES, f"add dataset {d.dataset!r} to IMAGE_SHAPES in {__file__}"
        shape = IMAGE_SHAPES[d.dataset]
    return DataSpec(shape, 10, d.n_labels, 50_000, allows_hflip(d.dataset))


def _build(cfg: RunConfig, m1: str, where: str) -> None:
    """The method at its configured size (what `genssl train` builds before touching data); an M1+M2 config's
    `encoder` (a run made by another config) is replaced by a stand-in M1 encoder."""
    method_cfg = cfg.method
    if getattr(method_cfg, "encoder", None) is not None:
        from dataclasses import replace

        method_cfg = replace(method_cfg, encoder=m1)
    try:
        create_method(cfg.method_name, method_cfg, _spec(cfg))
    except ValueError as e:
        pytest.fail(f"{where}: method {cfg.method_name!r} does not build: {e}")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_experiment_config_loads_validates_and_builds(path, m1_stand_in):
    cfg = load_run_config(path)
    assert cfg.method_name in list_methods()
    assert build_run_config(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))).to_dict() == cfg.to_dict()
    _build(cfg, m1_stand_in, path.name)


@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.name)
def test_every_experiment_grid_loads_validates_and_builds(path, m1_stand_in):
    out_dir, runs = load_grid(path)
    assert runs, f"{path.name} has no runs"
    names = [r.name for r in runs]
    assert len(set(names)) == len(names), f"{path.name}: two runs share a folder"
    by_name = {r.name: r for r in runs}
    built = set()
    for run in runs:
        for dep in run.deps:  # ordered after what it needs
            assert names.index(dep) < names.index(run.name), f"{path.name}: {run.name} runs before {dep}"
        if run.samples is not None:
            (source,) = run.deps
            cls = get_method_class(by_name[source].raw["method"]["name"])
            assert cls.can_sample, f"{path.name}: {run.name} draws samples from {source}, whose method cannot sample"
            if run.samples.label_source == "conditional":
                assert cls.can_sample_conditional, f"{path.name}: {run.name} needs class-conditional samples"
            continue
        cfg = build_run_config(run.raw)
        key = json.dumps([cfg.method_name, cfg.to_dict()["method"], cfg.data.dataset], sort_keys=True, default=str)
        if key not in built:  # a table repeats each config over label counts and seeds
            built.add(key)
            _build(cfg, m1_stand_in, f"{path.name}: {run.name}")


def test_the_split_between_configs_and_grids():
    assert {"demo.yaml", "table_fmnist.yaml"} <= {p.name for p in GRIDS}
    assert {"fmnist_supervised.yaml", "fmnist_sgan.yaml"} <= {p.name for p in CONFIGS}
    assert len(EXPERIMENTS) == len(GRIDS) + len(CONFIGS) >= 20


# ---------------------------------------------------------------------------------------------- the CLI

@pytest.fixture
def idx_root(tmp_path):
    root = tmp_path / "data"
    write_idx_dataset(root / "fashion-mnist", n_train=300, n_test=100)
    return root


TINY_TRAIN = {"steps": 4, "batch_size": 16, "labeled_batch_size": 10, "eval_every": 2, "log_every": 2,
              "ckpt_every": 2, "eval_batch_size": 100, "progress": False, "threads": 1}


def test_cli_methods_lists_the_registry(capsys):
    assert main(["methods"]) == 0
    assert capsys.readouterr().out.split() == list_methods()


def test_cli_compare_runs_a_tiny_grid(idx_root, tmp_path, capsys):
    data = {"dataset": "fashion_mnist", "n_val": 50, "download": False}
    grid = {"out": str(tmp_path / "out"), "overrides": {"train": TINY_TRAIN}, "n_labels": [20], "seeds": [0],
            "methods": {"sup": {"method": {"name": "supervised", "hidden": [32]}, "data": data},
                        "gan": {"method": {"name": "sgan", "d_hidden": [32, 16], "g_hidden": [16], "z_dim": 8,
                                           "n_samples": 10}, "data": data}}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    assert main(["compare", str(path), f"--data.root={idx_root}"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    for name in ("sup", "gan"):
        res = json.loads((tmp_path / "out" / "runs" / f"{name}-n20-s0" / "results.json").read_text())
        assert res["steps"] == 4 and res["dataset"] == "fashion_mnist"
        assert f"| {name} | 20 | {100 * res['test_acc']:.2f} | 1 |" in printed, printed
    assert (tmp_path / "out" / "results.md").is_file()


@pytest.mark.parametrize("method, together", [("sgan", True), ("self_training", False)])
def test_cli_train_seeds_then_resume(idx_root, tmp_path, capsys, method, together):
    small = {"sgan": {"d_hidden": [32, 16], "g_hidden": [16], "z_dim": 8, "n_samples": 10},
             "self_training": {"hidden": [32]}}[method]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"method": {"name": method, **small},
                                   "data": {"dataset": "fashion_mnist", "n_labels": 20, "n_val": 50,
                                            "download": False}, "train": TINY_TRAIN}))
    base = ["train", str(cfg), "--seeds", "0,1", "--stack", "on", "--run-dir", str(tmp_path / "runs"),
            f"--data.root={idx_root}"]
    assert main(base) == 0, capsys.readouterr().err
    results = json.loads(capsys.readouterr().out)
    assert [r["seed"] for r in results] == [0, 1] and [r["steps"] for r in results] == [4, 4]
    assert all(("seeds_trained_together" in r) == together for r in results)
    for s in (0, 1):
        assert json.loads((tmp_path / "runs" / f"s{s}" / "results.json").read_text())["seed"] == s
    assert main([*base, "--resume", "--train.steps=6"]) == 0, capsys.readouterr().err
    resumed = json.loads(capsys.readouterr().out)
    assert [r["steps"] for r in resumed] == [6, 6]
    assert all(r["resume_overrides"] == {"train.steps": [4, 6]} for r in resumed)
