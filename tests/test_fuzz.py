"""Property-based tests: random and malformed input to the split, config parsing and overrides, user arrays and
the IDX reader gives either a correct result or a ValueError-family error, never a crash inside torch/numpy
or a silently wrong split. Each outcome is recorded with hypothesis.event; `pytest tests/test_fuzz.py
--hypothesis-show-statistics` shows how often each error (and success) occurred."""

from __future__ import annotations

import gzip
import string

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from datafiles import idx_bytes
from genssl.config import ConfigError, build_run_config, dump_yaml, parse_overrides
from genssl.data.datasets import from_arrays, read_idx
from genssl.data.split import make_split

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _kind(e: Exception) -> str:
    """A short, number-free label of an error message, for hypothesis' statistics."""
    text = str(e)
    if text.startswith("/"):  # drop a leading file path
        text = text.split(": ", 1)[-1]
    return " ".join(w for w in text.split()[:5] if not any(c.isdigit() for c in w))


# ---------------------------------------------------------------------------------------------- make_split

@st.composite
def split_requests(draw):
    k = draw(st.integers(1, 6))
    n = draw(st.integers(0, 120))
    weights = draw(st.lists(st.integers(0, 5), min_size=k, max_size=k))  # uneven, sometimes empty classes
    pool = [c for c, w in enumerate(weights) for _ in range(w)] or [0]
    labels = draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n))
    if labels and draw(st.integers(0, 9)) == 0:  # now and then a label out of range
        labels[draw(st.integers(0, len(labels) - 1))] = draw(st.sampled_from([-1, k, k + 3]))
    n_labels = draw(st.one_of(st.integers(-1, 2 * k + 3), st.integers(0, n + 2)))
    n_val = draw(st.one_of(st.integers(-1, 5), st.integers(0, n + 2)))
    return k, labels, n_labels, n_val


@FUZZ
@given(req=split_requests(), seed=st.integers(0, 2**40), lio=st.booleans())
@example(req=(2, [0] * 50 + [1] * 3, 4, 10), seed=0, lio=True)  # a rare class
@example(req=(3, [0, 1, 2] * 5, 3, 12), seed=1, lio=False)       # everything used
def test_make_split_is_correct_or_refuses(req, seed, lio):
    k, labels, n_labels, n_val = req
    y = torch.tensor(labels, dtype=torch.long)
    try:
        s = make_split(y, k, n_labels, n_val, seed, lio)
    except ValueError as e:
        event(f"refused: {_kind(e)}")
        return
    event("split made")
    n = len(labels)
    lab, unl, val = s.labeled.tolist(), s.unlabeled.tolist(), s.val.tolist()
    for pool in (lab, unl, val):
        assert len(pool) == len(set(pool)) and all(0 <= i < n for i in pool)
    assert len(lab) == n_labels and len(val) == n_val
    assert not set(val) & (set(lab) | set(unl))
    rest = set(range(n)) - set(val)
    assert set(unl) == (rest if lio else rest - set(lab))
    per_class = torch.bincount(y[s.labeled], minlength=k)
    assert per_class.min() >= n_labels // k and per_class.max() <= n_labels // k + 1  # class-balanced
    again = make_split(y, k, n_labels, n_val, seed, lio)
    assert torch.equal(again.labeled, s.labeled) and torch.equal(again.val, s.val)


@FUZZ
@given(labels=st.one_of(hnp.arrays(st.sampled_from([np.float32, np.int8, np.int32, np.uint8, np.bool_]),
                                   hnp.array_shapes(min_dims=1, max_dims=2, max_side=20)),
                        st.lists(st.floats(allow_nan=True), max_size=10)),
       k=st.integers(-2, 12))
def test_make_split_odd_label_arrays(labels, k):
    try:
        s = make_split(torch.as_tensor(np.asarray(labels)), k, 3, 2, 0)
    except ValueError as e:
        event(f"refused: {_kind(e)}")
        return
    event("split made")
    assert len(s.labeled) == 3 and len(s.val) == 2


# ---------------------------------------------------------------------------------------------- config

