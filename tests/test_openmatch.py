"""OpenMatch (genssl.methods.openmatch): its one-vs-all terms against hand computations, the inlier selection, the
warm-up, the declared typicality score, and a tiny run with out-of-task images in the pool. (The registry-
parametrized tests cover the contract: smoke, capabilities, stacking, exact resume, learning.)"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_run_config
from genssl import DataSpec, Trainer, create_method
from genssl.data.batching import SSLBatch
from genssl.encoders.from_run import method_from_run
from genssl.methods.fixmatch import unlabeled_loss
from genssl.methods.openmatch import (
    ova_entropy,
    ova_inlier_score,
    ova_loss,
    select_inliers,
    socr_loss,
)
from genssl.methods.typicality import auroc, typicality_scores
from method_recipes import recipe

# (B=2, t=2, K=3) OVA logits: row t = 0 "inlier of class j", t = 1 "not"
OVA = torch.tensor([[[2.0, -1.0, 0.5], [0.0, 1.0, -0.5]],
                    [[-0.3, 0.7, 1.2], [0.4, 0.0, 2.0]]])
Y = torch.tensor([0, 2])


def _p(ova, b, t, j):
    """p^j(t | x_b) by hand: a two-way softmax over t."""
    return math.exp(ova[b][t][j]) / (math.exp(ova[b][0][j]) + math.exp(ova[b][1][j]))


def test_ova_loss_by_hand_with_the_hard_negative():
    o, total = OVA.tolist(), 0.0
    for b, y in enumerate(Y.tolist()):
        hardest = min(math.log(_p(o, b, 1, i)) for i in range(3) if i != y)  # the negative head most "inlier"
        total += -math.log(_p(o, b, 0, y)) - hardest
    assert ova_loss(OVA, Y).item() == pytest.approx(total / 2, rel=1e-6)
    # only the hardest negative counts: changing an easier negative head's logits leaves the loss alone
    easier = OVA.clone()
    easier[0, :, 1] = torch.tensor([-5.0, 5.0])  # head 1 on image 0: surely "not" (head 2 stays the hardest)
    assert ova_loss(easier, Y).item() == pytest.approx(ova_loss(OVA, Y).item(), rel=1e-6)


def test_entropy_and_soft_consistency_by_hand():
    o = OVA.tolist()
    h = [-sum(_p(o, b, t, j) * math.log(_p(o, b, t, j)) for t in (0, 1) for j in range(3)) for b in (0, 1)]
    assert ova_entropy(OVA).item() == pytest.approx(sum(h) / 2, rel=1e-6)
    other = OVA.flip(2)
    q = other.tolist()
    d = [sum((_p(o, b, t, j) - _p(q, b, t, j)) ** 2 for t in (0, 1) for j in range(3)) for b in (0, 1)]
    assert socr_loss(OVA, other).item() == pytest.approx(sum(d) / 2, rel=1e-6)
    assert socr_loss(OVA, OVA).item() == 0.0
    a, b = OVA.clone().requires_grad_(), other.clone().requires_grad_()
    socr_loss(a, b).backward()  # soft: the gradient reaches both views
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_the_score_is_the_predicted_class_head_and_selection_keeps_high_scores():
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0], [0.0, 5.0, 0.0], [5.0, 0.0, 0.0]])  # predicts 0, 2, 1, 0
    p_in = torch.tensor([[0.9, 0.1, 0.1], [0.9, 0.1, 0.2], [0.1, 0.7, 0.1], [0.3, 0.99, 0.99]])
    ova = torch.stack([p_in.log(), (1 - p_in).log()], 1)  # (4, 2, 3) logits with these probabilities
    score = ova_inlier_score(logits, ova)
    torch.testing.assert_close(score, torch.tensor([0.9, 0.2, 0.7, 0.3]))
    keep = select_inliers(score, 0.5)
    assert keep.tolist() == [1.0, 0.0, 1.0, 0.0]
    # FixMatch's term sees only the kept images (every pseudo-label confident at threshold 0)
    strong = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    loss, mask, pseudo = unlabeled_loss(logits, strong, 0.0, keep=keep)
    assert mask.tolist() == keep.tolist() and pseudo.tolist() == [0, 2, 1, 0]
    ce = torch.nn.functional.cross_entropy(strong, pseudo, reduction="none")
    assert loss.item() == pytest.approx(float((ce * keep).sum() / 4))


SPEC = DataSpec((1, 16, 16), 4, 8, 100, hflip=False)


def _method(**overrides):
    torch.manual_seed(0)
    m = create_method("openmatch", {**recipe("openmatch"), "threshold": 0.0, **overrides}, SPEC)
    m.setup(total_steps=10)
    return m


def _batch():
    g = torch.Generator().manual_seed(0)
    return SSLBatch(torch.rand(8, 1, 16, 16, generator=g), torch.arange(8) % 4, torch.rand(12, 1, 16, 16, generator=g),
                    torch.tensor([0, 1, 2, 3, 4, 5] * 2))  # hidden labels: half the pool out of task (>= K = 4)


@pytest.mark.parametrize("inlier", [True, False])
def test_the_step_gives_fixmatch_only_the_images_the_heads_call_inliers(inlier):
    m = _method()
    with torch.no_grad():  # heads that call every image an inlier (or an outlier) of every class
        m.ova.weight.zero_()
        m.ova.bias.copy_(torch.tensor([10.0] * 4 + [-10.0] * 4) * (1 if inlier else -1))
    _, logs, _ = m.stage_loss("main", _batch(), 9, {})
    assert logs["train/inlier_rate"].item() == float(inlier)
    assert logs["train/mask_rate"].item() == float(inlier)  # threshold 0: every inlier's pseudo-label is kept
    assert logs["train/stray_kept"].item() == logs["train/inlier_recall"].item() == float(inlier)
    assert (logs["train/unsup_loss"].item() > 0) == inlier
    assert all(torch.isfinite(v).all() for v in logs.values())


def test_fixmatch_is_off_during_the_warm_up():
    m = _method(fixmatch_start=0.5)  # 10 steps: off for steps 0-4
    assert [m.schedule(s)["fixmatch_on"] for s in range(10)] == [0.0] * 5 + [1.0] * 5
    with torch.no_grad():
        m.ova.weight.zero_()
        m.ova.bias.copy_(torch.tensor([10.0] * 4 + [-10.0] * 4))
    torch.manual_seed(1)
    off, logs, _ = m.stage_loss("main", _batch(), 4, {})
    torch.manual_seed(1)
    on, _, _ = m.stage_loss("main", _batch(), 5, {})  # the same views: only the warm-up factor differs
    assert logs["train/unsup_loss"].item() > 0
    assert on.item() == pytest.approx(off.item() + logs["train/unsup_loss"].item(), rel=1e-5)


def test_the_declared_score_is_the_averaged_heads_inlier_probability():
    m = _method()
    m.train_step(_batch(), 9)
    x = (torch.rand(5, 1, 16, 16) * 255).to(torch.uint8)
    s = typicality_scores(m, x, batch_size=2)
    assert s.shape == (5,) and bool(((s >= 0) & (s <= 1)).all())
    with torch.no_grad():
        logits, ova = m.heads(x.float() / 255, m.ema.shadow, m.ova_ema.shadow)
    torch.testing.assert_close(s, ova_inlier_score(logits, ova).double())


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="inlier_threshold must be in"):
        _method(inlier_threshold=1.0)
    with pytest.raises(ValueError, match="socr_weight must be >= 0"):
        _method(socr_weight=-1.0)
    with pytest.raises(ValueError, match="fixmatch_start must be a share"):
        _method(fixmatch_start=2.0)


def test_a_tiny_run_with_strays_in_the_pool_is_finite_and_scores_them_lower(tiny_data, tmp_path):
    """Four of the ten synthetic classes are the task; half the pool is of the other six. After a short run the
    OVA score ranks the test images of the other classes below the task's (AUROC 1.000 at train.seed 0-3, one
    thread, 2026-12: the floor leaves room for other CPUs)."""
    cfg = tiny_run_config("openmatch", tmp_path, {**recipe("openmatch"), "hidden": [32]},
                          data={"classes": [0, 1, 2, 3], "n_unlabeled": 160, "mismatch": 0.5, "n_labels": 20,
                                "n_val": 20},
                          train={"steps": 40, "eval_every": 20, "ckpt_every": 40, "log_every": 10})
    trainer = Trainer(cfg, data=tiny_data)
    results = trainer.fit()
    assert 0.0 <= results["test_acc"] <= 1.0 and results["steps"] == 40
    method, _, _ = method_from_run(trainer.run_dir, data=tiny_data)
    test = tiny_data[1]
    in_task = test.labels < 4
    scores = typicality_scores(method, test.images)
    assert bool(torch.isfinite(scores).all())
    a = auroc(scores[in_task], scores[~in_task])
    assert a > 0.9, f"OVA score AUROC in-task against other classes: {a:.3f}"
