import pytest
import torch

from genssl import Trainer, list_methods
from genssl.encoders.from_run import method_from_run


@pytest.mark.parametrize("method", list_methods())
def test_every_method_trains_a_few_steps_and_reloads(method, run_config_factory, tiny_data):
    cfg = run_config_factory(method)
    trainer = Trainer(cfg, data=tiny_data)
    results = trainer.fit()
    assert 0.0 <= results["test_acc"] <= 1.0
    assert results["steps"] == cfg.train.steps
    assert trainer.run_dir.joinpath("results.json").is_file()
    # The run folder alone rebuilds the method with its best weights (checked key by key), as export and
    # downstream use it; predictions have the documented shape.
    reloaded, _, _ = method_from_run(trainer.run_dir, data=tiny_data)
    train = tiny_data[0]
    reloaded.fit_readout(train.images[:20].float() / 255, train.labels[:20])  # M1 fits its probe here
    with torch.no_grad():
        logits = reloaded.predict(tiny_data[1].images[:5].float() / 255)
    assert logits.shape == (5, train.num_classes)
