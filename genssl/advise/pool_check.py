"""The pool check of `genssl advise`: what share of the unlabeled images looks unlike the labeled classes?

A Gaussian M1 (experiments/fmnist_vae_m1.yaml) is trained, as a normal run within a small budget, on repeat 0's
split with half of the unlabeled pool (data.n_unlabeled). It scores, with the score experiments/typicality_v1.md found
best for it (the ELBO plus the input-complexity correction of Serra et al. 2020: log2 p(x) + the image's zlib bits,
`complexity_corrected`), two sets of images it never trained on: the labeled images held out of its training
(repeat 0's validation and held-out parts: of the labeled classes by construction) and the other half of the pool
(at most MAX_SCORED). The score is made two-sided (minus the distance from the labeled images' median, as the
pool filter's `two_sided`: a likelihood can rank simpler images of other classes *higher*), and an unlabeled image
is flagged where it scores below the QUANTILE quantile of the labeled images'. If a share s of the pool were
atypical and flagged, and the rest were flagged like labeled images (a share QUANTILE), the flagged share f
would be s + (1 - s) * QUANTILE, so

    s = (f - QUANTILE) / (1 - QUANTILE), clipped to [0, 1].

Caveat (stated with the estimate): M1 has trained on the pool, strays included, so strays common in the pool look
typical to it and the estimate is a lower bound more than a measurement. In the realistic study (Fashion-MNIST,
experiments/README.md), M1 models trained on a pool of which half were other classes told them apart no better
than chance (AUROC 0.57 two-sided); a pool made only of other classes was found (0.89). The AUROC reported here
(labeled images against the scored pool) is 0.5 where the pool looks like the labeled classes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genssl.advise.candidates import POOL_M1, run_config
from genssl.compare.grid import GridRun
from genssl.compare.runner import run_unit
from genssl.data.folder import UNLABELED
from genssl.data.source import load_train_test
from genssl.encoders.from_run import method_from_run
from genssl.methods.typicality import (auroc, complexity_corrected, flag_atypical, threshold_from_validation,
                                       typicality_scores)
from genssl.runs.run_dir import RunDir

QUANTILE = 0.05
MAX_SCORED = 2000
MIN_POOL_TO_HALVE = 20
CAVEAT = ("M1 trained on your unlabeled images, strays included, so strays that are common there look typical to it: "
          "read a low share as 'no sign of strays', not as 'no strays' (on Fashion-MNIST, an M1 trained on a pool "
          "half of other classes told them apart no better than chance; a pool of other classes only, it found)")


def train_run(run: GridRun) -> tuple[dict, bool]:
    """(results, reused) of one run, trained, resumed or reused by the grid runner under its folder's lock (waiting
    for another process that trains it)."""
    return run_unit([run], progress=False, threads=1, wait=True)[run.name]


def pool_check_run(run_dir: Path, data: dict, n_pool: int, train: dict) -> GridRun:
    """The M1 run of the check: repeat 0's data (`data`) with half of the n_pool unlabeled images."""
    half = n_pool // 2 if n_pool >= MIN_POOL_TO_HALVE else None
    raw = run_config(POOL_M1, {**data, "n_unlabeled": half} if half else data, train)
    return GridRun("pool_check", 0, 0, raw, run_dir)


def check_pool(run: GridRun) -> dict:
    """Train (or reuse) the check's M1 run and estimate the share of atypical unlabeled images."""
    results, reused = train_run(run)
    method, cfg, _ = method_from_run(run.run_dir, "best.pt")
    train, heldout = load_train_test(cfg.data, progress=False)
    split = RunDir(run.run_dir).read_split()
    is_pool = train.labels == UNLABELED
    seen = torch.zeros(len(train.labels), dtype=torch.bool)
    seen[split.unlabeled] = True
    unseen = (is_pool & ~seen).nonzero().flatten()
    trained_on_scored = unseen.numel() == 0
    scored = (is_pool.nonzero().flatten() if trained_on_scored else unseen)
    gen = torch.Generator().manual_seed(0)
    scored = scored[torch.randperm(scored.numel(), generator=gen)[:MAX_SCORED]]
    reference = torch.cat([train.images[split.val], heldout.images])

    def score(images: torch.Tensor) -> torch.Tensor:
        return complexity_corrected(typicality_scores(method, images), images)

    s_ref, s_pool = score(reference), score(train.images[scored])
    center = s_ref.median()
    d_ref, d_pool = -(s_ref - center).abs(), -(s_pool - center).abs()
    threshold = threshold_from_validation(d_ref, QUANTILE)
    flagged = float(flag_atypical(d_pool, threshold).double().mean())
    estimate = min(1.0, max(0.0, (flagged - QUANTILE) / (1 - QUANTILE)))
    return {"run": str(run.run_dir), "reused": reused, "score": "ELBO + input complexity (bits), two-sided",
            "quantile": QUANTILE, "labeled_scored": int(reference.shape[0]), "pool_scored": int(scored.numel()),
            "scored_images_seen_in_training": trained_on_scored, "flagged_share": flagged,
            "atypical_share": estimate, "auroc_labeled_vs_pool": auroc(d_ref, d_pool),
            "m1_heldout_acc": results.get("test_acc"), "budget_clock_s": results.get("budget_clock_s"),
            "wall_time_s": results.get("wall_time_s"), "caveat": CAVEAT}
