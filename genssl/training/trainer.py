"""The one training loop. Owns device, autocast, compile, evaluation cadence, TensorBoard, checkpoints, resume
and the NaN/health guards; knows nothing about what a method computes.

A Trainer trains one run, or several seeds of one config at once (`seeds=[...]`): every seed is a *lane*
with its own run folder (genssl.runs.run_dir.RunDir), split, data order, monitor, best checkpoint, guards and
results.json, exactly as a single run writes them. How the lanes' steps are computed is the step strategy:
`SingleStep` calls `method.train_step`; `genssl.training.stacked.StackedStep` trains all lanes' parameters
stacked, in one vmapped step; `genssl.training.captured.CapturedStep` replays one lane's step as a CUDA graph.
Everything else (guards, evaluation, checkpoints, resume) is shared code. `Trainer._loop` reads as the loop it
is (step, log, evaluate, save); what each lane picks (selection, budgets, the oracle curve, validation outcomes)
is kept by its `genssl.training.bookkeeper.Bookkeeper`, whose state is what last.pt carries and resume restores.
(Over 350 lines on purpose: it is the one loop, and splitting its guards from it would hide the order they run in.)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from genssl._version import __version__
from genssl.config import RESUMABLE_OVERRIDES, RunConfig, config_differences, flatten, method_defaults
from genssl.data.batching import SSLBatcher, to_float
from genssl.data.datasets import ImageData, allows_hflip
from genssl.data.source import class_names, full_pool_size, load_train_test, run_split, task_data
from genssl.data.task import task_num_classes
from genssl.data.spec import DataSpec
from genssl.data.split import Split
from genssl.encoders.density import write_gate
from genssl.fileio import CheckpointError
from genssl.methods import create_method
from genssl.methods.base import Method
from genssl.methods.detectors import fit_gate, range_pool_draw
from genssl.registry import get_method_class
from genssl.runs.run_dir import RunDir, hold_runs
from genssl.training.bookkeeper import Bookkeeper
from genssl.training.budget import BudgetClock, clock_kind
from genssl.training.captured import CapturedStep, capture_decision
from genssl.training.device import autocast, device_kind, device_name, resolve_device, resolve_precision
from genssl.training.distributed import wrap_method_for_ddp
from genssl.training.metrics import accuracy, correct
from genssl.training.monitor import Monitor, progress
from genssl.training.pool_filter import filter_unlabeled
from genssl.training.preempt import CheckpointSignals
from genssl.training.rng import rng_state, seed_everything, set_rng_state
from genssl.training.stacked import StackedStep


class DivergenceError(RuntimeError):
    """A loss or weight went NaN/inf, or a method's health check failed; the run stopped and its last good
    checkpoint is intact."""


def default_run_dir(cfg: RunConfig) -> Path:
    name = cfg.name or f"{cfg.method_name}-{cfg.data.dataset}-{cfg.data.n_labels}-s{cfg.train.seed}"
    return Path(cfg.out_dir) / name


class SingleStep:
    """The plain strategy: one lane, the method's own train_step."""

    stacked = False

    def __init__(self, methods: list[Method]):
        (self.method,) = methods

    def __call__(self, batches, step: int) -> list[dict]:
        return [self.method.train_step(batches[0], step)]

    def lane_method(self, i: int) -> Method:
        return self.method

    def checkpoint_states(self) -> list[dict]:
        return [self.method.checkpoint_state()]

    def train(self) -> None:
        self.method.train()


def _main_pick(attr: str) -> property:
    """A Lane attribute that reads and writes its bookkeeper's main selector."""
    return property(lambda lane: getattr(lane.book.main, attr), lambda lane, v: setattr(lane.book.main, attr, v))


