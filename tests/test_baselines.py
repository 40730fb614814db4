"""The pseudo-labeling baselines behave as their docstrings say: pseudo_label's ramp alpha(t) and current-network
argmax labels; self_training's rounds, frozen teacher and confidence threshold."""

import pytest
import torch

from genssl.data.batching import SSLBatch
from genssl.data.spec import DataSpec
from genssl.methods.schedules import ramp_weight
from genssl.methods import create_method

SPEC = DataSpec((1, 8, 8), 3, 6, 12)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return SSLBatch(torch.rand(6, 1, 8, 8, generator=g), torch.arange(6) % 3, torch.rand(12, 1, 8, 8, generator=g))


def _method(name, total_steps, **cfg):
    torch.manual_seed(0)
    m = create_method(name, {"hidden": [16], "dropout": 0.0, **cfg}, SPEC)
    m.setup(total_steps)
    return m.train()


@pytest.mark.parametrize("step, expected", [(0, 0.0), (99, 0.0), (100, 0.0), (350, 1.5), (599, 3.0 * 499 / 500),
                                            (600, 3.0), (2000, 3.0)])
def test_ramp_weight_matches_lee_2013(step, expected):
    # the paper's schedule: T1 = 100, T2 = 600 (of 2000), alpha_f = 3
    assert ramp_weight(step, 2000, 0.05, 0.3, 3.0) == pytest.approx(expected)


def test_ramp_weight_degenerate_schedules():
    assert ramp_weight(4, 10, 0.5, 0.5, 2.0) == 0.0   # before T1
    assert ramp_weight(5, 10, 0.4, 0.4, 2.0) == 2.0   # T1 == T2: a step
    assert ramp_weight(0, 10, 0.0, 0.0, 2.0) == 2.0   # no ramp at all


def test_pseudo_label_logs_alpha_and_uses_current_argmax(monkeypatch):
    m = _method("pseudo_label", 100, ramp_start=0.1, ramp_end=0.5, alpha_final=2.0)
    batch = _batch()
    assert m.train_step(batch, 0)["train/alpha"].item() == 0.0
    assert m.train_step(batch, 30)["train/alpha"].item() == pytest.approx(1.0)
    assert m.train_step(batch, 80)["train/alpha"].item() == pytest.approx(2.0)
    # the unlabeled loss is the cross-entropy against the network's own argmax, recomputed at this step
    m.eval()
    with torch.no_grad():
        logits_u = m.net(batch.x_u)
        expected = torch.nn.functional.cross_entropy(logits_u, logits_u.argmax(1))
    monkeypatch.setattr(m, "update", lambda loss, name="main": None)  # look, do not step
    logs = m.train_step(batch, 80)
    assert logs["train/unsup_loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_self_training_rounds_teacher_and_threshold():
    m = _method("self_training", 40, rounds=4, threshold=0.5, augment_shift=0)
    assert [m._round_of(s) for s in (0, 9, 10, 19, 20, 39)] == [0, 0, 1, 1, 2, 3]
    batch = _batch()
    logs = m.train_step(batch, 0)  # round 0: labeled data only
    assert logs["train/unsup_loss"].item() == 0.0 and logs["train/mask_rate"].item() == 0.0
    for s in range(1, 10):
        m.train_step(batch, s)
    student_before = {k: v.clone() for k, v in m.net.state_dict().items()}
    m.train_step(batch, 10)  # round 1 starts: the teacher is a frozen copy of the student at that moment
    assert int(m.round) == 1
    for k, v in m.teacher.state_dict().items():
        assert torch.equal(v, student_before[k])
    assert not any(p.requires_grad for p in m.teacher.parameters())
    teacher_now = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    m.train_step(batch, 11)
    assert all(torch.equal(v, teacher_now[k]) for k, v in m.teacher.state_dict().items()), "teacher moved in-round"


@pytest.mark.parametrize("threshold, rate", [(0.0, 1.0), (1.0, 0.0)])
def test_self_training_threshold_extremes(threshold, rate):
    m = _method("self_training", 10, rounds=2, threshold=threshold, augment_shift=0)
    logs = m.train_step(_batch(), 5)  # round 1
    assert logs["train/mask_rate"].item() == rate
    if rate == 0.0:
        assert logs["train/unsup_loss"].item() == 0.0


@pytest.mark.parametrize("cfg, match", [({"threshold": 1.5}, r"threshold must be in \[0, 1\], got 1.5"),
                                        ({"rounds": 0}, "rounds must be >= 1, got 0")])
def test_self_training_rejects_bad_settings(cfg, match):
    with pytest.raises(ValueError, match=match):
        create_method("self_training", cfg, SPEC)
