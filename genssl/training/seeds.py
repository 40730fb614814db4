"""`genssl train CONFIG --seeds 0,1,2`: several seeds of one config, each in its own run folder, stacked in
one process when the method supports it (genssl.training.stacked), else one after another."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from genssl.config import RunConfig
from genssl.registry import get_method_class
from genssl.runs.run_dir import RunDir
from genssl.training.trainer import Trainer, default_run_dir


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' or '0-4' (inclusive) -> [0, 1, 2, ...]."""
    try:
        if "-" in text.strip("-") and "," not in text:
            lo, hi = (int(v) for v in text.split("-"))
            seeds = list(range(lo, hi + 1))
        else:
            seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--seeds: expected a list like 0,1,2 or a range like 0-4, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: expected distinct seeds, got {text!r}")
    return seeds


def seed_run_dirs(cfg: RunConfig, seeds: list[int], run_dir: str | None) -> list[Path]:
    """<run_dir>/s<seed> when a folder is given, else each seed's default folder (its name + -s<seed>)."""
    if run_dir is not None:
        return [Path(run_dir) / f"s{s}" for s in seeds]
    return [default_run_dir(replace(cfg, name=f"{cfg.name}-s{s}" if cfg.name else None,
                                    train=replace(cfg.train, seed=s))) for s in seeds]


def train_seeds(cfg: RunConfig, seeds: list[int], run_dir: str | None = None, resume: bool = False,
                together: bool | None = None, data=None) -> list[dict]:
    """Train `seeds` of `cfg`: stacked in one process when the method supports it (a resume too, when every seed
    has a last checkpoint), else one after another. Each seed gets its own folder and results.json either way."""
    dirs = seed_run_dirs(cfg, seeds, run_dir)
    resumable = [RunDir(d).has(RunDir.LAST) or RunDir(d).has(RunDir.PREV) for d in dirs]
    if together is None:
        together = (len(seeds) > 1 and get_method_class(cfg.method_name).supports_stacking
                    and (not resume or all(resumable)))
    if together:
        return Trainer(cfg, resume=resume, data=data, seeds=seeds, run_dirs=dirs).fit_all()
    return [Trainer(replace(cfg, train=replace(cfg.train, seed=s)), run_dir=d, resume=resume and r,
                    data=data).fit() for s, d, r in zip(seeds, dirs, resumable)]
