import pytest
import torch

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
