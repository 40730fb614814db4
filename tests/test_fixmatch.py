"""FixMatch behaves as its docstring says: the confidence mask on the weak view, hard pseudo-labels trained on the
strong view (eq. 4) averaged over all unlabeled images, the supervised term (eq. 3), the cosine schedule, the EMA
weights for evaluation, the hidden labels only in a log; and it learns."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from genssl import Trainer
from genssl.config import ConfigError, build_run_config
from genssl.data.batching import SSLBatch, SSLBatcher
from genssl.data.spec import DataSpec
from genssl.methods import create_method
from genssl.training.seeds import train_seeds

SPEC = DataSpec((1, 1, 3), 3, 1, 3)


class Scaled(nn.Module):
    """logits = w * pixels: a one-parameter 'network' whose logits are written by hand in the images."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(10.0))

    def forward(self, x):
        return self.w * x.flatten(1)


def _lse(v):
    return math.log(sum(math.exp(a) for a in v))


def _hand_method(**cfg):
    m = create_method("fixmatch", {"hidden": [4], **cfg}, SPEC)
    m.net = Scaled()
    m.setup(100)
    # weak view = the image, strong view = the image reversed: the hand-computed logits below follow
    m.augment = lambda x, kind=None: x.flip(-1) if kind == "strong" else x
    return m.train()


def _hand_batch():
    x_l = torch.tensor([[[[0.5, 0.1, 0.1]]]])  # logits (5, 1, 1), label 0
    x_u = torch.tensor([[[[0.1, 0.2, 0.7]]],   # weak logits (1, 2, 7): p_max = 0.991 >= 0.95, pseudo-label 2
                        [[[0.3, 0.3, 0.4]]],   # (3, 3, 4): p_max = 0.576, not kept
                        [[[0.9, 0.0, 0.0]]]])  # (9, 0, 0): p_max = 0.9998, pseudo-label 0
    return SSLBatch(x_l, torch.tensor([0]), x_u, torch.tensor([2, 0, 1]))  # the third pseudo-label is wrong


def test_mask_pseudo_labels_and_losses_match_the_hand_computation():
    m = _hand_method(unlabeled_weight=2.0, threshold=0.95)
    loss, logs, _ = m.stage_loss("main", _hand_batch(), 0, {})
    sup = _lse([5, 1, 1]) - 5
    # strong views (reversed): (7, 2, 1) against pseudo-label 2, (0, 0, 9) against pseudo-label 0; the mean runs
    # over all three unlabeled images (eq. 4), the unkept one counting 0
    unsup = ((_lse([7, 2, 1]) - 1) + (_lse([0, 0, 9]) - 0)) / 3
    assert logs["train/sup_loss"].item() == pytest.approx(sup, rel=1e-5)
    assert logs["train/unsup_loss"].item() == pytest.approx(unsup, rel=1e-5)
    assert logs["train/mask_rate"].item() == pytest.approx(2 / 3)
    assert logs["train/pseudo_acc"].item() == pytest.approx(1 / 2)  # of the two kept, one is right
    assert loss.item() == pytest.approx(sup + 2.0 * unsup, rel=1e-5)


def test_no_gradient_flows_through_the_pseudo_labels():
    m = _hand_method(threshold=0.5)
    loss, _, _ = m.stage_loss("main", _hand_batch(), 0, {})
    loss.backward()
    # the same loss with the weak view's labels and mask as constants
    w = torch.tensor(10.0, requires_grad=True)
    b = _hand_batch()
    ce = nn.functional.cross_entropy
    strong = w * b.x_u.flip(-1).flatten(1)
    kept = torch.tensor([1.0, 1.0, 1.0])  # at tau = 0.5 all three are kept: (1,2,7)->2, (3,3,4)->2, (9,0,0)->0
    ref = ce(w * b.x_l.flatten(1), b.y_l) + (ce(strong, torch.tensor([2, 2, 0]), reduction="none") * kept).mean()
    ref.backward()
    assert m.net.w.grad.item() == pytest.approx(w.grad.item(), rel=1e-5)


def test_threshold_one_keeps_nothing_and_zero_keeps_everything():
    for tau, rate in ((1.0, 0.0), (0.0, 1.0)):
        _, logs, _ = _hand_method(threshold=tau).stage_loss("main", _hand_batch(), 0, {})
        assert logs["train/mask_rate"].item() == rate
    _, logs, _ = _hand_method(threshold=1.0).stage_loss("main", _hand_batch(), 0, {})
    assert logs["train/unsup_loss"].item() == 0.0 and logs["train/pseudo_acc"].item() == 0.0


def test_hidden_labels_are_only_logged():
    m = _hand_method()
    b = _hand_batch()
    loss_with, logs, _ = m.stage_loss("main", b, 0, {})
    loss_without, logs_without, _ = m.stage_loss("main", b._replace(y_u=None), 0, {})
    assert loss_with.item() == loss_without.item()
    assert "train/pseudo_acc" in logs and "train/pseudo_acc" not in logs_without
    loss_other, _, _ = m.stage_loss("main", b._replace(y_u=torch.tensor([1, 1, 1])), 0, {})
    assert loss_other.item() == loss_with.item()


