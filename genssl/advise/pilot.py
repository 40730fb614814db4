"""The pilot of `genssl advise`: each candidate's cost of one training step on the user's own images, measured on
the budget's clock (CPU seconds of one thread on a CPU, wall seconds on a GPU: genssl.training.budget) before
anything is planned.

Each candidate's method is built as the Trainer builds it (the run's split of repeat 0, its DataSpec, precision and
memory layout), initialized on a first batch, and timed over `Method.train_step` (the contract) after WARMUP
untimed steps, for at least MIN_STEPS steps and until `seconds` are spent or MAX_STEPS are done. Evaluation,
logging and checkpoints are left out: the budget clock leaves them out too.
"""

from __future__ import annotations

import torch

from genssl.config import build_run_config
from genssl.data.batching import SSLBatcher
from genssl.data.datasets import allows_hflip
from genssl.data.source import full_pool_size, load_train_test, run_split, task_data
from genssl.data.spec import DataSpec
from genssl.data.task import task_num_classes
from genssl.methods import create_method
from genssl.registry import get_method_class
from genssl.training.budget import BudgetClock, clock_kind
from genssl.training.device import autocast, resolve_device, resolve_precision

WARMUP, MIN_STEPS, MAX_STEPS = 1, 2, 200


def measure_step_costs(raws: dict[str, dict], seconds: float = 1.5) -> dict[str, dict]:
    """{name: {"s_per_step", "steps", "precision", "clock"}} of each raw run config (all on the same data)."""
    first = build_run_config(next(iter(raws.values())))
    train, _ = task_data(*load_train_test(first.data, progress=False), first.data)
    split = run_split(train, first.data, first.train.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the runs train with one thread each
    try:
        return {name: _measure(build_run_config(raw), train, split, seconds) for name, raw in raws.items()}
    finally:
        torch.set_num_threads(threads)


def _measure(cfg, train, split, seconds: float) -> dict:
    t = cfg.train
    device = resolve_device(t.device)
    cls = get_method_class(cfg.method_name)
    precision, _ = resolve_precision(t.precision, device, cls, cfg.method)
    images, labels = train.images.to(device), train.labels.to(device)
    spec = DataSpec(train.image_shape, task_num_classes(train, cfg.data.classes), len(split.labeled),
                    len(split.unlabeled), allows_hflip(cfg.data.dataset), full_pool_size(train, cfg.data, split.seed))
    torch.manual_seed(t.seed)
    method = create_method(cfg.method_name, cfg.method, spec).to(device)
    method.setup(max(t.steps, 1000), precision, t.channels_last)
    batcher = SSLBatcher(images, labels, split.labeled, split.unlabeled, t.labeled_batch_size, t.batch_size, t.seed)
    with autocast(device, precision):
        method.initialize(batcher.next())
    method.train()
    step = 0
    for _ in range(WARMUP):
        with autocast(device, precision):
            method.train_step(batcher.next(), step)
        step += 1
    clock = BudgetClock(clock_kind(device), device=device)
    n = 0
    while n < MIN_STEPS or (clock.elapsed() < seconds and n < MAX_STEPS):
        with autocast(device, precision):
            method.train_step(batcher.next(), step)
        step += 1
        n += 1
    spent = clock.elapsed()
    return {"s_per_step": spent / n, "steps": n, "precision": precision, "clock": clock.kind}
