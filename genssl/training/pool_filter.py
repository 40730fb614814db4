"""Filtering the unlabeled pool by typicality (`data.filter_run`), before any method trains on it.

A finished run, trained on this run's own split (the same labeled, validation and unlabeled images: the same data
config and seed; `check_same_split` refuses any other), scores how typical each image is with the detector
`data.filter_score` names (genssl.methods.detectors, the detectors `genssl predict` gates with; higher = more
typical): `model`, the method's own generative score (Method.typicality: the ELBO for the VAE family, log D(x) for
the SSL-GAN); `max_softmax` (older name `confidence`), the classifier's confidence, the non-generative baseline for
any method; `energy`, the logits' logsumexp; `feature_density`, the class-conditional Gaussian of the run's
features; `elbo_complexity`, the ELBO plus the image's compressed bits. Or `two_sided`, the model score made
two-sided (minus its distance from the validation images' median, so images scoring far *above* the in-task ones
are atypical too: a likelihood can rank simpler out-of-class images higher, Nalisnick et al. 2019). A detector the
run cannot have (a classifier's ELBO) is refused with the detectors' own reason, naming the run.

The threshold is the `filter_quantile` of the scores of the validation images (the labeled ones when there are
none; threshold_from_validation, which refuses NaN scores), which are of the task's classes by construction and
unseen by the filter's training, so about (1 - quantile) of in-task images pass; unlabeled images scoring below it
are dropped. The feature density's threshold is its gate's validation scores (of images it was not fitted on:
held out of a fit on the labeled and confidently pseudo-labeled pool images, or cross-fitted in a fit on the
labeled and validation images; genssl.methods.detectors.fit_feature_density), read with the density from the run's
gate.pt where that gate is of the checkpoint the filter loads (best.pt), else fitted now (fit_gate) on the run's
labeled, validation and pool images, which are this run's. The labeled images always stay. What was kept, and, from the hidden labels (reporting only,
as SSLBatch.y_u), how many out-of-task images were among the kept and the dropped, is written with the detector's
name to filter.json and results.json.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genssl.config import TWO_SIDED, RunConfig
from genssl.data.split import Split
from genssl.encoders.density import GATE_FILE, FeatureDensity, gate_density, read_gate
from genssl.encoders.from_run import method_from_run
from genssl.methods.base import Method
from genssl.methods.detectors import (
    DETECTORS,
    detector_scores,
    fit_gate,
    gate_threshold,
    range_pool_draw,
    resolve_kind,
    score_name,
)
from genssl.methods.typicality import threshold_from_validation
from genssl.runs.run_dir import RunDir

DENSITY = "feature_density"
SCORE_BATCH = 256  # the batch the pool is scored in; a stochastic bound's noise is seeded per batch

SPLIT_KEYS = ("dataset", "classes", "n_labels", "n_val", "n_unlabeled", "mismatch", "mismatch_mode",
              "labeled_in_unlabeled", "split_seed")
"""The data keys that shape a split, shown when a filter run's split differs from this run's."""


def check_same_split(split: Split, filter_run: str | Path, filter_cfg: RunConfig) -> None:
    """Refuse a filter run trained on another split than `split` (this run's, before filtering): its labeled,
    validation or unlabeled images differ. A filter is calibrated on this run's validation images and scores its
    pool; a model that saw other images (another seed, other labels, classes, n_val or pool) could have trained on
    this run's validation images, or not on its pool, and its threshold and scores then mean something else."""
    run = RunDir(filter_run)
    if not run.has(RunDir.SPLIT):
        raise ValueError(f"data.filter_run={str(filter_run)!r} has no {RunDir.SPLIT}, so which images it trained on "
                         f"cannot be checked; filter with a finished run of this run's data config and seed")
    source = run.read_split()
    differ = []
    for name in ("labeled", "val", "unlabeled"):
        there, here = getattr(source, name), getattr(split, name)
        if not torch.equal(there.sort().values, here.sort().values):
            differ.append(f"{name} images ({there.numel()} there, {here.numel()} here)" if there.numel() != here.numel()
                          else f"{name} images (as many, other ones)")
    if differ:
        seeds = f"split seed {source.seed} there, {split.seed} here; " if source.seed != split.seed else ""
        data = ", ".join(f"{k}={getattr(filter_cfg.data, k)!r}" for k in SPLIT_KEYS)
        raise ValueError(f"data.filter_run={str(filter_run)!r} was trained on another split than this run's: {seeds}"
                         f"its {', '.join(differ)} differ. Its data section: {data}. Filter with a run of this run's "
                         f"data config and seed (train.seed or data.split_seed); only data.filter_* may differ")


def filter_detector(filter_run: str | Path, method: Method, kind: str) -> str:
    """The registered detector `kind` (a data.filter_score value) scores with (`two_sided`: the model score); a
    ValueError naming the run and the detectors it has where it cannot have it (checked before any image is
    scored)."""
    name = resolve_kind("model" if kind == TWO_SIDED else kind, method)
    refusal = DETECTORS.get(name).method_refusal(method)
    if refusal is not None:
        has = [n for n in DETECTORS.names() if DETECTORS.get(n).method_refusal(method) is None]
        raise ValueError(f"data.filter_run={str(filter_run)!r}, data.filter_score: {kind}: {refusal}; filter with "
                         f"a detector this {method.name} run has ({', '.join(has)}; confidence is max_softmax) or "
                         f"with a run of a method that has {name}")
    return name


def run_density(filter_run: str | Path, method: Method, step: int, split: Split, images_u8: torch.Tensor,
                labels: torch.Tensor) -> tuple[FeatureDensity, dict, str]:
    """(the filter run's feature density, the gate holding it and its validation scores, where it came from): its
    gate.pt where that is of `step` (the checkpoint the filter loads), else fitted now on `split`'s labeled and
    validation images (the filter run's own: check_same_split)."""
    state = read_gate(filter_run)
    if state is not None and state.get("step", -1) == step:
        return gate_density(state, str(Path(filter_run) / GATE_FILE)), state, f"{GATE_FILE} (step {step})"
    why = (f"{GATE_FILE} is of step {state.get('step')}" if state is not None else f"no {GATE_FILE}")
    if split.val.numel() == 0:
        raise ValueError(f"data.filter_run={str(filter_run)!r}, data.filter_score: {DENSITY}: the run has {why} for "
                         f"its best.pt (step {step}), and without validation images (n_val: 0) none can be fitted: "
                         f"the density's threshold is its validation images' scores")
    def images(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return images_u8[idx.to(images_u8.device)], labels[idx.to(labels.device)]

    pool = split.unlabeled[range_pool_draw(len(split.unlabeled))]
    state = fit_gate(method, images(split.labeled), images(split.val), SCORE_BATCH, step,
                     pool=images_u8[pool.to(images_u8.device)])
    return gate_density(state), state, f"fitted now on {state['density_fit']} ({why}, best.pt is step {step})"


def filter_unlabeled(split: Split, images_u8: torch.Tensor, labels: torch.Tensor, num_task_classes: int,
                     filter_run: str | Path, quantile: float, kind: str = "model", device="cpu") -> tuple[Split, dict]:
    """(split with the atypical unlabeled images removed, report)."""
    method, cfg, ckpt = method_from_run(filter_run, "best.pt", device=device)
    name = filter_detector(filter_run, method, kind)
    if tuple(method.spec.image_shape) != tuple(images_u8.shape[1:]):
        raise ValueError(f"data.filter_run={str(filter_run)!r} was trained on {tuple(method.spec.image_shape)} images, "
                         f"these are {tuple(images_u8.shape[1:])}")
    check_same_split(split, filter_run, cfg)
    reference = split.val if split.val.numel() else split.labeled
    density, gate, density_from = None, None, None
    if name == DENSITY:
        density, gate, density_from = run_density(filter_run, method, int(ckpt.get("step", -1)), split, images_u8,
                                                  labels)

    def raw(idx: torch.Tensor) -> torch.Tensor:
        # float32, as the filter always scored: a pool filtered before is filtered the same
        return detector_scores(name, method, images_u8[idx.to(images_u8.device)], density, SCORE_BATCH).float()

    center = float(raw(reference).median()) if kind == TWO_SIDED else 0.0

    def scores(idx: torch.Tensor) -> torch.Tensor:
        return -(raw(idx) - center).abs() if kind == TWO_SIDED else raw(idx)

    # the density's threshold is its gate's validation scores, of images it was not fitted on (module docstring)
    threshold = (gate_threshold(gate, DENSITY, quantile) if name == DENSITY
                 else threshold_from_validation(scores(reference), quantile))
    is_labeled = torch.isin(split.unlabeled, split.labeled)
    candidates = split.unlabeled[~is_labeled]  # the pool's own images, in its order
    keep = scores(candidates) >= threshold
    kept = candidates[keep]
    on_top = split.unlabeled[is_labeled]
    out_of_task = labels.cpu()[candidates] >= num_task_classes
    report = {"run": str(filter_run), "method": cfg.method_name, "detector": name,
              "score": score_name(name, method) + (", two-sided" if kind == TWO_SIDED else ""),
              **({"density": density_from} if density_from is not None else {}),
              "same_pool": True, "quantile": quantile, "threshold": threshold, "pool": int(split.unlabeled.numel()),
              "scored": int(candidates.numel()), "kept": int(kept.numel()), "dropped": int((~keep).sum()),
              "labeled_kept": int(on_top.numel()),
              "out_of_task_scored": int(out_of_task.sum()), "out_of_task_kept": int((out_of_task & keep).sum())}
    unlabeled = torch.cat([on_top, kept])
    gen = torch.Generator().manual_seed(split.seed)
    unlabeled = unlabeled[torch.randperm(unlabeled.numel(), generator=gen)]
    return Split(split.labeled, unlabeled, split.val, split.seed, split.labeled_in_unlabeled), report
