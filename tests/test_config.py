import pytest

from genssl.config import (ConfigError, build_run_config, dump_yaml, load_run_config, load_yaml, parse_overrides)
from genssl.registry import list_methods


def _raw(**sections):
    raw = {"method": {"name": "supervised"}, "data": {"dataset": "fashion_mnist"}, "train": {"steps": 10}}
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    return raw


def test_round_trip_through_yaml(tmp_path):
    cfg = build_run_config(_raw(method={"arch": "conv", "hidden": [32]}, train={"seed": 4}))
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    again = load_run_config(path)
    assert again.to_dict() == cfg.to_dict() and again.method.hidden == (32,) and again.train.seed == 4
    assert again.digest() == cfg.digest()


def test_digest_follows_what_the_run_computes_not_how_it_was_run():
    base = build_run_config(_raw())
    same = build_run_config(_raw(train={"threads": 1, "log_every": 7}, data={"root": "/elsewhere"}))
    other = build_run_config(_raw(train={"steps": 11}))
    assert same.digest() == base.digest()
    assert other.digest() != base.digest()


@pytest.mark.parametrize("raw, match", [
    (_raw(trian={"steps": 3}), "unknown top-level key.* trian; valid keys: data, method, name, out_dir, train"),
    (_raw(train={"setps": 3}), "unknown key train.setps; valid keys in train: steps, batch_size"),
    (_raw(data={"n_label": 3, "roots": "x"}), "unknown keys data.n_label, data.roots; valid keys in data: dataset"),
    (_raw(method={"name": "supervised", "learning_rate": 1}), "unknown key method.learning_rate; valid keys in "
                                                             "method: arch, hidden, dropout, lr"),
    (_raw(train={"steps": "many"}), "train.steps: expected an integer, got 'many'"),
    (_raw(train={"steps": 2.5}), "train.steps: expected an integer, got 2.5"),
    (_raw(train={"progress": "yes"}), "train.progress: expected true/false"),
    (_raw(method={"name": "supervised", "lr": "fast"}), "method.lr: expected a number, got 'fast'"),
    (_raw(method={"name": "supervised", "lr": float("nan")}), "method.lr: expected a number, got nan"),
    (_raw(method={"name": "supervised", "hidden": 5}), "method.hidden: expected a list"),
    (_raw(train={"steps": 0}), "train.steps must be positive, got 0"),
    (_raw(train={"precision": "fp8"}), "train.precision: 'fp8' is not one of fp32, bf16, fp16"),
    (_raw(train={"seed": -1}), r"train.seed must be in \[0, 2\*\*62\), got -1"),
    (_raw(data={"n_labels": -5}), "data.n_labels must be positive"),
    (_raw(data=[1, 2]), "data: expected a mapping, got list"),
    (_raw(method={"name": "supervised", 3: 1}), "unknown key method.3"),
    ({"data": {}}, "the config needs `method: {name: <method>, ...}`"),
    (["not", "a", "mapping"], "a run config must be a mapping, got list"),
])
def test_bad_configs_name_the_problem(raw, match):
    with pytest.raises(ConfigError, match=match):
        build_run_config(raw)


def test_unknown_method_lists_registered_ones():
    with pytest.raises(ValueError) as err:
        build_run_config(_raw(method={"name": "superviesd"}))
    msg = str(err.value)
    assert "unknown method 'superviesd'" in msg
    for name in list_methods():
        assert name in msg
    with pytest.raises(ConfigError, match="method.name: expected a method name, got 3; registered methods: "):
        build_run_config(_raw(method={"name": 3}))


def test_method_shorthand_and_defaults():
    cfg = build_run_config({"method": "pseudo_label"})
    assert cfg.method_name == "pseudo_label" and cfg.method.alpha_final == 3.0 and cfg.train.steps == 3000


def test_overrides_parse_and_merge(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: {name: supervised}\ntrain: {steps: 10}\n")
    cfg = load_run_config(path, ["--train.steps=20", "--method.lr", "3e-4", "--method.hidden=[8, 4]",
                                 "--data.root=null", "--name=x"])
    assert cfg.train.steps == 20 and cfg.method.lr == 3e-4 and cfg.method.hidden == (8, 4)
    assert cfg.data.root is None and cfg.name == "x"
    assert parse_overrides(["--a.b.c=1", "--a.b.d=yes"]) == {"a": {"b": {"c": 1, "d": True}}}


@pytest.mark.parametrize("args, match", [
    (["train.steps=3"], "expected an override like --train.steps=100"),
    (["--train.steps"], "override --train.steps has no value"),
    (["--train..steps=3"], "malformed override key"),
    (["--=3"], "malformed override key"),
    (["--train=3", "--train.steps=4"], "conflicts with another override"),
    (["--train.steps=[1"], "cannot parse value"),
])
def test_bad_overrides(args, match):
    with pytest.raises(ConfigError, match=match):
        parse_overrides(args)


def test_override_of_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: {name: supervised}\n")
    with pytest.raises(ConfigError, match="unknown key train.stpes"):
        load_run_config(path, ["--train.stpes=3"])
    with pytest.raises(ConfigError, match="train.steps: expected an integer"):
        load_run_config(path, ["--train.steps.x=3"])


def test_config_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found: .*missing.yaml"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: {name: supervised\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_yaml(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="needs `method"):
        load_run_config(empty)
