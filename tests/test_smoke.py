import pytest

from genssl import Trainer, list_methods


@pytest.mark.parametrize("method", list_methods())
def test_every_method_trains_a_few_steps(method, run_config_factory, tiny_data):
    cfg = run_config_factory(method)
    results = Trainer(cfg, data=tiny_data).fit()
    assert 0.0 <= results["test_acc"] <= 1.0
    assert results["steps"] == cfg.train.steps
    assert (cfg_dir := Trainer(cfg).run_dir).joinpath("results.json").is_file(), cfg_dir
