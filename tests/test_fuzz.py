"""Property-based tests: random and malformed input to the split, config parsing and overrides, user arrays and
the IDX reader gives either a correct result or a ValueError-family error, never a crash inside torch/numpy
or a silently wrong split. A refusal must also say what is wrong: each test checks the message against the input
(an oracle that knows which problem comes first, or the offending key, argument or value it must name). Each outcome is recorded with hypothesis.event; `pytest tests/test_fuzz.py
--hypothesis-show-statistics` shows how often each error (and success) occurred."""

from __future__ import annotations

import gzip
import re
import string

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from datafiles import idx_bytes
from genssl import list_methods
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


CLASS_SHORT = re.compile(r"class (\d+) has only (\d+) training images outside the validation set, fewer than "
                         r"the (\d+) labels asked of it \(n_labels=(\d+)\)")


def split_refusal(k: int, labels: list[int], n_labels: int, n_val: int) -> str | None:
    """The message make_split owes these (integer, one-dimensional) inputs: its checks in their order, up to the
    one that depends on the seeded validation draw (CLASS_SHORT); None when none of them applies."""
    if n_labels <= 0:
        return f"n_labels must be a positive integer, got {n_labels!r}"
    if n_val < 0:
        return f"n_val must be a non-negative integer, got {n_val!r}"
    bad = [i for i, v in enumerate(labels) if not 0 <= v < k]
    if bad:
        return (f"make_split: labels must be in [0, {k - 1}]; {len(bad)} are not, e.g. index {bad[0]} has label "
                f"{labels[bad[0]]}")
    if n_labels < k:
        return (f"n_labels={n_labels} is fewer than the {k} classes; a class-balanced split needs at least one "
                f"label per class")
    if n_val + n_labels > len(labels):
        return (f"asked for {n_labels} labels and {n_val} validation images, but the training set has only "
                f"{len(labels)} images")
    empty = sorted(set(range(k)) - set(labels))
    if empty:
        return f"class(es) {empty} have no examples in the training set"
    return None


@FUZZ
@given(req=split_requests(), seed=st.integers(0, 2**40), lio=st.booleans())
@example(req=(2, [0] * 50 + [1] * 3, 4, 10), seed=0, lio=True)  # a rare class
@example(req=(3, [0, 1, 2] * 5, 3, 12), seed=1, lio=False)       # everything used
def test_make_split_is_correct_or_refuses(req, seed, lio):
    k, labels, n_labels, n_val = req
    y = torch.tensor(labels, dtype=torch.long)
    owed = split_refusal(k, labels, n_labels, n_val)
    try:
        s = make_split(y, k, n_labels, n_val, seed, lio)
    except ValueError as e:
        event(f"refused: {_kind(e)}")
        if owed is not None:
            assert str(e) == owed
        else:  # the only refusal left: a class too small for its labels once validation took its share
            m = CLASS_SHORT.fullmatch(str(e))
            assert m, str(e)
            cls, left, quota, asked = map(int, m.groups())
            assert asked == n_labels and left < quota <= n_labels // k + 1 and left <= labels.count(cls)
        return
    assert owed is None, f"make_split accepted inputs it must refuse with: {owed}"
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
    y = torch.as_tensor(np.asarray(labels))
    if y.dim() != 1:
        owed = f"labels must be one-dimensional, got shape {tuple(y.shape)}"
    elif y.is_floating_point() or y.dtype == torch.bool:
        owed = f"labels must be integer class indices, got dtype {y.dtype}"
    elif k < 1:
        owed = f"num_classes must be a positive integer, got {k!r}"
    else:
        owed = split_refusal(k, y.long().tolist(), 3, 2)
    try:
        s = make_split(y, k, 3, 2, 0)
    except ValueError as e:
        event(f"refused: {_kind(e)}")
        assert str(e) == owed or (owed is None and CLASS_SHORT.fullmatch(str(e))), str(e)
        return
    assert owed is None, f"make_split accepted inputs it must refuse with: {owed}"
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


def assert_names_the_offender(message: str, raw) -> None:
    """A refused config's message names what is wrong: an unknown top-level key, the method name, or a key
    (section.key, or the section) that the raw config holds; unknown keys and methods come with the valid ones."""
    assert message and "Traceback" not in message
    if not isinstance(raw, dict):
        assert message == f"a run config must be a mapping, got {type(raw).__name__}"
        return
    named = [f"unknown top-level key(s) {', '.join(sorted(map(str, set(raw) - TOP_LEVEL)))}; valid keys: "]
    method = raw.get("method")
    name = method.get("name") if isinstance(method, dict) else method
    named += [f"unknown method {name!r}; registered methods: {', '.join(list_methods())}",
              f"method.name: expected a method name, got {name!r}; registered methods: {', '.join(list_methods())}"]
    for sec in ("name", "out_dir"):
        if sec in raw:
            named.append(f"{sec}: expected a string, got {raw[sec]!r}")
    for sec in ("data", "train", "method"):
        value = raw.get(sec)
        if isinstance(value, dict):
            named += [f"{sec}.{k}" for k in value if k != "name"] + [f"{sec}: "]
        elif sec in raw:
            named.append(f"{sec}: expected a mapping, got {type(value).__name__}")
    assert any(n in message for n in named), f"the message names nothing the config holds: {message!r} for {raw!r}"
    if "unknown key" in message:
        assert "; valid keys in " in message