SECTION_KEYS = {
    "data": ["dataset", "root", "download", "n_labels", "n_val", "labeled_in_unlabeled", "split_seed", "bogus"],
    "train": ["steps", "batch_size", "labeled_batch_size", "seed", "device", "precision", "compile", "threads",
              "eval_every", "log_every", "ckpt_every", "eval_batch_size", "progress", "stpes"],
    "method": ["arch", "hidden", "dropout", "lr", "weight_decay", "augment_shift", "alpha_final", "ramp_start",
               "threshold", "rounds", "reinit_each_round", "lrr"],
}
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 5000), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True), st.text(max_size=6),
                    st.sampled_from(["mlp", "conv", "fp16", "fp8", "1e-3", "cpu", "auto", "fashion_mnist", ".nan"]))
values = st.one_of(scalars, st.lists(st.one_of(st.integers(-2, 600), scalars), max_size=3),
                   st.dictionaries(st.text(max_size=4), scalars, max_size=2))


def section(name):
    return st.dictionaries(st.sampled_from(SECTION_KEYS[name]), values, max_size=3)


@st.composite
def raw_configs(draw):
    raw = {}
    for name in ("data", "train"):
        if draw(st.booleans()):
            raw[name] = draw(values) if draw(st.integers(0, 9)) == 0 else draw(section(name))
    valid = st.sampled_from(["supervised", "pseudo_label", "self_training"])
    method = draw(valid if draw(st.integers(0, 3)) else st.one_of(st.sampled_from(["nope", ""]), scalars))
    raw["method"] = {"name": method, **(draw(section("method")) if draw(st.booleans()) else {})}
    if draw(st.integers(0, 4)) == 0:
        raw[draw(st.sampled_from(["name", "out_dir", "bogus", 7]))] = draw(values)
    return raw


def _same(value, got) -> bool:
    if isinstance(got, tuple):
        return list(got) == list(value)
    if isinstance(got, float) and not isinstance(value, bool):
        return got == float(value)
    return got == value


@FUZZ
@given(raw=raw_configs())
@example(raw={"method": {"name": "supervised", "hidden": [3, 4], "lr": "1e-3"}, "train": {"steps": 7.0}})
def test_build_run_config_fuzz(raw):
    try:
        cfg = build_run_config(raw)
    except ValueError as e:  # ConfigError and the registry's unknown-method error
        event(f"refused: {_kind(e)}")
        return
    event("config built")
    again = build_run_config(yaml.safe_load(dump_yaml(cfg)))  # whatever is accepted survives its own YAML
    assert again.to_dict() == cfg.to_dict()
    for sec in ("data", "train", "method"):
        for key, value in (raw.get(sec) or {}).items():
            if key != "name":
                got = getattr(getattr(cfg, sec), key)
                assert _same(value, got), f"{sec}.{key}: {value!r} became {got!r}"


@FUZZ
@given(args=st.lists(st.one_of(st.text(string.printable, max_size=12),
                               st.builds(lambda k, v: f"--{k}={v}",
                                         st.sampled_from([k for s, ks in SECTION_KEYS.items() for k in
                                                          (f"{s}.{x}" for x in ks)]) | st.text("abc._", max_size=8),
                                         st.text(string.printable, max_size=8))), max_size=5))
def test_parse_overrides_fuzz(args):
    try:
        out = parse_overrides(args)
    except ConfigError as e:
        event(f"refused: {_kind(e)}")
        return
    assert isinstance(out, dict)
    try:
        build_run_config({**out, "method": {**(out.get("method") if isinstance(out.get("method"), dict) else {}),
                                            "name": "supervised"}})
    except ValueError as e:
        event(f"parsed, config refused: {_kind(e)}")
        return
    event("parsed and built")


# ---------------------------------------------------------------------------------------------- user arrays

