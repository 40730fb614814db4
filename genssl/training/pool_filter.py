"""Filtering the unlabeled pool by typicality (`data.filter_run`), before any method trains on it.

A finished run of a generative method, trained on this run's own split (the same labeled, validation and
unlabeled images: the same data config and seed; `check_same_split` refuses any other), scores how typical each
image is (`data.filter_score: model`, its Method.typicality: the ELBO for the VAE family, log D(x) for the
SSL-GAN; genssl.methods.typicality), or that score made two-sided (`two_sided`: minus its distance from the
validation images' median, so images scoring far *above* the in-task ones are atypical too: a likelihood can rank
simpler out-of-class images higher, Nalisnick et al. 2019), or, as the non-generative baseline, any run's
classifier confidence (`confidence`: the maximum softmax probability). The threshold is the `filter_quantile` of
the scores of the validation images (the labeled ones when there are none; threshold_from_validation, which
refuses NaN scores), which are of the task's classes by construction and unseen by the filter's training, so
about (1 - quantile) of in-task images pass; unlabeled images scoring below it are dropped. The labeled images
always stay. What was kept, and, from the hidden labels (reporting only, as SSLBatch.y_u), how many out-of-task
images were among the kept and the dropped, is written to filter.json and results.json.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genssl.config import RunConfig
from genssl.data.split import Split
from genssl.encoders.from_run import method_from_run
from genssl.methods.typicality import score_images, score_name, threshold_from_validation, typicality_refusal
from genssl.runs.run_dir import RunDir

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


def filter_unlabeled(split: Split, images_u8: torch.Tensor, labels: torch.Tensor, num_task_classes: int,
                     filter_run: str | Path, quantile: float, kind: str = "model", device="cpu") -> tuple[Split, dict]:
    """(split with the atypical unlabeled images removed, report)."""
    method, cfg, _ = method_from_run(filter_run, "best.pt", device=device)
    if kind in ("model", "two_sided") and typicality_refusal(method) is not None:
        raise ValueError(f"data.filter_run={str(filter_run)!r}: {typicality_refusal(method)}; filter with a run of "
                         f"a method that declares a typicality score (vae_m1, vae_m2, adgm, sdgm, sgan, openmatch), "
                         f"or set data.filter_score: confidence")
    if tuple(method.spec.image_shape) != tuple(images_u8.shape[1:]):
        raise ValueError(f"data.filter_run={str(filter_run)!r} was trained on {tuple(method.spec.image_shape)} images, "
                         f"these are {tuple(images_u8.shape[1:])}")
    check_same_split(split, filter_run, cfg)
    reference = split.val if split.val.numel() else split.labeled

    def raw(idx: torch.Tensor) -> torch.Tensor:
        return score_images(method, images_u8[idx.to(images_u8.device)],
                            "confidence" if kind == "confidence" else "model").float()

    center = float(raw(reference).median()) if kind == "two_sided" else 0.0

    def scores(idx: torch.Tensor) -> torch.Tensor:
        return -(raw(idx) - center).abs() if kind == "two_sided" else raw(idx)

    threshold = threshold_from_validation(scores(reference), quantile)
    is_labeled = torch.isin(split.unlabeled, split.labeled)
    candidates = split.unlabeled[~is_labeled]  # the pool's own images, in its order
    keep = scores(candidates) >= threshold
    kept = candidates[keep]
    on_top = split.unlabeled[is_labeled]
    out_of_task = labels.cpu()[candidates] >= num_task_classes
    report = {"run": str(filter_run), "method": cfg.method_name, "score": score_name(method, "confidence" if kind == "confidence" else "model")
              + (", two-sided" if kind == "two_sided" else ""),
              "same_pool": True, "quantile": quantile, "threshold": threshold, "pool": int(split.unlabeled.numel()),
              "scored": int(candidates.numel()), "kept": int(kept.numel()), "dropped": int((~keep).sum()),
              "labeled_kept": int(on_top.numel()),
              "out_of_task_scored": int(out_of_task.sum()), "out_of_task_kept": int((out_of_task & keep).sum())}
    unlabeled = torch.cat([on_top, kept])
    gen = torch.Generator().manual_seed(split.seed)
    unlabeled = unlabeled[torch.randperm(unlabeled.numel(), generator=gen)]
    return Split(split.labeled, unlabeled, split.val, split.seed, split.labeled_in_unlabeled), report
