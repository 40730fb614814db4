import pytest
import torch

from conftest import tiny_run_config
from genssl.config import ConfigError
from genssl.data.split import Split, make_split


def _labels(per_class=(30,) * 10, seed=0):
    y = torch.cat([torch.full((n,), k) for k, n in enumerate(per_class)])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


def test_stratified_counts_and_disjoint_pools():
    y = _labels((40, 30, 50, 30, 30, 60, 30, 30, 30, 30))
    s = make_split(y, 10, n_labels=25, n_val=36, seed=1, labeled_in_unlabeled=False)
    counts = torch.bincount(y[s.labeled], minlength=10)
    assert counts.sum() == 25 and counts.min() == 2 and counts.max() == 3  # 25 // 10 each, 5 get one more
    assert len(s.val) == 36
    lab, unl, val = set(s.labeled.tolist()), set(s.unlabeled.tolist()), set(s.val.tolist())
    assert len(lab) == 25 and len(val) == 36
    assert not lab & unl and not lab & val and not unl & val
    assert lab | unl | val == set(range(len(y)))  # nothing lost
    # validation is stratified in proportion to class frequency: class 5 (60 of 370) gets the most
    val_counts = torch.bincount(y[s.val], minlength=10)
    assert val_counts[5] == val_counts.max() and val_counts.min() >= 2


def test_labeled_in_unlabeled_true_keeps_them_in_the_pool_val_stays_out():
    y = _labels()
    s = make_split(y, 10, n_labels=20, n_val=50, seed=0, labeled_in_unlabeled=True)
    lab, unl, val = set(s.labeled.tolist()), set(s.unlabeled.tolist()), set(s.val.tolist())
    assert lab <= unl
    assert not val & unl and not val & lab
    assert len(unl) == len(y) - 50


def test_seeded_reproducibility():
    y = _labels()
    a, b = make_split(y, 10, 20, 50, seed=7), make_split(y, 10, 20, 50, seed=7)
    c = make_split(y, 10, 20, 50, seed=8)
    for name in ("labeled", "unlabeled", "val"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.labeled, c.labeled)


