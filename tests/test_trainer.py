import json

import pytest
import torch

from genssl import Trainer
from genssl.fileio import CheckpointError, safe_torch_load
from genssl.methods.supervised import Supervised
from genssl.data.split import Split


def _scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_run_folder_and_tensorboard_tags(run_config_factory, tiny_data):
    cfg = run_config_factory("supervised")
    trainer = Trainer(cfg, data=tiny_data)
    results = trainer.fit()
    d = trainer.run_dir
    for name in ("config.yaml", "split.pt", "last.pt", "best.pt", "results.json"):
        assert (d / name).is_file(), name
    assert json.loads((d / "results.json").read_text())["test_acc"] == results["test_acc"]
    for key in ("test_acc", "best_val_acc", "steps", "wall_time_s", "device", "seed"):
        assert key in results
    tags = _scalars(d)
    assert tags["train/sup_loss"] == [2, 3, 4, 6]  # log_every=2, plus a flush before the evaluation at 3
    assert tags["val/acc"] == [3, 6]            # eval_every=3


def test_interrupted_run_resumes_from_the_saved_step(run_config_factory, tiny_data, monkeypatch):
    cfg = run_config_factory("supervised", train={"steps": 9, "ckpt_every": 3})
    original = Supervised.train_step
    seen = []

    def interrupt_at_5(self, batch, step):
        seen.append(step)
        if step == 5:
            raise KeyboardInterrupt
        return original(self, batch, step)

    monkeypatch.setattr(Supervised, "train_step", interrupt_at_5)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, data=tiny_data).fit()
    run_dir = Trainer(cfg).run_dir
    assert safe_torch_load(run_dir / "last.pt")["step"] == 3
    split_before = Split.load(run_dir / "split.pt")

    (run_dir / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # as a kill during a save leaves
    seen.clear()
    monkeypatch.setattr(Supervised, "train_step", lambda self, b, s: (seen.append(s), original(self, b, s))[1])
    results = Trainer(cfg, data=tiny_data, resume=True).fit()
    assert seen == list(range(3, 9)), "the resumed run must start at the checkpoint's step"
    assert not list(run_dir.glob(".*.tmp")), "stale temporary files are cleaned up on resume"
    assert results["steps"] == 9
    assert torch.equal(Split.load(run_dir / "split.pt").labeled, split_before.labeled)
    assert _scalars(run_dir)["val/acc"] == [3, 6, 9]  # no duplicated step from the interrupted process


def test_compatible_override_is_allowed_and_recorded(run_config_factory, tiny_data):
    cfg = run_config_factory("supervised", train={"steps": 6})
    Trainer(cfg, data=tiny_data).fit()
    longer = run_config_factory("supervised", train={"steps": 9, "eval_every": 1})
    results = Trainer(longer, data=tiny_data, resume=True).fit()
    assert results["steps"] == 9
    assert results["resume_overrides"] == {"train.steps": [6, 9], "train.eval_every": [3, 1]}
    run_dir = Trainer(cfg).run_dir
    assert json.loads((run_dir / "results.json").read_text())["resume_overrides"]["train.steps"] == [6, 9]
    assert safe_torch_load(run_dir / "last.pt")["step"] == 9
    assert "steps: 9" in (run_dir / "config.yaml").read_text()


def test_resume_with_another_method_is_refused(run_config_factory, tiny_data):
    cfg = run_config_factory("supervised")
    Trainer(cfg, data=tiny_data).fit()
    other = run_config_factory("pseudo_label")
    with pytest.raises(CheckpointError, match="checkpoint is from method 'supervised', but the config asks for "
                                              "'pseudo_label'"):
        Trainer(other, run_dir=Trainer(cfg).run_dir, data=tiny_data, resume=True).fit()


@pytest.mark.parametrize("change, match", [
    ({"method_overrides": {"lr": 0.01}}, r"method.lr: 0.001 -> 0.01"),
    ({"train": {"seed": 1}}, r"train.seed: 0 -> 1"),
    ({"data": {"n_labels": 30}}, r"data.n_labels: 20 -> 30"),
])
def test_resume_with_incompatible_config_is_refused(run_config_factory, tiny_data, change, match):
    cfg = run_config_factory("supervised")
    trainer = Trainer(cfg, data=tiny_data)
    trainer.fit()
    before = (trainer.run_dir / "last.pt").read_bytes()
    changed = run_config_factory("supervised", **change)
    with pytest.raises(CheckpointError, match=match) as err:
        Trainer(changed, run_dir=trainer.run_dir, data=tiny_data, resume=True).fit()
    assert "Only " in str(err.value) and "train.steps" in str(err.value)
    assert (trainer.run_dir / "last.pt").read_bytes() == before, "a refused resume must not touch the run"


def test_resume_without_checkpoint_and_fresh_run_over_existing(run_config_factory, tiny_data):
    cfg = run_config_factory("supervised", train={"steps": 3})
    with pytest.raises(FileNotFoundError, match="--resume: no checkpoint at .*last.pt"):
        Trainer(cfg, data=tiny_data, resume=True).fit()
    Trainer(cfg, data=tiny_data).fit()
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume"):
        Trainer(cfg, data=tiny_data).fit()


def test_resume_adopts_a_best_checkpoint_newer_than_last(run_config_factory, tiny_data):
    """Killed after writing best.pt at step 6 but before last.pt at step 6: best.pt and best_val stay paired."""
    cfg = run_config_factory("supervised", train={"steps": 6, "ckpt_every": 3, "eval_every": 3})
    trainer = Trainer(cfg, data=tiny_data)
    trainer.fit()
    best = safe_torch_load(trainer.run_dir / "best.pt")
    last = safe_torch_load(trainer.run_dir / "last.pt")
    lane = trainer.lanes[0]

    def adopted(step, best_val, best_step):
        lane.step, lane.best_val, lane.best_step = step, best_val, best_step
        trainer._adopt_newer_best(lane)
        return lane.best_val, lane.best_step

    assert adopted(best["step"] - 1, -1.0, -1) == (best["val_acc"], best["step"])
    assert adopted(last["step"], 0.123, 2) == (0.123, 2)