@st.composite
def user_arrays(draw):
    n = draw(st.integers(0, 6))
    h, w, c = draw(st.integers(0, 5)), draw(st.integers(1, 5)), draw(st.sampled_from([1, 2, 3]))
    shape = draw(st.sampled_from([(n, h, w), (n, c, h, w), (n, h, w, c), (n, h), (n, c, h, w, 1)])
                 if draw(st.integers(0, 2)) == 0 else st.sampled_from([(n + 2, h + 1, w), (n + 2, 1, h + 1, w)]))
    n = shape[0]
    dtype = draw(st.sampled_from([np.uint8, np.int16, np.int64, np.uint16, np.float16, np.float32, np.float64,
                                  np.bool_]))
    if np.issubdtype(dtype, np.floating):
        elements = st.floats(0, 1, width=16)
        if draw(st.integers(0, 3)) == 0:
            elements = elements | st.sampled_from([np.nan, np.inf, -0.5, 2.0])
    elif dtype == np.bool_:
        elements = None
    else:
        info = np.iinfo(dtype)
        elements = st.integers(0, 255) if draw(st.integers(0, 3)) else st.integers(max(info.min, -300), info.max)
    images = draw(hnp.arrays(dtype, shape, elements=elements))
    k = draw(st.one_of(st.none(), st.integers(-1, 8)))
    m = n if draw(st.integers(0, 5)) else draw(st.integers(0, 9))
    label_dtype = draw(st.sampled_from([np.int64, np.int8, np.float64, np.uint32]))
    label_elems = {np.int64: st.integers(0, 5), np.uint32: st.integers(0, 5), np.int8: st.integers(-2, 7),
                   np.float64: st.integers(0, 5).map(float) | st.floats(allow_nan=True, allow_infinity=True)}
    labels = draw(hnp.arrays(label_dtype, (m,), elements=label_elems[label_dtype]))
    return images, labels, k


@FUZZ
@given(arrays=user_arrays())
def test_from_arrays_fuzz(arrays):
    images, labels, k = arrays
    try:
        data = from_arrays(images, labels, num_classes=k)
    except ValueError as e:
        event(f"refused: {_kind(e)}")
        return
    event("data accepted")
    n = images.shape[0]
    assert data.images.dtype == torch.uint8 and data.images.dim() == 4 and data.images.shape[0] == n
    assert data.images.shape[1] in (1, 3) and data.labels.shape == (n,)
    assert data.labels.min() >= 0 and data.labels.max() < data.num_classes
    assert torch.equal(data.labels, torch.as_tensor(labels.astype(np.int64)))  # no silent relabeling
    if images.dtype == np.uint8 and images.ndim == 4 and images.shape[1] in (1, 3):
        assert np.array_equal(data.images.numpy(), images)  # uint8 NCHW passes through untouched


# ---------------------------------------------------------------------------------------------- IDX bytes

def _check_idx(tmp_path, blob: bytes, gz: bool):
    path = tmp_path / ("f.idx.gz" if gz else "f.idx")
    path.write_bytes(blob)
    try:
        array = read_idx(path)
    except ValueError as e:
        assert str(path) in str(e)
        event(f"refused: {_kind(e)}")
        return None
    event("IDX read")
    assert array.dtype == np.uint8
    return array


@FUZZ
@given(blob=st.binary(max_size=200), gz=st.booleans())
def test_read_idx_random_bytes(tmp_path_factory, blob, gz):
    _check_idx(tmp_path_factory.mktemp("idx"), blob, gz)


@FUZZ
@given(shape=st.lists(st.integers(0, 5), min_size=1, max_size=4), data=st.data(), gz=st.booleans())
def test_read_idx_mutated_files(tmp_path_factory, shape, data, gz):
    array = np.arange(int(np.prod(shape)), dtype=np.uint8).reshape(shape)
    blob = bytearray(idx_bytes(array))
    how = data.draw(st.sampled_from(["intact", "truncate", "extend", "flip", "dims"]))
    if how == "truncate":
        blob = blob[: data.draw(st.integers(0, max(len(blob) - 1, 0)))]
    elif how == "extend":
        blob += data.draw(st.binary(min_size=1, max_size=20))
    elif how == "flip":
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] ^= data.draw(st.integers(1, 255))
    elif how == "dims":  # a forged header: huge dimensions that overflow a 64-bit product
        blob[4:8] = data.draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
    blob = bytes(blob)
    tmp = tmp_path_factory.mktemp("idx")
    got = _check_idx(tmp, gzip.compress(blob) if gz else blob, gz)
    if how == "intact":
        assert got is not None and np.array_equal(got, array)
    elif got is not None:  # accepted only when header and payload agree
        assert got.size == len(blob) - 4 - 4 * got.ndim


@pytest.mark.parametrize("dims", [(2**32 - 1,) * 3, (2**16, 2**16, 2**16, 2**16), (0, 2**32 - 1)])
def test_read_idx_forged_headers(tmp_path, dims):
    header = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    path = tmp_path / "f.idx"
    path.write_bytes(header)
    try:
        got = read_idx(path)
    except ValueError as e:
        assert "IDX" in str(e)
    else:
        assert got.size == 0 and got.shape == dims
