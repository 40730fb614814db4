"""Filtering the unlabeled pool by typicality (`data.filter_run`), before any method trains on it.

A finished run of a generative method, trained on this same unlabeled pool (same data config and seed), scores
how typical each image is (`data.filter_score: model`, its Method.typicality: the ELBO for the VAE family, log D(x)
for the SSL-GAN; genssl.methods.typicality), or that score made two-sided (`two_sided`: minus its distance
from the validation images' median, so images scoring far *above* the in-task ones are atypical too: a
likelihood can rank simpler out-of-class images higher, Nalisnick et al. 2019), or, as the non-generative
baseline, any run's classifier confidence (`confidence`: the maximum softmax probability). The threshold is the `filter_quantile` of the scores of the
validation images (the labeled ones when there are none), which are of the task's classes by construction and
unseen by the filter's training, so about (1 - quantile) of in-task images pass; unlabeled images scoring
below it are dropped. The labeled images always stay. What was kept, and, from the hidden labels
(reporting only, as SSLBatch.y_u), how many out-of-task images were among the kept and the dropped, is
written to filter.json and results.json.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genssl.data.split import Split
from genssl.encoders.from_run import method_from_run
from genssl.methods.typicality import score_images, score_name, typicality_refusal


def filter_unlabeled(split: Split, images_u8: torch.Tensor, labels: torch.Tensor, num_task_classes: int,
                     filter_run: str | Path, quantile: float, kind: str = "model", device="cpu") -> tuple[Split, dict]:
    """(split with the atypical unlabeled images removed, report)."""
    method, cfg, _ = method_from_run(filter_run, "best.pt", device=device)
    if kind in ("model", "two_sided") and typicality_refusal(method) is not None:
        raise ValueError(f"data.filter_run={str(filter_run)!r}: {typicality_refusal(method)}; filter with a run of "
                         f"vae_m1, vae_m2, adgm, sdgm or sgan, or set data.filter_score: confidence")
    if tuple(method.spec.image_shape) != tuple(images_u8.shape[1:]):
        raise ValueError(f"data.filter_run={str(filter_run)!r} was trained on {tuple(method.spec.image_shape)} images, "
                         f"these are {tuple(images_u8.shape[1:])}")
    source = Path(filter_run) / "split.pt"
    same_pool = source.is_file() and torch.equal(torch.load(source, weights_only=True)["unlabeled"].sort().values,
                                                 split.unlabeled.sort().values)
    reference = split.val if split.val.numel() else split.labeled

    def raw(idx: torch.Tensor) -> torch.Tensor:
        return score_images(method, images_u8[idx.to(images_u8.device)],
                            "confidence" if kind == "confidence" else "model").float()

    center = float(raw(reference).median()) if kind == "two_sided" else 0.0

    def scores(idx: torch.Tensor) -> torch.Tensor:
        return -(raw(idx) - center).abs() if kind == "two_sided" else raw(idx)

    threshold = float(torch.quantile(scores(reference), quantile))
    is_labeled = torch.isin(split.unlabeled, split.labeled)
    candidates = split.unlabeled[~is_labeled]  # the pool's own images, in its order
    keep = scores(candidates) >= threshold
    kept = candidates[keep]
    on_top = split.unlabeled[is_labeled]
    out_of_task = labels.cpu()[candidates] >= num_task_classes
    report = {"run": str(filter_run), "method": cfg.method_name, "score": score_name(method, "confidence" if kind == "confidence" else "model")
              + (", two-sided" if kind == "two_sided" else ""),
              "same_pool": bool(same_pool), "quantile": quantile, "threshold": threshold, "pool": int(split.unlabeled.numel()),
              "scored": int(candidates.numel()), "kept": int(kept.numel()), "dropped": int((~keep).sum()),
              "labeled_kept": int(on_top.numel()),
              "out_of_task_scored": int(out_of_task.sum()), "out_of_task_kept": int((out_of_task & keep).sum())}
    unlabeled = torch.cat([on_top, kept])
    gen = torch.Generator().manual_seed(split.seed)
    unlabeled = unlabeled[torch.randperm(unlabeled.numel(), generator=gen)]
    return Split(split.labeled, unlabeled, split.val, split.seed, split.labeled_in_unlabeled), report
