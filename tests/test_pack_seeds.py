"""`genssl compare --pack-seeds`: the seeds of an entry trained in one process with stacked parameters
(genssl.training.stacked) give the runs of the unpacked grid, within the stacked-seed tolerances of
tests/test_multiseed.py, each in its own folder with its own results.json; reuse and resume stay per run folder;
entries that cannot stack, and seeds stopped at different steps, run unpacked and the grid says why."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml

from genssl.cli import build_parser
from genssl.compare.runner import load_grid, pack_runs, run_grid
from genssl.config import ConfigError
from genssl.runs.run_dir import RunDir
from genssl.training.stacked import StackedStep
from test_multiseed import _assert_same_weights, _losses

SEEDS = [3, 7]
TRAIN = {"steps": 8, "batch_size": 32, "labeled_batch_size": 16, "eval_every": 4, "log_every": 1,
         "ckpt_every": 4, "eval_batch_size": 128, "progress": False}


def _grid(tmp_path, methods=None) -> str:
    methods = methods or {"sup": {"method": {"name": "supervised", "dropout": 0.0, "hidden": [64, 32]},
                                  "data": {"dataset": "synthetic", "n_val": 100}}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"out": str(tmp_path / "out"), "overrides": {"train": TRAIN},
                                    "methods": methods, "n_labels": [20], "seeds": SEEDS}, sort_keys=False))
    return str(path)


def test_packed_grid_equals_unpacked(tmp_path, tiny_data, capsys):
    grid = _grid(tmp_path)
    packed = run_grid(grid, out=str(tmp_path / "packed"), data=tiny_data, progress=False, pack_seeds="on")
    assert "sup n_labels=20, seeds 3, 7: packed in one process" in capsys.readouterr().out
    unpacked = run_grid(grid, out=str(tmp_path / "plain"), data=tiny_data, progress=False, pack_seeds="off")
    assert "packed in one process" not in capsys.readouterr().out
    assert packed[0]["seeds"] == unpacked[0]["seeds"] == 2
    assert packed[0]["test_acc_mean"] == pytest.approx(unpacked[0]["test_acc_mean"], abs=2.0)  # percent
    for seed in SEEDS:
        a, b = (RunDir(tmp_path / out / "runs" / f"sup-n20-s{seed}") for out in ("packed", "plain"))
        ra, rb = a.read_results(), b.read_results()
        assert ra["seed"] == rb["seed"] == seed and ra["steps"] == rb["steps"] == TRAIN["steps"]
        assert ra["seeds_trained_together"] == 2 and "seeds_trained_together" not in rb
        assert ra["test_acc"] == pytest.approx(rb["test_acc"], abs=0.02)
        assert ra["best_val_acc"] == pytest.approx(rb["best_val_acc"], abs=1.5 / 100)
        la, lb = _losses(a.path / "tb"), _losses(b.path / "tb")
        np.testing.assert_allclose(la["train/sup_loss"], lb["train/sup_loss"], rtol=1e-4, atol=1e-5)
        _assert_same_weights(a.load_checkpoint("last.pt")["method_state"]["model"],
                             b.load_checkpoint("last.pt")["method_state"]["model"], 8 * 1e-3, f"seed {seed}")
    again = run_grid(grid, out=str(tmp_path / "packed"), data=tiny_data, progress=False, pack_seeds="on")
    assert again == packed and "reusing 2 finished run(s)" in capsys.readouterr().out  # reused per run folder


def test_a_packed_grid_resumes_per_run_folder(tmp_path, tiny_data, monkeypatch, capsys):
    """Stopped before step 6, both seeds keep last.pt at step 4 and resume packed to the uninterrupted end; with
    one seed's folder gone the two stopped at different steps, and run unpacked."""
    grid = _grid(tmp_path)
    full = run_grid(grid, out=str(tmp_path / "full"), data=tiny_data, progress=False, pack_seeds="on")
    real = StackedStep.__call__

    def stop(self, batches, step):
        if step == 6:
            raise KeyboardInterrupt
        return real(self, batches, step)

    with monkeypatch.context() as m:
        m.setattr(StackedStep, "__call__", stop)
        with pytest.raises(KeyboardInterrupt):
            run_grid(grid, out=str(tmp_path / "part"), data=tiny_data, progress=False, pack_seeds="on")
    runs = tmp_path / "part" / "runs"
    assert [RunDir(runs / f"sup-n20-s{s}").load_checkpoint("last.pt")["step"] for s in SEEDS] == [4, 4]
    resumed = run_grid(grid, out=str(tmp_path / "part"), data=tiny_data, progress=False, pack_seeds="on")
    assert resumed[0]["test_acc_mean"] == full[0]["test_acc_mean"]
    for s in SEEDS:
        ra, rb = (RunDir(tmp_path / o / "runs" / f"sup-n20-s{s}").read_results() for o in ("full", "part"))
        assert (ra["test_acc"], ra["best_step"]) == (rb["test_acc"], rb["best_step"])

    _, grid_runs = load_grid(grid, out=str(tmp_path / "mixed"))
    with monkeypatch.context() as m:
        m.setattr(StackedStep, "__call__", stop)
        with pytest.raises(KeyboardInterrupt):
            run_grid(grid, out=str(tmp_path / "mixed"), data=tiny_data, progress=False, pack_seeds="on")
    shutil.rmtree(grid_runs[0].run_dir)
    units, notes = pack_runs(grid_runs, "on")
    assert [len(u) for u in units] == [1, 1]
    assert notes == [f"sup n_labels=20, seeds 3, 7: unpacked, one process each (their checkpoints stopped at "
                     f"different steps (sup-n20-s3: fresh, sup-n20-s7: 4))"]


