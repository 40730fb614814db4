"""Small-network settings per registered method, shared by the registry-parametrized tests that train every
method (learning checks, exact resume, precision): each run then takes a second or two on one CPU thread.
A method added to the registry needs an entry here; `recipe(name)` fails with that message otherwise."""

from __future__ import annotations

import pytest

SMALL = {
    "supervised": {"hidden": [64], "dropout": 0.0},
    # Lee (2013)'s schedule, later and gentler: on 1 label per class the default alpha_f = 3 from 5% of the run
    # confirms the first guesses of an untrained net (the collapse the paper's long schedule avoids).
    "pseudo_label": {"hidden": [64], "dropout": 0.0, "alpha_final": 1.0, "ramp_start": 0.3, "ramp_end": 0.7},
    "self_training": {"hidden": [64], "dropout": 0.0, "threshold": 0.8},
    "fixmatch": {"hidden": [64], "optimizer": "adam", "lr": 3e-3, "ema_decay": 0.99, "lr_schedule": "constant"},
    "sgan": {"d_hidden": [128, 64], "g_hidden": [64], "z_dim": 16, "n_samples": 10},
    "vae_m1": {"hidden": [64], "z_dim": 8, "readout": "knn"},
    "vae_m2": {"enc_hidden": [128], "dec_hidden": [128], "cls_hidden": [128], "z_dim": 16},
    "adgm": {"hidden": [64], "a_dim": 8, "z_dim": 8, "lr": 1e-3, "eval_samples": 2},
    "sdgm": {"hidden": [64], "a_dim": 8, "z_dim": 8, "lr": 1e-3, "eval_samples": 2},
}


def recipe(name: str) -> dict:
    if name not in SMALL:
        pytest.fail(f"method {name!r} is registered but has no small-network settings: add it to SMALL in "
                    f"tests/method_recipes.py")
    return dict(SMALL[name])
