import pytest
import torch

from genssl import Trainer, list_methods
from genssl.encoders.from_run import method_from_run
from genssl.runs.run_dir import RunDir
from genssl.training import trainer as trainer_mod


@pytest.mark.parametrize("method", list_methods())
def test_every_method_trains_a_few_steps_and_reloads(method, run_config_factory, tiny_data, monkeypatch):
    cfg = run_config_factory(method)
    before = {}
    real_step = trainer_mod.SingleStep.__call__

    def first_step(self, batches, step):  # the weights training starts from (after data-dependent init)
        if not before:
            before.update({k: v.detach().clone() for k, v in self.method.named_parameters()})
        return real_step(self, batches, step)

    monkeypatch.setattr(trainer_mod.SingleStep, "__call__", first_step)
    trainer = Trainer(cfg, data=tiny_data)
    results = trainer.fit()
    assert 0.0 <= results["test_acc"] <= 1.0
    assert results["steps"] == cfg.train.steps
    assert trainer.run_dir.joinpath("results.json").is_file()
    # Training changed the weights: some trainable parameter moved, and none went non-finite.
    after = RunDir(trainer.run_dir).load_checkpoint("last.pt")["method_state"]["model"]
    assert before and set(before) <= set(after)
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved, f"{method}: {cfg.train.steps} steps changed none of its {len(before)} parameters"
    assert all(torch.isfinite(after[k]).all() for k in before)
    # The run folder alone rebuilds the method with its best weights (checked key by key), as export and
    # downstream use it; predictions have the documented shape.
    reloaded, _, ckpt = method_from_run(trainer.run_dir, data=tiny_data)
    state = reloaded.state_dict()
    assert state.keys() == ckpt["model"].keys()
    for k, v in ckpt["model"].items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(state[k], v), f"{method}: {k} was not restored from best.pt"
    train = tiny_data[0]
    reloaded.fit_readout(train.images[:20].float() / 255, train.labels[:20])  # M1 fits its probe here
    with torch.no_grad():
        logits = reloaded.predict(tiny_data[1].images[:5].float() / 255)
    assert logits.shape == (5, train.num_classes) and torch.isfinite(logits).all()
