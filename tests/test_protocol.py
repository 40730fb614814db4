"""The evaluation protocol, in tests that fail when it is broken: the test set is scored once per run, after
training, with the weights chosen on validation, and never feeds a choice (garbage test labels leave training,
selection and checkpoints unchanged); M1 trains without ever reading a label (labels that raise on any use
leave its training unchanged)."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_run_config
from genssl import Trainer
from genssl.data.batching import SSLBatcher
from genssl.data.datasets import ImageData
from genssl.runs.run_dir import RunDir
from genssl.training import metrics
from genssl.training import trainer as trainer_mod
from test_exact_resume import assert_same, scalar_series

SMALL = {"supervised": {"hidden": [32]}, "vae_m1": {"hidden": [32], "z_dim": 4, "readout": "linear"}}
TRAIN = {"steps": 9, "eval_every": 3, "ckpt_every": 3, "log_every": 3}


def _cfg(method: str, out):
    return tiny_run_config(method, out, SMALL[method], train=TRAIN)


@pytest.mark.parametrize("method", ["supervised", "vae_m1"])
def test_the_test_set_is_scored_once_after_training_with_the_chosen_weights(method, tiny_data, tmp_path,
                                                                            monkeypatch):
    train, test = tiny_data
    events = []
    real_accuracy, real_step = metrics.accuracy, trainer_mod.SingleStep.__call__

    def scoring(m, images_u8, labels, *args, **kwargs):
        acc = real_accuracy(m, images_u8, labels, *args, **kwargs)
        is_test = images_u8.shape == test.images.shape and torch.equal(images_u8.cpu(), test.images)
        events.append(("test" if is_test else "other", images_u8.shape[0], acc))
        return acc

    def stepping(self, batches, step):
        for b in batches:  # no test image ever reaches a training batch
            assert not (b.x_u.shape[1:] == test.images.shape[1:] and _shares_rows(b.x_u, test.images))
        events.append(("step", step, None))
        return real_step(self, batches, step)

    monkeypatch.setattr(trainer_mod, "accuracy", scoring)
    monkeypatch.setattr(trainer_mod.SingleStep, "__call__", stepping)
    trainer = Trainer(_cfg(method, tmp_path), data=tiny_data)
    results = trainer.fit()
    kinds = [e[0] for e in events]
    assert kinds.count("test") == 1, kinds
    assert kinds.index("test") > max(i for i, k in enumerate(kinds) if k == "step"), "scored before training ended"
    assert kinds.count("other") == TRAIN["steps"] // TRAIN["eval_every"]  # the validation images, at each eval
    assert all(n == 100 for k, n, _ in events if k == "other")  # n_val
    (test_event,) = [e for e in events if e[0] == "test"]
    assert test_event[2] == results["test_acc"]
    # The weights scored are best.pt's, the ones chosen on validation.
    run = RunDir(trainer.run_dir)
    val = dict(scalar_series(run.path)["val/acc"])
    assert results["best_val_acc"] == pytest.approx(max(val.values())) and val[results["best_step"]] == max(val.values())
    best = run.load_checkpoint("best.pt")
    assert best["step"] == results["best_step"]
    method_, _, _ = run.load_method("best.pt")
    method_.fit_readout(*trainer.lanes[0].lab, seed=trainer.lanes[0].seed)
    assert real_accuracy(method_, test.images, test.labels, 128) == results["test_acc"]


def _shares_rows(x_float: torch.Tensor, images_u8: torch.Tensor) -> bool:
    x = (x_float * 255).round().to(torch.uint8).flatten(1)
    t = images_u8.flatten(1)
    return bool((x[:, None] == t[None]).all(-1).any())


def test_test_labels_never_feed_a_choice(tiny_data, tmp_path):
    """The same run with the test labels replaced by garbage trains, selects and saves exactly the same: only
    results.json's test accuracy may differ."""
    train, test = tiny_data
    shuffled = ImageData(test.images, torch.roll(test.labels, 1), test.num_classes, test.name)
    a = Trainer(_cfg("supervised", tmp_path / "a"), data=(train, test)).fit()
    b = Trainer(_cfg("supervised", tmp_path / "b"), data=(train, shuffled)).fit()
    assert a["test_acc"] != b["test_acc"]
    for key in ("best_val_acc", "best_step", "steps"):
        assert a[key] == b[key], key
    ra, rb = (RunDir(p / "supervised-synthetic-20-s0") for p in (tmp_path / "a", tmp_path / "b"))
    for name in ("last.pt", "best.pt"):
        ca, cb = ra.load_checkpoint(name), rb.load_checkpoint(name)
        for key in ("method_state", "model", "step", "best_step", "best_val", "batcher", "rng"):
            assert_same(ca.get(key), cb.get(key), f"{name} with garbage test labels", key)
    sa, sb = scalar_series(ra.path), scalar_series(rb.path)
    assert sa.pop("hparam/test_acc") != sb.pop("hparam/test_acc")  # the one figure the test labels make
    assert sa == sb and "val/acc" in sa


class _Label(torch.Tensor):
    """A label tensor that fails the test on any use: any torch function, attribute or method of it."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise AssertionError(f"vae_m1 read a label ({getattr(func, '__name__', func)}) while training")


def test_m1_never_reads_a_label_while_training(tiny_data, tmp_path, monkeypatch):
    a = Trainer(_cfg("vae_m1", tmp_path / "a"), data=tiny_data)
    a.fit()
    real_next = SSLBatcher.next

    def unreadable_labels(self):
        batch = real_next(self)
        poison = torch.zeros(0, dtype=torch.long).as_subclass(_Label)
        return batch._replace(y_l=poison, y_u=poison)

    monkeypatch.setattr(SSLBatcher, "next", unreadable_labels)
    b = Trainer(_cfg("vae_m1", tmp_path / "b"), data=tiny_data)
    b.fit()
    la, lb = (RunDir(t.run_dir).load_checkpoint("last.pt")["method_state"] for t in (a, b))
    assert_same(la, lb, "M1 trained with labels that raise on use")
    # Only the evaluation readout (fit on the labeled split before each evaluation) may read labels.
    assert la["model"]["_extra_state"]["labels"].shape == (20,)
