"""Filtering the unlabeled pool by typicality (`data.filter_run`), before any method trains on it.

A finished run of a generative method, trained on this same unlabeled pool (same data config and seed), scores
how typical each image is (its Method.typicality: the ELBO for the VAE family, log D(x) for the SSL-GAN). The
threshold is the `filter_quantile` of the scores of the run's own labeled and validation images, which are
of the task's classes by construction, so about (1 - quantile) of in-task images pass; unlabeled images
scoring below it are dropped. The labeled images always stay. What was kept, and, from the hidden labels
(reporting only, as SSLBatch.y_u), how many out-of-task images were among the kept and the dropped, is
written to filter.json and results.json.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genssl.data.batching import to_float
from genssl.data.split import Split
from genssl.encoders.from_run import method_from_run


@torch.no_grad()
def typicality_scores(method, images_u8: torch.Tensor, idx: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """(len(idx),) typicality of images_u8[idx], in eval mode, in batches, on the method's device."""
    method.eval()
    device = next(method.parameters()).device
    out = [method.typicality(to_float(images_u8[idx[i:i + batch_size].to(images_u8.device)].to(device))).float().cpu()
           for i in range(0, idx.numel(), batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


def filter_unlabeled(split: Split, images_u8: torch.Tensor, labels: torch.Tensor, num_task_classes: int,
                     filter_run: str | Path, quantile: float, device="cpu") -> tuple[Split, dict]:
    """(split with the atypical unlabeled images removed, report)."""
    method, cfg, _ = method_from_run(filter_run, "best.pt", device=device)
    if not getattr(type(method), "scores_typicality", False):
        raise ValueError(f"data.filter_run={str(filter_run)!r} is a {cfg.method_name!r} run, which cannot score how "
                         f"typical an image is; use a run of a generative method (vae_m1, vae_m2, adgm, sdgm, sgan)")
    if tuple(method.spec.image_shape) != tuple(images_u8.shape[1:]):
        raise ValueError(f"data.filter_run={str(filter_run)!r} was trained on {tuple(method.spec.image_shape)} images, "
                         f"these are {tuple(images_u8.shape[1:])}")
    source = Path(filter_run) / "split.pt"
    same_pool = source.is_file() and torch.equal(torch.load(source, weights_only=True)["unlabeled"].sort().values,
                                                 split.unlabeled.sort().values)
    reference = torch.cat([split.labeled, split.val])
    threshold = float(torch.quantile(typicality_scores(method, images_u8, reference), quantile))
    labeled = set(split.labeled.tolist())
    candidates = torch.tensor([i for i in split.unlabeled.tolist() if i not in labeled], dtype=torch.long)
    scores = typicality_scores(method, images_u8, candidates)
    keep = scores >= threshold
    kept = candidates[keep]
    on_top = split.unlabeled[torch.isin(split.unlabeled, split.labeled)]
    out_of_task = labels.cpu()[candidates] >= num_task_classes
    report = {"run": str(filter_run), "method": cfg.method_name, "score": getattr(type(method), "typicality_score", ""),
              "same_pool": bool(same_pool), "quantile": quantile, "threshold": threshold, "pool": int(split.unlabeled.numel()),
              "scored": int(candidates.numel()), "kept": int(kept.numel()), "dropped": int((~keep).sum()),
              "labeled_kept": int(on_top.numel()),
              "out_of_task_scored": int(out_of_task.sum()), "out_of_task_kept": int((out_of_task & keep).sum())}
    unlabeled = torch.cat([on_top, kept])
    gen = torch.Generator().manual_seed(split.seed)
    unlabeled = unlabeled[torch.randperm(unlabeled.numel(), generator=gen)]
    return Split(split.labeled, unlabeled, split.val, split.seed, split.labeled_in_unlabeled), report