def test_split_saves_and_reloads(tmp_path):
    s = make_split(_labels(), 10, 20, 50, seed=3)
    s.save(tmp_path / "split.pt")
    t = Split.load(tmp_path / "split.pt")
    assert torch.equal(s.labeled, t.labeled) and t.seed == 3 and t.labeled_in_unlabeled
    with pytest.raises(ValueError, match="out of range for a training set of 100 images"):
        t.check_against(100, "split.pt")


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_labels=301, n_val=0), "only 300 images"),
    (dict(n_labels=200, n_val=200), "asked for 200 labels and 200 validation images"),
    (dict(n_labels=5, n_val=0), "fewer than the 10 classes"),
    (dict(n_labels=0, n_val=0), "n_labels must be a positive integer"),
    (dict(n_labels=20, n_val=-1), "n_val must be a non-negative"),
    (dict(n_labels=20, n_val=0, seed=-3), "seed must be an integer"),
])
def test_bad_requests(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_split(_labels(), 10, **{"seed": 0, **kwargs})


def test_more_labels_than_a_class_holds():
    y = _labels((30,) * 9 + (3,))
    with pytest.raises(ValueError, match=r"class 9 has only 3 training images .* fewer than the 5 labels"):
        make_split(y, 10, n_labels=50, n_val=0, seed=0)


def test_class_with_no_examples():
    y = _labels((30,) * 9 + (0,))
    with pytest.raises(ValueError, match=r"class\(es\) \[9\] have no examples"):
        make_split(y, 10, n_labels=20, n_val=10, seed=0)


def test_labels_out_of_range_or_wrong_type():
    with pytest.raises(ValueError, match=r"make_split: labels must be in \[0, 9\]; 20 are not, e.g. index 2 has "
                                         r"label 12"):
        make_split(torch.tensor([0, 1, 12] * 20), 10, 10, 0, seed=0)
    with pytest.raises(ValueError, match=r"index 0 has label -1"):
        make_split(torch.tensor([-1, 1] * 20), 2, 2, 0, seed=0)
    with pytest.raises(ValueError, match="integer class indices"):
        make_split(torch.tensor([0.0, 1.0] * 20), 2, 2, 0, seed=0)
    with pytest.raises(ValueError, match="one-dimensional"):
        make_split(torch.zeros(4, 2, dtype=torch.long), 2, 2, 0, seed=0)


# ------------------------------------------------------------------ class mismatch: replace and add (issue 37)
TASK = [0, 1, 2, 3]  # four of ten classes, 200 images each; the other six hold 1,200 out-of-class images
SEEDS = [0, 1, 2]


def _mismatch_split(seed, mismatch, mode=None, labeled_in_unlabeled=False, n_unlabeled=300):
    mode_kw = {} if mode is None else {"mismatch_mode": mode}
    return make_split(_labels((200,) * 10), 10, 20, 40, seed, labeled_in_unlabeled, n_unlabeled, TASK, mismatch,
                      **mode_kw)


def _in_and_out(s):
    y = _labels((200,) * 10)
    pool = [i for i in s.unlabeled.tolist() if i not in set(s.labeled.tolist())]
    return {i for i in pool if y[i] in TASK}, {i for i in pool if y[i] not in TASK}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mismatch, n_out", [(0.0, 0), (0.25, 100), (0.3, 129), (0.5, 300), (0.8, 1200)])
@pytest.mark.parametrize("labeled_in_unlabeled", [False, True])
def test_add_mode_keeps_the_in_class_draw_of_mismatch_0_and_adds_the_strays(seed, mismatch, n_out,
                                                                              labeled_in_unlabeled):
    """n_out = round(m * n_in / (1 - m)) out-of-class images on top of exactly the 300 in-class images mismatch 0
    draws for this seed (0.3: 128.57 -> 129); the same labeled and validation images (the validation order, shuffled
    after the larger pool, may differ)."""
    clean = _mismatch_split(seed, 0.0, labeled_in_unlabeled=labeled_in_unlabeled)
    s = _mismatch_split(seed, mismatch, "add", labeled_in_unlabeled)
    clean_in, clean_out = _in_and_out(clean)
    inside, outside = _in_and_out(s)
    assert len(clean_in) == 300 and not clean_out
    assert inside == clean_in and len(outside) == n_out
    assert len(s.unlabeled) == 300 + n_out + (20 if labeled_in_unlabeled else 0)
    assert torch.equal(s.labeled, clean.labeled) and set(s.val.tolist()) == set(clean.val.tolist())
    assert outside == _in_and_out(_mismatch_split(seed, mismatch, "add", labeled_in_unlabeled))[1]  # seeded


REPLACE_AT_HALF = {0: (317627, [678, 106, 633, 1629]), 1: (291962, [1399, 103, 529, 1269]),
                   2: (297529, [48, 1205, 370, 861])}
"""Sum and first indices of the unlabeled pool at mismatch 0.5, as make_split drew it before mismatch_mode."""


@pytest.mark.parametrize("seed", SEEDS)
def test_replace_mode_is_the_default_and_draws_what_it_did_before(seed):
    s = _mismatch_split(seed, 0.5)
    assert all(torch.equal(getattr(s, k), getattr(_mismatch_split(seed, 0.5, "replace"), k))
               for k in ("labeled", "unlabeled", "val"))
    assert (int(s.unlabeled.sum()), s.unlabeled[:4].tolist()) == REPLACE_AT_HALF[seed]
    for mismatch in (0.25, 0.5, 1.0):  # a fixed pool of 300: round(m * 300) strays in place of in-class images
        inside, outside = _in_and_out(_mismatch_split(seed, mismatch, "replace"))
        assert len(outside) == round(mismatch * 300) and len(inside) == 300 - len(outside)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mismatch=1.0, mode="add"), r"mismatch=1.0 in add mode would add infinitely many .* mismatch below 1, "
                                     r"or mismatch_mode='replace'"),
    (dict(mismatch=0.5, mode="swap"), r"mismatch_mode must be one of replace, add, got 'swap'"),
    (dict(mismatch=0.9, mode="add"), r"mismatch=0.9 \(add\) asks for 2700 .* hold only 1200"),
])
def test_bad_mismatch_modes_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _mismatch_split(0, kwargs["mismatch"], kwargs["mode"])


@pytest.mark.parametrize("data, match", [
    ({"mismatch_mode": "swap"}, r"data.mismatch_mode: 'swap' is not one of replace, add"),
    ({"mismatch": 1.0, "mismatch_mode": "add", "classes": [0, 1], "n_unlabeled": 50},
     r"data.mismatch=1.0 with mismatch_mode: add would add infinitely many .* mismatch_mode: replace"),
])
def test_the_config_refuses_bad_mismatch_modes(tmp_path, data, match):
    with pytest.raises(ConfigError, match=match):
        tiny_run_config("supervised", tmp_path, data=data)
