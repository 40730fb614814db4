"""Small-network settings per registered method, shared by the registry-parametrized tests that train every
method (learning checks, exact resume, precision): each run then takes a second or two on one CPU thread.

A method listed in SMALL gets its tuned entry; any other registered method gets `shrunk(name)`, derived from its
Config (every hidden-width tuple one layer of 64 units, every latent size at most 16), so a new method needs no
entry here. Add one when the derived settings are too slow or do not learn the tests' clusters."""

from __future__ import annotations

import dataclasses

from genssl.registry import get_method_class

SMALL = {
    "supervised": {"hidden": [64], "dropout": 0.0},
    # Lee (2013)'s schedule, later and gentler: on 1 label per class the default alpha_f = 3 from 5% of the run
    # confirms the first guesses of an untrained net (the collapse the paper's long schedule avoids).
    "pseudo_label": {"hidden": [64], "dropout": 0.0, "alpha_final": 1.0, "ramp_start": 0.3, "ramp_end": 0.7},
    "self_training": {"hidden": [64], "dropout": 0.0, "threshold": 0.8},
    "fixmatch": {"hidden": [64], "optimizer": "adam", "lr": 3e-3, "ema_decay": 0.99, "lr_schedule": "constant"},
    # fixmatch's, and FixMatch's term from 10% of the run (the default 2% of a 6-to-20-step test run is step 0)
    "openmatch": {"hidden": [64], "optimizer": "adam", "lr": 3e-3, "ema_decay": 0.99, "lr_schedule": "constant",
                  "fixmatch_start": 0.1},
    "sgan": {"d_hidden": [128, 64], "g_hidden": [64], "z_dim": 16, "n_samples": 10},
    "vae_m1": {"hidden": [64], "z_dim": 8, "readout": "knn"},
    "vae_m2": {"enc_hidden": [128], "dec_hidden": [128], "cls_hidden": [128], "z_dim": 16},
    "adgm": {"hidden": [64], "a_dim": 8, "z_dim": 8, "lr": 1e-3, "eval_samples": 2},
    "sdgm": {"hidden": [64], "a_dim": 8, "z_dim": 8, "lr": 1e-3, "eval_samples": 2},
}
HIDDEN, LATENT = 64, 16


def shrunk(name: str) -> dict:
    """Small settings read off method `name`'s Config: fields named *hidden holding a tuple of widths become one
    layer of HIDDEN units; int fields named *_dim (latent sizes) are capped at LATENT."""
    out = {}
    for f in dataclasses.fields(get_method_class(name).Config):
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.name.endswith("hidden") and isinstance(default, tuple) and default:
            out[f.name] = [HIDDEN]
        elif f.name.endswith("_dim") and type(default) is int:
            out[f.name] = min(default, LATENT)
    return out


def recipe(name: str) -> dict:
    return dict(SMALL[name]) if name in SMALL else shrunk(name)