TOP_LEVEL = {"name", "out_dir", "method", "data", "train"}


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
        assert_names_the_offender(str(e), raw)
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
        msg = str(e)
        keys = [a[2:].partition("=")[0] for a in args if a.startswith("--")]
        named = ([f"expected an override like --train.steps=100, got {a!r}" for a in args]
                 + [f"malformed override key {k!r}" for k in keys] + [f"override --{k} has no value" for k in keys]
                 + [f"override --{k}: cannot parse value " for k in keys]
                 + [f"override --{k} conflicts with another override" for k in keys])
        assert any(msg == n or msg.startswith(n) for n in named), f"{msg!r} names none of {args!r}"
        return
    assert isinstance(out, dict)
    raw = {**out, "method": {**(out.get("method") if isinstance(out.get("method"), dict) else {}),
                             "name": "supervised"}}
    try:
        build_run_config(raw)
    except ValueError as e:
        event(f"parsed, config refused: {_kind(e)}")
        assert_names_the_offender(str(e), raw)
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
        assert_user_data_refusal(str(e), images, labels, k)
        return
    event("data accepted")
    n = images.shape[0]
    assert data.images.dtype == torch.uint8 and data.images.dim() == 4 and data.images.shape[0] == n
    assert data.images.shape[1] in (1, 3) and data.labels.shape == (n,)
    assert data.labels.min() >= 0 and data.labels.max() < data.num_classes
    assert torch.equal(data.labels, torch.as_tensor(labels.astype(np.int64)))  # no silent relabeling
    if images.dtype == np.uint8 and images.ndim == 4 and images.shape[1] in (1, 3):
        assert np.array_equal(data.images.numpy(), images)  # uint8 NCHW passes through untouched


USER_DATA_REFUSALS = [
    r"labels must be integers; \d+ are not \(NaN, inf, fractional or huge\), at indices \[[\d, ]+\]( \.\.\.)?",
    r"images must have shape \(N, H, W\) or \(N, C, H, W\), got \([\d, ]*\)",
    r"images need 1 or 3 channels, got shape \([\d, ]+\)",
    r"images have no pixels, shape \([\d, ]+\)",
    r"images must be uint8 in \[0, 255\] or float in \[0, 1\], got bool",
    r"\d+ images contain NaN or inf, at indices \[[\d, ]+\]( \.\.\.)?",
    r"float images must lie in \[0, 1\], got range \[.+, .+\]",
    r"integer images must lie in \[0, 255\]",
    r"the dataset is empty",
    r"(\d+) images but (\d+) labels",
    r"need an integer num_classes >= 2, got (.+)",
    r"every label is (\d+), so the labels name only one class; a classifier needs at least 2 \(pass num_classes= "
    r"when some classes have no images here\)",
    r"labels must be in \[0, (-?\d+)\]; \d+ are not, e\.g\. index \d+ has label -?\d+",
]


def assert_user_data_refusal(message: str, images, labels, k) -> None:
    """One of from_arrays' refusals, prefixed with the dataset's name, its numbers those of the input."""
    assert message.startswith("user data: "), message
    text = message[len("user data: "):]
    match = next((m for m in (re.fullmatch(p, text) for p in USER_DATA_REFUSALS) if m), None)
    assert match, f"not one of from_arrays' refusals: {message!r}"
    if text.endswith(" labels") and " images but " in text:
        assert [int(v) for v in match.groups()] == [images.shape[0], labels.shape[0]]
        return
    if not text.startswith(("need an integer num_classes", "labels must be in [")):
        return  # e.g. "labels must be integers": the labels may hold NaN or inf, which have no largest + 1

    inferred = k if k is not None or not labels.size else int(labels.max()) + 1  # else the largest label + 1
    if text.startswith("need an integer num_classes"):
        assert match.group(1) == repr(inferred)
    else:
        assert int(match.group(1)) == inferred - 1


# ---------------------------------------------------------------------------------------------- IDX bytes

def _check_idx(tmp_path, blob: bytes, gz: bool):
    path = tmp_path / ("f.idx.gz" if gz else "f.idx")
    path.write_bytes(blob)
    try:
        array = read_idx(path)
    except ValueError as e:
        event(f"refused: {_kind(e)}")
        assert str(e).startswith(f"{path}: "), str(e)
        assert any(re.fullmatch(p, str(e)[len(str(path)) + 2:], re.S) for p in IDX_REFUSALS), str(e)
        return None
    event("IDX read")
    assert array.dtype == np.uint8
    return array


IDX_REFUSALS = [
    r"not an IDX file \(only \d+ bytes\)",
    r"not an unsigned-byte IDX file \(magic [0-9a-f]{0,8}\)",
    r"IDX header truncated",
    r"IDX file is corrupt or truncated: header says \([\d, ]+\) \(\d+ bytes\) but the file holds \d+ bytes",
    r"cannot read \(corrupt or truncated file\): .+",
]


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
        expected = 1
        for d in dims:
            expected *= d
        assert str(e) == (f"{path}: IDX file is corrupt or truncated: header says {dims} ({expected} bytes) but the "
                          f"file holds 0 bytes")
    else:
        assert got.size == 0 and got.shape == dims