def test_the_batcher_hands_out_the_unlabeled_images_hidden_labels():
    images = torch.arange(20, dtype=torch.uint8).reshape(20, 1, 1, 1)
    labels = torch.arange(20) % 4
    batcher = SSLBatcher(images, labels, torch.arange(4), torch.arange(4, 20), 2, 5, seed=0)
    b = batcher.next()
    idx = (b.x_u.flatten() * 255).round().long()  # the pixel value is the image's index
    assert torch.equal(b.y_u, labels[idx])


def test_cosine_schedule_and_optimizer_choice():
    m = create_method("fixmatch", {"hidden": [4], "lr": 0.03}, SPEC)
    m.setup(1000)
    assert m.lr_at(0) == pytest.approx(0.03)
    assert m.lr_at(1000) == pytest.approx(0.03 * math.cos(7 * math.pi / 16))
    opt = m.optimizers["main"]
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    assert not any(p is q for p in m.ema.parameters() for q in opt.param_groups[0]["params"])
    adam = create_method("fixmatch", {"hidden": [4], "optimizer": "adam", "lr": 1e-3, "lr_schedule": "constant"},
                         SPEC)
    adam.setup(1000)
    assert isinstance(adam.optimizers["main"], torch.optim.AdamW) and adam.lr_at(999) == 1e-3


@pytest.mark.parametrize("key, value", [("optimizer", "rmsprop"), ("lr_schedule", "step")])
def test_bad_choices_are_refused_with_the_valid_ones(key, value):
    with pytest.raises(ValueError, match=f"{key}='{value}' is not one of"):
        create_method("fixmatch", {key: value}, SPEC)


def test_mu_comes_from_the_run_config(tmp_path):
    cfg = build_run_config({"method": {"name": "fixmatch"}, "out_dir": str(tmp_path),
                            "train": {"batch_size": 448, "labeled_batch_size": 64}})
    assert cfg.train.batch_size // cfg.train.labeled_batch_size == 7
    with pytest.raises(ConfigError, match="valid keys"):
        build_run_config({"method": {"name": "fixmatch", "mu": 7}, "out_dir": str(tmp_path)})


def test_evaluation_uses_the_moving_average():
    spec = DataSpec((1, 8, 8), 3, 6, 12)
    torch.manual_seed(0)
    m = create_method("fixmatch", {"hidden": [16], "ema_decay": 0.9}, spec)
    m.setup(10)
    m.train()
    g = torch.Generator().manual_seed(0)
    batch = SSLBatch(torch.rand(6, 1, 8, 8, generator=g), torch.arange(6) % 3, torch.rand(12, 1, 8, 8, generator=g))
    for step in range(3):
        m.train_step(batch, step)
    assert m.ema.num_updates == 3
    m.eval()
    x = torch.rand(5, 1, 8, 8, generator=g)
    with torch.no_grad():
        assert torch.equal(m.predict(x), m.ema.shadow(x))
        assert not torch.allclose(m.predict(x), m.net(x))
        assert torch.equal(m.encoder_module()(x), m.ema.shadow.features(x))


def test_fixmatch_learns_on_tiny_data(run_config_factory, tiny_data):
    """A few hundred steps on the synthetic blobs (20 labels, chance 10%) end far above chance."""
    cfg = run_config_factory("fixmatch", {"hidden": [64]},
                             train={"steps": 300, "batch_size": 64, "labeled_batch_size": 16, "eval_every": 100,
                                    "ckpt_every": 300, "log_every": 50})
    results = Trainer(cfg, data=tiny_data).fit()
    assert results["test_acc"] > 0.9, results


def test_fixmatch_seeds_train_stacked(run_config_factory, tiny_data, tmp_path):
    cfg = run_config_factory("fixmatch", {"hidden": [16]}, train={"steps": 4, "eval_every": 2, "ckpt_every": 2})
    results = train_seeds(cfg, [0, 1], run_dir=str(tmp_path / "fm"), data=tiny_data, stack="on")
    assert all(r["seeds_trained_together"] == 2 and 0 <= r["test_acc"] <= 1 for r in results)
    states = [torch.load(tmp_path / "fm" / f"s{s}" / "best.pt", weights_only=True)["model"] for s in (0, 1)]
    assert not torch.equal(states[0]["ema.shadow.head.weight"], states[1]["ema.shadow.head.weight"])


def test_a_resumed_run_replays_the_uninterrupted_one(run_config_factory, tiny_data, tmp_path):
    """The augmentations draw from torch's global RNG, which checkpoints save: stopping at step 3 and resuming
    gives the uninterrupted run's weights exactly."""
    from dataclasses import replace

    cfg = run_config_factory("fixmatch", {"hidden": [16], "lr_schedule": "constant", "dropout": 0.2},
                             train={"steps": 6, "eval_every": 3, "ckpt_every": 3, "log_every": 1})
    Trainer(cfg, run_dir=tmp_path / "whole", data=tiny_data).fit()
    Trainer(replace(cfg, train=replace(cfg.train, steps=3)), run_dir=tmp_path / "split", data=tiny_data).fit()
    Trainer(cfg, run_dir=tmp_path / "split", resume=True, data=tiny_data).fit()
    whole, split = (torch.load(tmp_path / d / "last.pt", weights_only=True)["method_state"]["model"]
                    for d in ("whole", "split"))
    assert whole.keys() == split.keys()
    for k in whole:  # weights, batch-norm statistics, the EMA's weights and its update count
        same = torch.equal(whole[k], split[k]) if isinstance(whole[k], torch.Tensor) else whole[k] == split[k]
        assert same, k