@dataclass
class Lane:
    """One seed's run inside a Trainer. What it has picked lives in `book` (genssl.training.bookkeeper)."""
    cfg: RunConfig
    run: RunDir
    resume: bool
    step: int = 0                                     # the step reached (restored on resume)
    split: Split | None = None
    batcher: SSLBatcher | None = None
    val: tuple = ()
    lab: tuple = ()
    monitor: Monitor | None = None
    book: Bookkeeper | None = None                    # selection, budgets, oracle curve, validation outcomes
    elapsed_before: float = 0.0
    last_good_step: int | None = None
    resume_overrides: dict = field(default_factory=dict)
    sums: dict = field(default_factory=dict)
    filter_report: dict | None = None                 # with data.filter_run: what the pool filter kept

    @property
    def seed(self) -> int:
        return self.cfg.train.seed

    # views of the bookkeeper's main pick (best.pt), not copies of it
    best_val = _main_pick("pick_val")
    best_step = _main_pick("pick_step")


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: str | Path | None = None, resume: bool = False,
                 data: tuple[ImageData, ImageData] | None = None, rank: int = 0, world_size: int = 1,
                 seeds: list[int] | None = None, run_dirs: list[str | Path] | None = None):
        """One run (cfg.train.seed, in `run_dir`), or with `seeds` several stacked seeds of cfg, each in its own
        folder (`run_dirs`, one per seed)."""
        self.cfg = cfg
        self._data = data
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        if seeds is None:
            self.run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
            self.lanes = [Lane(cfg, RunDir(self.run_dir), resume)]
        else:
            if run_dirs is None or len(run_dirs) != len(seeds) or len(set(seeds)) != len(seeds):
                raise ValueError(f"need one run folder per distinct seed, got seeds {seeds} and folders {run_dirs}")
            if world_size > 1:
                raise ValueError("stacked seeds train in one process; do not combine them with torchrun")
            self.lanes = [Lane(replace(cfg, train=replace(cfg.train, seed=s)), RunDir(d), resume)
                          for s, d in zip(seeds, run_dirs)]
            self.run_dir = self.lanes[0].run.path
        self.resume = resume

    # ------------------------------------------------------------------ set-up
    def _load_data(self, lane: Lane, train: ImageData, images, labels) -> tuple[Split, float]:
        """The lane's split (saved, or drawn and filtered now) and the seconds of pool filtering it charges to
        the budget clock."""
        d = lane.cfg.data
        charged_s = 0.0
        saved = lane.run.read_split() if lane.resume and lane.run.has(RunDir.SPLIT) else None
        seed = d.split_seed if d.split_seed is not None else lane.seed
        split = run_split(train, d, seed, saved, str(lane.run / RunDir.SPLIT))
        if d.filter_run is not None:  # a resumed run keeps the filtered split it saved
            if saved is None:
                cost = BudgetClock(clock_kind(images.device), device=images.device)  # the filter's own clock
                split, lane.filter_report = filter_unlabeled(split, images, labels,
                                                             task_num_classes(train, d.classes), d.filter_run,
                                                             d.filter_quantile, d.filter_score, images.device)
                lane.filter_report["cost_s"] = round(cost.elapsed(), 3)  # loading the filter model, scoring the pool
                if lane.cfg.train.budget_counts_filter:
                    charged_s = lane.filter_report["cost_s"]
                if self.is_main:
                    lane.run.write_filter_report(lane.filter_report)
            else:
                lane.filter_report = lane.run.read_filter_report()
        if saved is None and self.is_main:
            lane.run.write_split(split)
        if split.unlabeled.numel() == 0:
            raise ValueError("the unlabeled pool is empty: lower data.n_labels/n_val or set labeled_in_unlabeled")
        return split, charged_s

    def _check_resume_compatible(self, lane: Lane, ckpt: dict, path: Path) -> None:
        if ckpt["method"] != lane.cfg.method_name:
            raise CheckpointError(f"{path}: checkpoint is from method {ckpt['method']!r}, but the config asks for "
                                  f"{lane.cfg.method_name!r}; resume with the run's own config")
        saved, now = flatten(ckpt["config"]), flatten(lane.cfg.to_dict())
        # a key added since the checkpoint was written resumes when the run holds its default
        changed, _ = config_differences(saved, now, method_defaults(lane.cfg.method_name),
                                        ignore=RESUMABLE_OVERRIDES | {"name"})
        if changed:
            diffs = "; ".join(changed)
            raise CheckpointError(f"{path}: the config differs from the checkpoint's in ways that change the "
                                  f"computation ({diffs}). Only {', '.join(sorted(RESUMABLE_OVERRIDES))} may "
                                  f"change on resume")
        lane.resume_overrides = {k: (saved.get(k), now.get(k)) for k in RESUMABLE_OVERRIDES
                                 if saved.get(k) != now.get(k)}

    def _build_lane(self, lane: Lane, train: ImageData, images, labels, device) -> Method:
        """Split, batcher and method of one lane: fresh (initialized) or restored from its last checkpoint."""
        t = lane.cfg.train
        if self.is_main:
            lane.run.prepare(lane.resume)
        seed_everything(lane.seed + self.rank)
        split, charged_s = self._load_data(lane, train, images, labels)
        lane.split = split
        lane.val = (images[split.val.to(device)], labels[split.val.to(device)])
        lane.lab = (to_float(images[split.labeled.to(device)]), labels[split.labeled.to(device)])
        self.spec = DataSpec(train.image_shape, task_num_classes(train, lane.cfg.data.classes), len(split.labeled),
                             len(split.unlabeled), allows_hflip(lane.cfg.data.dataset),
                             full_pool_size(train, lane.cfg.data, split.seed))
        lane.book = Bookkeeper(t.select, len(split.val), t.budgets_s, clock_before=charged_s)
        method = create_method(lane.cfg.method_name, lane.cfg.method, self.spec).to(device)
        method.setup(t.steps, self.precision, t.channels_last)
        lane.batcher = SSLBatcher(images, labels, split.labeled, split.unlabeled, t.labeled_batch_size,
                                  t.batch_size, lane.seed, shard=(self.rank, self.world_size))
        if lane.resume:
            ckpt, name = lane.run.load_resume_checkpoint(map_location=device)
            self._check_resume_compatible(lane, ckpt, lane.run / name)
            method.load_checkpoint_state(ckpt["method_state"])
            lane.batcher.load_state_dict(ckpt["batcher"])
            ranks_rng = ckpt.get("rng_ranks")  # data-parallel runs keep every rank's noise stream
            set_rng_state(ranks_rng[self.rank] if ranks_rng and len(ranks_rng) == self.world_size else ckpt["rng"])
            lane.step = ckpt["step"]
            lane.elapsed_before = ckpt.get("wall_time_s", 0.0)
            lane.book.load_state_dict(ckpt, lane.run / RunDir.LAST)
            self._adopt_newer_best(lane)
            lane.last_good_step = lane.step
        else:
            lane.step = 0
            with autocast(device, self.precision):
                method.initialize(lane.batcher.next())
        return method

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict:
        """Train the one run; returns its results (see `fit_all` for stacked seeds)."""
        if len(self.lanes) != 1:
            raise ValueError(f"this Trainer trains {len(self.lanes)} seeds: call fit_all()")
        return self.fit_all()[0]

    def fit_all(self) -> list[dict]:
        """Train every lane; returns their results. Each lane's run folder is locked for the whole run (RunBusy if
        another live process trains it; genssl.runs.lock). SIGUSR2 / SIGTERM (a Slurm preemption) save last.pt at
        the next step boundary, then take their course (genssl.training.preempt)."""
        with hold_runs([lane.run.path for lane in self.lanes] if self.is_main else []), \
                CheckpointSignals(enabled=self.world_size == 1) as self._signals:
            return self._fit_all()

    def _fit_all(self) -> list[dict]:
        t = self.cfg.train
        self._start_time = time.perf_counter()
        step = self._set_up()
        bar = progress(t.steps, step, self._description(), t.progress and self.is_main)
        step, stopped_at_budget = self._loop(step, bar)
        bar.close()
        wall = time.perf_counter() - self._start_time
        self.budget_clock_s = self.clock.elapsed() / len(self.lanes)
        if self.ddp:
            self.ddp.barrier()  # rank 0 has finished writing best.pt
        results = [self._finish(lane, self.strategy.lane_method(i), *self._test, wall, self.device, step,
                                stopped_at_budget)
                   for i, lane in enumerate(self.lanes)]
        self.method = self.strategy.lane_method(0)
        return results

    def _set_up(self) -> int:
        """Device, data, every lane (fresh or resumed), the budget clock, the step strategy and the monitors;
        returns the step the lanes start from. The clock starts here: what follows it is on the clock, as the
        steps are."""
        cfg, t = self.cfg, self.cfg.train
        self.device = device = resolve_device(t.device)
        method_class = get_method_class(cfg.method_name)
        self.precision, self.precision_reason = resolve_precision(t.precision, device, method_class, cfg.method)
        if t.threads:
            torch.set_num_threads(t.threads)
        train, test = task_data(*(self._data if self._data is not None else load_train_test(cfg.data, t.progress)),
                                cfg.data)
        self.class_names = class_names(train, cfg.data.dataset, cfg.data.classes)
        if t.budgets_s and self.world_size > 1:
            raise ValueError("train.budgets_s measure one process's cost; they do not apply to a torchrun run")
        images, labels = train.images.to(device), train.labels.to(device)
        methods = [self._build_lane(lane, train, images, labels, device) for lane in self.lanes]
        steps = {lane.step for lane in self.lanes}
        if len(steps) != 1:
            raise CheckpointError(f"stacked seeds resume from the same step, but their last checkpoints are at "
                                  f"steps {sorted(steps)}; resume them one by one (genssl train --resume per folder)")
        step = steps.pop()
        self.clock = BudgetClock(clock_kind(device), before=self.lanes[0].book.clock_before, device=device)
        self._test = (test.images.to(device), test.labels.to(device))
        self.strategy = self._make_strategy(methods, method_class)
        for lane in self.lanes:
            if self.is_main:
                lane.run.write_config(lane.cfg)
            # Events up to the saved step were written before the checkpoint; later ones belong to the lost timeline.
            lane.monitor = Monitor(lane.run.tb if self.is_main else None,
                                   purge_step=step + 1 if lane.resume else None)
        return step

    def _make_strategy(self, methods: list[Method], method_class):
        """How the lanes' steps are computed (stacked, captured or single), then DDP and compilation."""
        cfg, t, device = self.cfg, self.cfg.train, self.device
        self.cuda_graph, self.cuda_graph_reason = capture_decision(
            t.cuda_graph, device, method_class, cfg.method, self.precision, t.compile, self.world_size, len(methods))
        if len(methods) > 1:
            strategy = StackedStep(methods, t.steps, self.precision)
            if self.lanes[0].resume:  # the lanes share one noise stream, saved in every lane's checkpoint
                set_rng_state(self.lanes[0].run.load_resume_checkpoint(map_location=device)[0]["rng"])
        else:
            strategy = CapturedStep(methods) if self.cuda_graph else SingleStep(methods)
        captured = isinstance(strategy, CapturedStep)
        self.step_mode = ("captured" if strategy.capture else "static") if captured else "eager"
        self.ddp = None
        if self.world_size > 1:  # after initialize/resume, so every rank starts from rank 0's state
            self.ddp = wrap_method_for_ddp(methods[0])
        if t.compile:
            for m in methods:
                m.compile_networks()
        return strategy

    def _description(self) -> str:
        t = self.cfg.train
        return (f"{self.cfg.method_name} {self.precision}"
                + (f" ({self.precision_reason})" if t.precision == "auto" else "")
                + (f" x{len(self.lanes)} seeds" if len(self.lanes) > 1 else "")
                + (f", cuda graph {self.cuda_graph_reason}"
                   if self.device.type == "cuda" and t.cuda_graph != "off" else ""))

    # ------------------------------------------------------------------ the loop
    def _loop(self, step: int, bar) -> tuple[int, bool]:
        """Step, log, evaluate, save, until train.steps (or the last budget with train.stop_at_budget);
        returns the step reached and whether the budget stopped it."""
        t = self.cfg.train
        stop_at = max(t.budgets_s) if t.budgets_s and t.stop_at_budget else None
        self._unlogged = 0  # steps whose logs are not yet flushed (and so whose losses are not yet checked)
        self.strategy.train()
        while step < t.steps:
            if stop_at is not None and self.clock.elapsed() / len(self.lanes) > stop_at:
                return step, True  # a resumed run whose budget was already spent
            self._train_step(step)
            step += 1
            boundary = step == t.steps
            spent = self._reach_budgets(step)
            self._log(step, boundary, bar)
            if step % t.eval_every == 0 or boundary:
                self._evaluate(step, bar)
            self._save(step, boundary)
            bar.update(1)
            if stop_at is not None and spent > stop_at and step < t.steps:
                self._flush_unlogged(step)
                self._save_last(step)
                return step, True
        return step, False

    def _train_step(self, step: int) -> None:
        """One step of every lane; its logs are summed on the device until the next flush."""
        batches = [lane.batcher.next() for lane in self.lanes]
        with autocast(self.device, self.precision):
            lane_logs = self.strategy(batches, step)
        for lane, logs in zip(self.lanes, lane_logs):
            for k, v in logs.items():
                v = v.detach().float()
                lane.sums[k] = lane.sums[k] + v if k in lane.sums else v
        self._unlogged += 1

    def _reach_budgets(self, step: int) -> float | None:
        """The budget clock read where the step's work ends, before the evaluation and saving that follow it;
        every lane's bookkeeper marks the budgets `step` is within. None without budgets."""
        if not self.cfg.train.budgets_s:
            return None
        spent = self.clock.elapsed() / len(self.lanes)
        for lane in self.lanes:
            lane.book.reach(step, spent)
        return spent

    def _log(self, step: int, boundary: bool, bar) -> None:
        """Flush the logs every log_every steps, and before every evaluation and save: never evaluate or save
        weights from steps whose losses were not yet checked."""
        t = self.cfg.train
        shown = step % t.log_every == 0 or boundary
        if not (shown or step % t.eval_every == 0 or step % t.ckpt_every == 0):
            return
        lane_means = self._flush(step)
        if shown:  # every seed's value, as val_acc
            bar.set_postfix({k.split("/")[-1]: ",".join(f"{m[k]:.3g}" for m in lane_means)
                             for k in lane_means[0]}, refresh=False)

    def _flush(self, at_step: int) -> list[dict[str, float]]:
        """Each lane's mean logs since the last flush, checked and written to its TensorBoard; one dict per lane."""
        lane_means = []
        for i, lane in enumerate(self.lanes):
            means = self._flush_logs(lane, self.strategy.lane_method(i), self._unlogged, at_step)
            lane.monitor.scalars(means, at_step)
            lane_means.append(means)
        self._unlogged = 0
        return lane_means

    def _flush_unlogged(self, at_step: int) -> None:
        if self._unlogged:
            self._flush(at_step)

    def _save(self, step: int, boundary: bool) -> None:
        """last.pt every ckpt_every steps and at the end; on a preemption signal, save here (checked losses
        only), then let the signal act."""
        if step % self.cfg.train.ckpt_every == 0 or boundary or self._signals.pending is not None:
            self._flush_unlogged(step)
            self._save_last(step)
        if self._signals.pending is not None:
            self._signals.hand_over()

    def _save_last(self, at_step: int) -> None:
        """Every lane's last.pt: method, data order, RNG and its bookkeeper's state; off the budget clock."""
        with self.clock.paused():
            for i, lane in enumerate(self.lanes):
                self._check_weights_finite(lane, self.strategy.lane_method(i), at_step)
            if self.ddp:
                self.ddp.sync_buffers()
            rng_ranks = self.ddp.gather(rng_state()) if self.ddp else None
            wall = time.perf_counter() - self._start_time
            spec = self.strategy.lane_method(0).spec.to_dict()
            for lane, state in zip(self.lanes, self.strategy.checkpoint_states()):
                if self.is_main:
                    lane.run.save_checkpoint(RunDir.LAST, {
                        "method": lane.cfg.method_name, "config": lane.cfg.to_dict(), "data_spec": spec,
                        "class_names": self.class_names, "method_state": state,
                        "batcher": lane.batcher.state_dict(), "rng": rng_state(), "rng_ranks": rng_ranks,
                        "step": at_step, "wall_time_s": lane.elapsed_before + wall,
                        **lane.book.state_dict(self.clock.elapsed()),
                    })
                lane.last_good_step = at_step

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, at_step: int, bar) -> None:
        """Validate every lane (on the budget clock only with train.budget_counts_validation), then record it
        off the clock."""
        t, clock = self.cfg.train, self.clock
        accs = []
        for i, lane in enumerate(self.lanes):
            method = self.strategy.lane_method(i)
            n_val = lane.val[0].shape[0]
            with clock.counted_if(t.budget_counts_validation):
                self._check_weights_finite(lane, method, at_step)
                if self.ddp:  # every rank evaluates rank 0's running statistics, so all take the same decisions
                    self.ddp.sync_buffers()
                method.fit_readout(*lane.lab, seed=lane.seed)
                val_acc = self._validate(lane, method, n_val)
            clock_s = clock.elapsed() / len(self.lanes)
            with clock.paused():  # bookkeeping, checkpoint writes and image logging are off the clock
                self._record_evaluation(lane, method, at_step, clock_s, val_acc, *self._test)
            accs.append(val_acc)
        self.strategy.train()
        bar.set_postfix_str("val_acc=" + ",".join(f"{a:.4f}" for a in accs)
                            + " best=" + ",".join(f"{lane.book.best_val:.4f}" for lane in self.lanes),
                            refresh=False)

    def _record_evaluation(self, lane: Lane, method: Method, at_step: int, clock_s: float, val_acc: float,
                           x_test, y_test) -> None:
        """An evaluation's bookkeeping: the curve point (with the oracle's test score), each selector's offer and
        the checkpoints it keeps, and the sample images. The caller keeps it off the budget clock."""
        t = lane.cfg.train
        point = {"step": at_step, "clock_s": round(clock_s, 3), "val_acc": val_acc}
        if lane.val[0].shape[0]:
            lane.monitor.scalars({"val/acc": val_acc}, at_step)
        if t.oracle:  # study only: logged under "oracle", never read by a selector
            point["oracle_test_acc"] = accuracy(method, x_test, y_test, t.eval_batch_size, self.precision)
            lane.monitor.scalars({"oracle/test_acc": point["oracle_test_acc"]}, at_step)
        taken = lane.book.record(point, clock_s)
        if self.is_main and taken:
            payload = {"method": lane.cfg.method_name, "config": lane.cfg.to_dict(),
                       "data_spec": method.spec.to_dict(), "class_names": self.class_names,
                       "model": method.state_dict(), "step": at_step, "val_acc": val_acc, "select": t.select}
            for budget in taken:
                lane.run.save_checkpoint(RunDir.BEST if budget is None else RunDir.budget_checkpoint(budget), payload)
        if self.is_main:
            with torch.no_grad():
                method.eval()
                for tag, imgs in method.eval_images(to_float(lane.val[0][:64])).items():
                    imgs, nrow = imgs if isinstance(imgs, tuple) else (imgs, None)
                    lane.monitor.images(tag, imgs, at_step, nrow)

    @staticmethod
    def _range_pool(lane: Lane) -> torch.Tensor:
        """The unlabeled images the gate's input range reads (genssl.methods.detectors.range_images)."""
        b = lane.batcher
        return b.images[b.unlabeled_idx[range_pool_draw(len(b.unlabeled_idx)).to(b.device)]]

    def _finish(self, lane: Lane, method: Method, x_test, y_test, wall: float, device, final_step: int,
                stopped_at_budget: bool) -> dict:
        """The final report: the weights the selection policy chose on validation, and those it chose within
        each budget, each evaluated once on the test set."""
        t = lane.cfg.train

        def score(name: str) -> float:
            chosen = lane.run.load_checkpoint(name, map_location=device)
            method.load_state_dict(chosen["model"])
            method.fit_readout(*lane.lab, seed=lane.seed)
            return accuracy(method, x_test, y_test, t.eval_batch_size, self.precision)

        budgets = lane.book.budget_rows(self.budget_clock_s, lambda b: score(RunDir.budget_checkpoint(b)))
        test_acc = score(RunDir.BEST)  # last, so `method` ends with the run's own pick
        if self.is_main and lane.val[0].shape[0]:  # the pick's atypical-input gate, for genssl predict
            write_gate(lane.run.path, fit_gate(method, lane.lab, lane.val, t.eval_batch_size, lane.best_step,
                                               pool=self._range_pool(lane)))
        n = len(self.lanes)
        results = {
            "method": lane.cfg.method_name, "dataset": lane.cfg.data.dataset, "n_labels": lane.cfg.data.n_labels,
            "seed": lane.seed, "test_acc": test_acc, "best_val_acc": lane.best_val, "best_step": lane.best_step,
            "select": t.select, "n_val": int(lane.val[0].shape[0]), "n_unlabeled": int(lane.split.unlabeled.numel()),
            "classes": lane.cfg.data.classes, "mismatch": lane.cfg.data.mismatch,
            "mismatch_mode": lane.cfg.data.mismatch_mode,
            "steps": final_step, "scheduled_steps": t.steps, "stopped_at_budget": stopped_at_budget,
            "budget_clock": self.clock.kind, "budget_clock_s": self.budget_clock_s, "budgets": budgets,
            "curve": lane.book.curve, "filter": lane.filter_report,
            "filter_cost_s": (lane.filter_report or {}).get("cost_s"),
            "budget_counts_filter": t.budget_counts_filter,
            "budget_counts_validation": t.budget_counts_validation,
            "wall_time_s": lane.elapsed_before + wall / n, "device": device_name(device), "threads": t.threads,
            "device_kind": device_kind(device),
            "precision": self.precision, "precision_reason": self.precision_reason,
            "channels_last": method.channels_last, "torch": torch.__version__,
            "cuda_graph": self.step_mode, "cuda_graph_reason": self.cuda_graph_reason,
            "genssl": __version__,
            "config_digest": lane.cfg.digest(),
            "resume_overrides": {k: list(v) for k, v in lane.resume_overrides.items()},
        }
        if n > 1:
            results |= {"group_wall_time_s": wall, "seeds_trained_together": n}
        if self.is_main:
            self._log_final(lane, method, results)
            if lane.book.val_outcomes:
                lane.run.write_val_outcomes(torch.stack(lane.book.val_outcomes), [p["step"] for p in lane.book.curve],
                                            lane.split.val)
            lane.run.write_results(results)
        lane.monitor.close()
        return results

    # ------------------------------------------------------------------ guards
    def _validate(self, lane: Lane, method: Method, n_val: int) -> float:
        """Validation accuracy (NaN without validation images); with train.oracle, also which images were right,
        so a study can re-select on subsets of them."""
        t = lane.cfg.train
        if not t.oracle:
            return accuracy(method, *lane.val, t.eval_batch_size, self.precision) if n_val else float("nan")
        hits = correct(method, *lane.val, t.eval_batch_size, self.precision)
        lane.book.val_outcomes.append(hits.cpu())
        return float(hits.float().mean()) if n_val else float("nan")

    def _adopt_newer_best(self, lane: Lane) -> None:
        """A run killed after an evaluation but before its next checkpoint leaves a best.pt newer than last.pt.
        Keep it as the incumbent, so best.pt and the recorded best accuracy always describe the same weights
        (a deterministic replay reaches the same choice; a non-deterministic one, e.g. on GPU, stays consistent)."""
        if not lane.run.has(RunDir.BEST):
            return
        best = lane.run.load_checkpoint(RunDir.BEST)
        if best.get("method") == lane.cfg.method_name and best.get("step", -1) > lane.step:
            lane.book.adopt(int(best["step"]), float(best["val_acc"]))

    def _flush_logs(self, lane: Lane, method: Method, count: int, step: int) -> dict[str, float]:
        sums, lane.sums = lane.sums, {}
        if self.ddp:
            sums = self.ddp.mean_logs(sums)  # global-batch means; every rank then takes the same decisions
        means = {k: float(v) / count for k, v in sums.items()}  # one host sync per log interval
        bad = {k: v for k, v in means.items() if not math.isfinite(v)}
        if bad:
            self._diverged(lane, step, ", ".join(f"{k} = {v}" for k, v in bad.items()))
        problem = method.check_health(means, step)
        if problem:
            self._diverged(lane, step, problem)
        return means

    def _check_weights_finite(self, lane: Lane, method: Method, step: int) -> None:
        for name, p in method.named_parameters():
            if not torch.isfinite(p).all():
                self._diverged(lane, step, f"parameter {name} is not finite")

    def _diverged(self, lane: Lane, step: int, what: str) -> None:
        last = lane.run / RunDir.LAST
        kept = (f"the last good checkpoint {last} (step {lane.last_good_step}) is intact"
                if lane.last_good_step is not None and last.is_file() else "no checkpoint had been written yet")
        who = f"method {lane.cfg.method_name!r}" + (f" (seed {lane.seed})" if len(self.lanes) > 1 else "")
        raise DivergenceError(f"{who} diverged by step {step}: {what}. Stopped; {kept}. "
                              f"Try a lower learning rate, precision=fp32, or a different seed.")

    def _log_final(self, lane: Lane, method: Method, results: dict) -> None:
        x_val, y_val = lane.val
        if method.has_features:
            with torch.no_grad():
                method.eval()
                n = min(500, x_val.shape[0])
                feats = method.encode(to_float(x_val[:n]))
                lane.monitor.embedding(feats, y_val[:n], to_float(x_val[:n]), results["steps"])
        hp = {k: v for k, v in flatten(lane.cfg.to_dict()).items() if isinstance(v, (int, float, str, bool))}
        lane.monitor.hparams(hp, {"hparam/test_acc": results["test_acc"],
                                  "hparam/best_val_acc": results["best_val_acc"]})
