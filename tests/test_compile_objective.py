"""vae_m2's `train.compile: true` compiles the whole objective (networks, bounds and losses in one graph): it
trains like eager, and the checkpoint keeps the eager names."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_run_config
from genssl import Trainer
from genssl.runs.run_dir import RunDir
from method_recipes import recipe
from test_exact_resume import scalar_series


def test_vae_m2_compiled_objective_trains_like_eager(tiny_data, tmp_path, monkeypatch):
    pytest.importorskip("torch._inductor")
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "fallback_random", True)  # the same noise draws as eager
    runs = {}
    for compiled in (False, True):
        cfg = tiny_run_config("vae_m2", tmp_path / str(compiled), recipe("vae_m2"),
                              train={"steps": 3, "eval_every": 3, "ckpt_every": 3, "log_every": 1,
                                     "compile": compiled})
        trainer = Trainer(cfg, data=tiny_data)
        trainer.fit()
        runs[compiled] = trainer.run_dir
    eager, comp = (scalar_series(runs[c])["train/loss"] for c in (False, True))
    assert [s for s, _ in comp] == [1, 2, 3]
    np.testing.assert_allclose([v for _, v in comp], [v for _, v in eager], rtol=1e-4)
    wa = RunDir(runs[False]).load_checkpoint("last.pt")["method_state"]["model"]
    wb = RunDir(runs[True]).load_checkpoint("last.pt")["method_state"]["model"]
    assert wa.keys() == wb.keys()