def test_entries_that_cannot_stack_run_unpacked(tmp_path):
    grid = _grid(tmp_path, {"st": {"method": {"name": "self_training"}, "data": {"dataset": "synthetic"}},
                            "m1": {"method": {"name": "vae_m1"}, "data": {"dataset": "synthetic"}},
                            "pl": {"method": {"name": "supervised"}, "data": {"dataset": "synthetic"}}})
    _, runs = load_grid(grid)
    units, notes = pack_runs(runs, "on")
    assert [[r.name for r in u] for u in units] == [["st-n20-s3"], ["st-n20-s7"], ["m1-n20-s3", "m1-n20-s7"],
                                                    ["pl-n20-s3", "pl-n20-s7"]]
    assert "st n_labels=20, seeds 3, 7: unpacked, one process each (self_training does not support" in notes[0]
    assert pack_runs(runs, "auto")[0] == [[r] for r in runs]  # auto: no CUDA here, one process per run
    assert pack_runs(runs, "off")[0] == [[r] for r in runs]
    # a cluster executor packs what can stack and lets the job decide on its own node
    remote, remote_notes = pack_runs(runs, "auto", decide_in_job=True)
    assert [[r.name for r in u] for u in remote] == [[r.name for r in u] for u in units]
    assert "m1 n_labels=20, seeds 3, 7: one job; stacked if it finds CUDA, else one seed after another" in remote_notes
    with pytest.raises(ConfigError, match="--pack-seeds must be one of auto, on, off"):
        pack_runs(runs, "yes")


def test_cli_flag():
    args = build_parser().parse_args(["compare", "g.yaml", "--pack-seeds", "on"])
    assert args.pack_seeds == "on"
    assert build_parser().parse_args(["compare", "g.yaml"]).pack_seeds == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["compare", "g.yaml", "--pack-seeds", "maybe"])


def test_an_auto_pack_trains_its_seeds_one_after_another_in_a_job_without_cuda(tmp_path, tiny_data, monkeypatch):
    from genssl.compare import runner

    _, runs = load_grid(_grid(tmp_path))
    (unit,), _ = pack_runs(runs, "auto", decide_in_job=True)
    stacked = []
    monkeypatch.setattr(runner, "_train_pack", lambda *a, **k: stacked.append(a) or {})
    outcomes = runner.run_unit(unit, tiny_data, stack="auto")  # this machine has no CUDA
    assert not stacked and sorted(outcomes) == ["sup-n20-s3", "sup-n20-s7"]
    assert all(not reused for _, reused in outcomes.values())
