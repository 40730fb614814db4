"""`genssl train CONFIG --seeds 0,1,2`: several seeds of one config, each in its own run folder, stacked in
one process when the method supports it (genssl.training.stacked), else one after another."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from genssl.config import RunConfig
from genssl.registry import get_method_class
from genssl.runs.run_dir import RunDir
from genssl.training.device import resolve_device
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


STACK_CHOICES = ("auto", "on", "off")


def stack_decision(cfg: RunConfig, n_seeds: int, stack: str, resumable: list[bool], resume: bool) -> tuple[bool, str]:
    """(stack the seeds?, why). `auto` stacks on CUDA only: on a CPU, stacked sgan seeds measured no cheaper per
    step than separate runs (5 seeds cost 5.3x one in bf16, 5.4x in fp32, on an AMX Xeon; benchmarks/README.md),
    so there the seeds run one after another."""
    if stack not in STACK_CHOICES:
        raise ValueError(f"stack must be one of {', '.join(STACK_CHOICES)}, got {stack!r}")
    name = cfg.method_name
    if n_seeds < 2 or stack == "off":
        return False, "one seed" if n_seeds < 2 else "--stack off"
    refusal = get_method_class(name).stacking_refusal(cfg.method)
    if refusal:
        return False, refusal
    if resume and not all(resumable):
        return False, "some seeds have no checkpoint to resume from"
    if stack == "on":
        return True, "--stack on"
    if resolve_device(cfg.train.device).type == "cuda":
        return True, "auto: stacked on CUDA"
    return False, ("auto: on a CPU stacked seeds cost as much per step as separate runs (benchmarks/README.md); "
                   "--stack on forces stacking")


def train_seeds(cfg: RunConfig, seeds: list[int], run_dir: str | None = None, resume: bool = False,
                together: bool | None = None, data=None, stack: str = "auto") -> list[dict]:
    """Train `seeds` of `cfg`, each in its own folder with its own results.json: stacked in one process
    (genssl.training.stacked) or one after another, as `together` says, else as `stack` decides
    (`stack_decision`, which also says why; printed to stderr)."""
    dirs = seed_run_dirs(cfg, seeds, run_dir)
    resumable = [RunDir(d).has(RunDir.LAST) or RunDir(d).has(RunDir.PREV) for d in dirs]
    if together is None:
        together, why = stack_decision(cfg, len(seeds), stack, resumable, resume)
        print(f"genssl: {len(seeds)} seeds {'stacked in one process' if together else 'one after another'} "
              f"({why})", file=sys.stderr)
    if together:
        return Trainer(cfg, resume=resume, data=data, seeds=seeds, run_dirs=dirs).fit_all()
    return [Trainer(replace(cfg, train=replace(cfg.train, seed=s)), run_dir=d, resume=resume and r,
                    data=data).fit() for s, d, r in zip(seeds, dirs, resumable)]
