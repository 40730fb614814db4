"""`genssl compare`: run (or reuse) every run of a grid (genssl/compare/grid.py, where its YAML is described) and
report them in one folder.

Runs land in ``<runs>/<name>-n<labels>-s<seed>``. A run whose results.json exists is reused (after
checking its config still matches the grid's); one with only last.pt is resumed; so a stopped grid picks up
where it left off. A run whose config names another run's folder (M1+M2 naming its M1) starts once that run
has finished, and records in upstream.json which results it was built on, so it is not reused once those
runs change. An executor (genssl/compare/executors.py: this process, local processes, or Slurm through
submitit) runs them, all through one scheduler (`_schedule`); the report (genssl/compare/report.py) is rewritten
from all runs once every run has ended, and `collect_grid` (--collect) rewrites it from the run folders without
running anything.

A run trains only while its process holds the run folder's lock (genssl.runs.lock): a run that another live process
trains (a second `genssl compare` on the same grid, a Slurm job still running) is deferred behind the others, then
waited for, and reused once that process has finished it. A run that raises, whatever the exception, writes its
traceback to its folder's error.txt and is reported as failed; the rest of the grid goes on, and `run_grid` raises
GridFailed (the CLI exits 1) after writing the report.

With --pack-seeds (`pack_seeds`: auto packs on CUDA), the seeds of an entry and label count share one process,
their parameters stacked (genssl.training.stacked: where a step is launch-bound, ten seeds cost ~2.5 of one on an
H200). A pack is one unit for the executor; its runs still land in their own folders with their own results.json,
so reuse and resume stay per run. Entries that cannot stack, and seeds whose checkpoints stopped at different
steps, run unpacked, and the grid says why.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from genssl.compare import samples as compare_samples
from genssl.compare.executors import make_executor
from genssl.compare.grid import GridRun, grid_reference, load_grid
from genssl.compare.report import fmt_duration, markdown_table, write_report
from genssl.compare.verdicts import undecidable_tables
from genssl.config import (REPORTING_KEYS, ConfigError, build_run_config, config_differences, flatten, load_yaml,
                           merge, method_defaults)
from genssl.registry import get_method_class
from genssl.runs.run_dir import RunBusy, RunDir, hold_runs
from genssl.training.budget import clock_kind
from genssl.training.device import device_kind, resolve_device, resolve_precision
from genssl.training.trainer import Trainer

__all__ = ["PACK_CHOICES", "Busy", "GridFailed", "GridRun", "collect_grid", "finished_results", "load_grid",
           "pack_runs", "run_grid", "run_unit"]

PACK_CHOICES = ("auto", "on", "off")


# ---------------------------------------------------------------------------------------------- one run
def finished_results(run: GridRun) -> dict | None:
    """The results of a finished run in run.run_dir, or None; raises if that run was made with another config."""
    rd = RunDir(run.run_dir)
    if not rd.has(RunDir.RESULTS):
        return None
    saved_path = rd.config_path
    results = rd.read_results()
    if saved_path.is_file():
        cfg = build_run_config(run.raw) if run.samples is None else None
        now = flatten(run.raw if cfg is None else cfg.to_dict())
        changed, assumed = config_differences(flatten(load_yaml(saved_path)), now,
                                              method_defaults(cfg.method_name) if cfg is not None else {},
                                              ignore=REPORTING_KEYS)
        if cfg is not None and cfg.train.budgets_s:
            changed += _cost_differences(results, cfg)
        if changed:
            raise ConfigError(f"{run.run_dir} holds a finished run made with another config ({'; '.join(changed)}). "
                              f"Delete that folder to rerun it, or write the grid elsewhere with --out")
        if assumed:
            results = {**results, "reused_with_defaults": assumed}
    _check_upstream(run)
    return results


def _cost_differences(results: dict, cfg) -> list[str]:
    """Under equal-cost budgets, a run is reused only where its clock measured the same thing: the same threads,
    device, resolved precision and clock kind as this grid's run would have here."""
    device = resolve_device(cfg.train.device)
    precision, _ = resolve_precision(cfg.train.precision, device, get_method_class(cfg.method_name), cfg.method)
    expected = {"threads": cfg.train.threads, "device_kind": device_kind(device), "precision": precision,
                "budget_clock": clock_kind(device)}
    return [f"{k}: {results.get(k)!r} -> {v!r} (equal-cost budgets reuse only runs timed alike)"
            for k, v in expected.items() if results.get(k) != v]


def _fingerprint(results_path: Path) -> str | None:
    return hashlib.sha256(results_path.read_bytes()).hexdigest()[:16] if results_path.is_file() else None


def upstream_fingerprints(run: GridRun) -> dict[str, str | None]:
    """{dependency run name: fingerprint of its results.json} for the runs `run` was built from."""
    return {d: _fingerprint(run.run_dir.parent / d / RunDir.RESULTS) for d in run.deps}


def _check_upstream(run: GridRun) -> None:
    """A derived run (M1+M2 on its M1, a samples classifier on its GAN) is only as current as the runs it was
    built from: refuse to reuse it once one of them was rerun or removed. Runs written before upstream.json
    existed are not checked."""
    saved = RunDir(run.run_dir).read_upstream()
    if not run.deps or saved is None:
        return
    now = upstream_fingerprints(run)
    stale = sorted(d for d in run.deps if saved.get(d) != now[d])
    if stale:
        what = "; ".join(f"{d} {'has no results.json now' if now[d] is None else 'has been rerun since'}"
                         for d in stale)
        raise ConfigError(f"{run.run_dir} was built on runs that changed ({what}), so its results are stale. "
                          f"Delete that folder to rebuild it on the current runs")


def _run_config(run: GridRun, progress: bool, threads: int):
    raw = run.raw if progress else merge(run.raw, {"train": {"progress": False}})
    if threads and not raw.get("train", {}).get("threads"):
        raw = merge(raw, {"train": {"threads": threads}})
    return build_run_config(raw)


def _resumable(run: GridRun) -> bool:
    rd = RunDir(run.run_dir)
    return rd.has(RunDir.LAST) or rd.has(RunDir.PREV)  # prev.pt alone: stopped between a save's renames


@dataclass(frozen=True)
class Busy:
    """A unit not run: another live process holds one of its run folders; `holder` says which."""
    holder: str


def run_unit(unit: list[GridRun], data=None, progress: bool = False, threads: int = 0,
             wait: bool = False, stack: str = "on") -> dict[str, tuple[dict, bool]] | Busy:
    """{run name: (results, reused)} of one unit of work (a run, or a pack of seeds: `pack_runs`), under the locks of
    its run folders: each run reused if finished, else resumed or trained. Busy where another live process holds one
    of the folders; with `wait`, wait for that process instead, then reuse what it finished. An exception of any
    type is written with its traceback to each run's error.txt, then raised. `stack`: a pack's seeds train stacked
    (on), or, with auto, stacked only where this process finds CUDA (a cluster job decides on its own node), else
    one after another."""
    try:
        with hold_runs([r.run_dir for r in unit], wait=wait):
            try:
                return _train_unit(unit, data, progress, threads, stack)
            except Exception:
                for run in unit:
                    RunDir(run.run_dir).write_error(traceback.format_exc())
                raise
    except RunBusy as e:
        return Busy(e.holder)


def _train_unit(unit: list[GridRun], data, progress: bool, threads: int, stack: str = "on"
                ) -> dict[str, tuple[dict, bool]]:
    outcomes, left = {}, []
    for run in unit:
        res = finished_results(run)  # finished meanwhile by a process this one waited for
        if res is None:
            left.append(run)
        else:
            outcomes[run.name] = (res, True)
    for run in left:
        RunDir(run.run_dir).clear_error()  # error.txt describes the last attempt
    if len(left) > 1 and len({_resume_step(r) for r in left}) == 1 and (stack == "on" or _trains_on_cuda(left[0])):
        return outcomes | _train_pack(left, data, progress, threads)
    for run in left:
        outcomes[run.name] = (_train_one(run, data, progress, threads), False)
    return outcomes


def _train_one(run: GridRun, data, progress: bool, threads: int) -> dict:
    """Resume an interrupted run, or train a new one; its results."""
    upstream = upstream_fingerprints(run)  # taken before training: what this run is built on
    if run.samples is not None:
        results = compare_samples.run_samples_classifier(Path(run.raw["samples_from"]), run.run_dir, run.samples,
                                                         data, threads)
    else:
        cfg = _run_config(run, progress, threads)
        resume = _resumable(run)
        if not resume:
            RunDir(run.run_dir).clear()  # stopped before its first checkpoint: nothing to resume, start it over
        results = Trainer(cfg, run_dir=run.run_dir, resume=resume, data=data).fit()
    if run.deps:
        RunDir(run.run_dir).write_upstream(upstream)
    return results


def _train_pack(runs: list[GridRun], data, progress: bool, threads: int) -> dict[str, tuple[dict, bool]]:
    """Seeds of one entry and label count (`pack_runs`) trained in one process with stacked parameters, each in its
    own folder; all fresh, or all resumed from checkpoints at the same step."""
    cfg = _run_config(runs[0], progress, threads)
    resume = all(_resumable(r) for r in runs)
    if not resume:
        for r in runs:
            RunDir(r.run_dir).clear()
    trainer = Trainer(cfg, resume=resume, data=data, seeds=[r.seed for r in runs], run_dirs=[r.run_dir for r in runs])
    return {r.name: (res, False) for r, res in zip(runs, trainer.fit_all())}


# ---------------------------------------------------------------------------------------------- packing seeds
def _resume_step(run: GridRun) -> int | None:
    """The step a run would resume from (None: it starts fresh)."""
    if not _resumable(run):
        return None
    return int(RunDir(run.run_dir).load_resume_checkpoint(map_location="cpu")[0]["step"])


def _trains_on_cuda(run: GridRun) -> bool:
    try:
        return resolve_device(build_run_config(run.raw).train.device).type == "cuda"
    except ValueError:
        return False


def pack_runs(runs: list[GridRun], pack: str = "auto", decide_in_job: bool = False
              ) -> tuple[list[list[GridRun]], list[str]]:
    """(units, notes): the runs to train, in grid order, as units of one process each: a single run, or a pack of
    the seeds of one entry and label count whose configs differ in train.seed only, stacked in one process
    (genssl.training.stacked). `pack`: on, off, or auto (on where the runs train on CUDA). A pack needs a method
    that can stack (Method.stacking_refusal), runs that need no other run, and seeds that all start fresh or all
    resume from the same step; `notes` say which entries were packed and why others were not. `decide_in_job`
    (a cluster executor): auto packs what can stack and leaves the CUDA test to the job (`run_unit`'s stack=auto),
    since the machine that submits is not the one that trains."""
    if pack not in PACK_CHOICES:
        raise ConfigError(f"--pack-seeds must be one of {', '.join(PACK_CHOICES)}, got {pack!r}")
    groups: dict[str, list[GridRun]] = {}
    for run in runs:
        if pack != "off" and run.samples is None and not run.deps:
            key = json.dumps({k: v for k, v in flatten(run.raw).items() if k != "train.seed"}, sort_keys=True,
                             default=str)
            groups.setdefault((run.label, run.n_labels, key), []).append(run)
    packs, notes = {}, []
    for members in groups.values():
        if len(members) < 2:
            continue
        lead = members[0]
        where = f"{lead.label} n_labels={lead.n_labels}, seeds {', '.join(str(r.seed) for r in members)}"
        cfg = build_run_config(lead.raw)
        refusal = get_method_class(cfg.method_name).stacking_refusal(cfg.method)
        if refusal is None and pack == "auto" and not decide_in_job and not _trains_on_cuda(lead):
            continue  # auto on a CPU: stacked seeds measured no cheaper there (genssl.training.seeds)
        if refusal is None:
            steps = {r.name: _resume_step(r) for r in members}
            if len(set(steps.values())) > 1:
                refusal = "their checkpoints stopped at different steps (" + ", ".join(
                    f"{n}: {'fresh' if s is None else s}" for n, s in steps.items()) + ")"
        if refusal:
            notes.append(f"{where}: unpacked, one process each ({refusal})")
            continue
        notes.append(f"{where}: " + ("one job; stacked if it finds CUDA, else one seed after another"
                                     if pack == "auto" and decide_in_job else "packed in one process, parameters stacked"))
        for r in members:
            packs[r.name] = members
    units, placed = [], set()
    for run in runs:
        if run.name in placed:
            continue
        unit = packs.get(run.name, [run])
        placed.update(r.name for r in unit)
        units.append(unit)
    return units, notes


class _TimeLeft:
    """Time left in a grid, from seconds per step measured on the runs done so far (same method entry when
    possible, else all entries). Reused runs count: their wall time is in their results.json."""

    def __init__(self):
        self.rates: dict[str, list[float]] = {}

    def observe(self, run: GridRun, results: dict) -> None:
        wall = results.get("own_wall_time_s", results.get("wall_time_s"))
        if results.get("steps") and wall:
            self.rates.setdefault(run.label, []).append(wall / results["steps"])

    def estimate(self, pending: list[GridRun], jobs: int = 1) -> float | None:
        every = [r for rates in self.rates.values() for r in rates]
        if not pending:
            return 0.0
        if not every:
            return None
        total = sum(_mean(self.rates.get(run.label) or every) * run.steps for run in pending)
        return total / max(1, min(jobs, len(pending)))


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


# ---------------------------------------------------------------------------------------------- driver
class _Failed(RuntimeError):
    pass


class GridFailed(RuntimeError):
    """Runs of a grid failed; the report of the rest was written. `failures`: {run name: its error}; `errors`:
    {run name: its error.txt, where the run wrote one}."""

    def __init__(self, failures: dict[str, str], total: int, errors: dict[str, Path]):
        super().__init__(f"{len(failures)} of {total} runs failed (the table shows the rest):\n  "
                         + "\n  ".join(f"{k}: {v}" for k, v in failures.items()))
        self.failures, self.total, self.errors = failures, total, errors


class _Tally:
    """What a grid has so far (results, failures), its progress bar and time-left estimate, and the lines it
    prints as runs start and end."""

    def __init__(self, runs: list[GridRun], show: bool):
        self.total = len(runs)
        self.results: dict[str, dict] = {}
        self.failures: dict[str, str] = {}
        self.numbered = 0  # runs reused or started so far
        self.eta = _TimeLeft()
        self.start = time.perf_counter()
        self.bar = tqdm(total=len(runs), desc="grid", unit="run", position=0, leave=True, dynamic_ncols=True,
                        disable=not show, file=sys.stderr,
                        bar_format="{desc} {n_fmt}/{total_fmt} |{bar}| {elapsed} elapsed{postfix}")

    def finish(self, run: GridRun, res: dict, reused: bool) -> None:
        self.results[run.name] = res
        self.eta.observe(run, res)
        if not reused:
            tqdm.write(f"  done {run.name}: test acc {100 * res['test_acc']:.2f}% in "
                       f"{fmt_duration(res.get('own_wall_time_s', res['wall_time_s']))}")
        self.bar.update(1)

    def fail(self, run: GridRun, error: BaseException) -> None:
        self.failures[run.name] = f"{type(error).__name__}: {error}"
        where = _record_failure(run, self.failures[run.name])
        tqdm.write(f"  FAILED {run.name}: {error}" + (f" (traceback: {where})" if where else ""))
        self.bar.update(1)

    def blocked(self, run: GridRun) -> str | None:
        bad = [d for d in run.deps if d in self.failures]
        return f"needs {', '.join(bad)}, which failed" if bad else None

    def announce(self, run: GridRun, pending: list[GridRun], slots: int) -> None:
        self.numbered += 1
        left = fmt_duration(self.eta.estimate(pending, slots))
        rd = RunDir(run.run_dir)  # a locked folder's last.pt may be another process's, still training
        resumes = ", resumes from its last.pt" if _resumable(run) and not rd.has(RunDir.LOCK) else ""
        self.bar.set_postfix_str(f"now {run.name} | ~{left} left", refresh=True)
        tqdm.write(f"[{self.numbered}/{self.total}] {run.label} n_labels={run.n_labels} seed={run.seed} -> "
                   f"{run.run_dir}{resumes}  (elapsed {fmt_duration(time.perf_counter() - self.start)}, "
                   f"~{left} left)")


def _record_failure(run: GridRun, message: str) -> Path | None:
    """The run's error.txt: as the run wrote it (with its traceback), else this grid's account of how its process
    ended, written under the folder's lock; None where the run never started or another process trains it now."""
    rd = RunDir(run.run_dir)
    if not rd.path.is_dir():
        return None
    if not rd.has(RunDir.ERROR):
        try:
            with hold_runs([rd.path]):
                rd.write_error(message + "\n")
        except RunBusy:
            return None
    return rd / RunDir.ERROR


def run_grid(path: str | Path, overrides: list[str] | None = None, out: str | None = None,
             jobs: int | None = None, data=None, progress: bool | None = None, executor: str = "local",
             pack_seeds: str = "auto", reference: str | None = None, max_in_flight: int | None = None,
             seeds: list[int] | None = None) -> list[dict]:
    """Run (or reuse) every run of the grid and write the report; returns the summary rows, or raises GridFailed
    (after writing the report) when runs failed.

    executor: local (this process, or this machine's processes), slurm or submitit-local
    (genssl/compare/executors.py). pack_seeds: auto | on | off: train the seeds of an entry in one process, stacked
    (`pack_runs`; auto: on CUDA). jobs: runs at once (default 1 here, all of them on Slurm); locally, jobs > 1
    trains in separate processes, each with cores // jobs threads unless the config sets train.threads; a
    scheduler's job gets the run's resources.cpus. `data` = (train, test) ImageData replaces the configs' datasets
    (tests). `progress`: True/False forces the bars on/off; None shows them on a terminal only. `seeds`: run
    only these of the grid's seeds (a study sized across sittings); the report also holds the other seeds' runs
    that finished earlier."""
    out_dir, runs = load_grid(path, overrides, out)
    for note in undecidable_tables(runs, _reference(path, reference)[0]):  # the whole grid's, whatever --seeds
        tqdm.write(f"verdicts: {note}")
    finished = {run.name: finished_results(run) for run in runs}
    if seeds is not None:
        runs = _of_seeds(runs, seeds, finished)
    show = progress if progress is not None else sys.stderr.isatty()
    tally = _Tally(runs, show)
    todo = []  # reused runs first: they cost nothing and calibrate the time estimate of the rest
    for run in runs:
        res = finished[run.name]
        if res is None:
            todo.append(run)
        else:
            tally.finish(run, res, reused=True)
    tally.numbered = len(runs) - len(todo)
    if len(todo) < len(runs):
        tqdm.write(f"reusing {len(runs) - len(todo)} finished run(s) under {runs[0].run_dir.parent}")
    units, notes = pack_runs(todo, pack_seeds, decide_in_job=executor in ("slurm", "submitit-local"))
    for note in notes:
        tqdm.write(f"seeds: {note}")
    if units:
        with make_executor(executor, jobs, out_dir / "jobs", len(units), max_in_flight) as pool:
            pool.check(todo)
            _schedule(units, pool, data, show, tally, pack_seeds)
    tally.bar.close()
    return _report(out_dir, runs, tally.results, tally.failures, _reference(path, reference))


def size_grid(path: str | Path, overrides: list[str] | None = None, out: str | None = None,
              reference: str | None = None, seeds: list[int] | None = None) -> list[str]:
    """What running the grid (or its `seeds`) would cost, run nothing: the runs per entry, how many finished, the
    budget-clock seconds the rest may take (the mean of the entry's finished runs, else the budget its config
    stops at, train.stop_at_budget; CPU seconds of one thread locally), and whether its tables can reach a
    verdict. Lines to print."""
    _, runs = load_grid(path, overrides, out)
    notes = [f"verdicts: {n}" for n in undecidable_tables(runs, _reference(path, reference)[0])]
    finished = {run.name: finished_results(run) for run in runs}
    every = runs
    if seeds is not None:
        runs = [r for r in _of_seeds(runs, seeds, finished, announce=False) if r.seed in seeds]
    lines, to_run, budget_s, unbounded = [], 0, 0.0, []
    for label in dict.fromkeys(r.label for r in runs):
        mine = [r for r in runs if r.label == label]
        left = [r for r in mine if finished[r.name] is None]
        cap = None
        if mine[0].samples is None:
            train = build_run_config(mine[0].raw).train
            cap = max(train.budgets_s) if train.stop_at_budget else None
        spent = [finished[r.name]["budget_clock_s"] for r in every  # any seed's finished runs of the entry
                 if r.label == label and finished[r.name] is not None and finished[r.name].get("budget_clock_s")]
        per_run = sum(spent) / len(spent) if spent else cap
        each = f"stops at {cap:g} s on the budget clock" if cap else f"{mine[0].steps} steps, no budget to stop at"
        if spent:
            each += f"; its finished runs took {per_run:.0f} s"
        lines.append(f"  {label:<28} {len(mine):>3} run(s), {len(mine) - len(left):>3} finished; {each}")
        to_run += len(left)
        if per_run:
            budget_s += per_run * len(left)
        elif left:
            unbounded.append(label)
    total = (f"{to_run} of {len(runs)} run(s) to go: about {budget_s / 60:.0f} CPU-minutes of training on the "
             f"budget clock" + (f", plus {', '.join(unbounded)} (no finished run or budget to bound them)"
                                if unbounded else "")
             + "; evaluation, checkpoints and start-up come on top (~15% and seconds a run)")
    return [total, *lines, *notes]


def _of_seeds(runs: list[GridRun], seeds: list[int], finished: dict[str, dict | None], announce: bool = True
              ) -> list[GridRun]:
    """The runs of the given seeds, and those of other seeds that finished earlier (reported, not run); a seed
    the grid does not have is refused."""
    have = sorted({run.seed for run in runs})
    absent = sorted(set(seeds) - set(have))
    if absent:
        raise ConfigError(f"--seeds: {', '.join(map(str, absent))} not among the grid's seeds "
                          f"({', '.join(map(str, have))})")
    kept = [run for run in runs if run.seed in seeds or finished[run.name] is not None]
    later = len(runs) - len(kept)
    if announce:
        chosen = sum(r.seed in seeds for r in runs)
        tqdm.write(f"--seeds {', '.join(map(str, sorted(set(seeds))))}: {chosen} run(s); {len(kept) - chosen} "
                   f"finished run(s) of other seeds are reported beside them"
                   + (f"; {later} run(s) of other seeds are left for later" if later else ""))
    return kept


def _reference(path, named: str | None) -> tuple[str | None, str]:
    """(entry, where it was named) of the paired comparisons: --reference, else the grid's `reference:`."""
    if named is not None:
        return named, "--reference"
    return grid_reference(path), "the grid's reference:"


def collect_grid(path: str | Path, overrides: list[str] | None = None, out: str | None = None,
                 reference: str | None = None) -> list[dict]:
    """Rewrite the grid's report from the results.json in its run folders, running nothing (the runs may be
    queued, running or finished on a cluster). Runs without results yet are listed and left out of the table."""
    out_dir, runs = load_grid(path, overrides, out)
    results = {}
    for run in runs:
        res = finished_results(run)
        if res is not None:
            results[run.name] = res
    done = [r for r in runs if r.name in results]
    missing = [r.name for r in runs if r.name not in results]
    print(f"collected {len(done)} of {len(runs)} runs under {runs[0].run_dir.parent}")
    if missing:
        print(f"{len(missing)} run(s) have no results.json yet (queued, running, failed or not started) and are "
              f"left out of the table: {', '.join(missing)}")
    return _report(out_dir, done, results, {}, _reference(path, reference))


def _report(out_dir: Path, runs: list[GridRun], results: dict[str, dict], failures: dict[str, str],
            reference: tuple[str | None, str] = (None, "")) -> list[dict]:
    """Write the report of `runs` (whatever executor ran them), print the table and where everything is; raise
    GridFailed if runs failed, naming each with its error."""
    errors = {r.name: r.run_dir / RunDir.ERROR for r in runs
              if r.name in failures and RunDir(r.run_dir).has(RunDir.ERROR)}
    failed = {name: f"{msg} (traceback: {errors[name]})" if name in errors else msg for name, msg in failures.items()}
    report = write_report(out_dir, runs, _with_total_wall_time(runs, results), *reference, failures=failed)
    table, paths = report["table"], report["paths"]
    print()
    print(markdown_table(table, sorted({r.get("device", "") for r in results.values()} - {""}), report["reference"]))
    print(f"Table:  {paths['table']}  (CSV: {paths['csv']}, paired: {paths['paired_csv']}, per run: "
          f"{paths['runs_csv']})")
    if "plot_labels" in paths:
        print(f"Plots:  {paths['plot_labels']}  and  {paths['plot_time']}")
    print(f"TensorBoard, one HParams row per run (test accuracy, wall time):  tensorboard --logdir {paths['tb']}")
    if runs:
        print(f"TensorBoard, training curves, samples and full configs of every run:  "
              f"tensorboard --logdir {runs[0].run_dir.parent}")
    if failures:
        raise GridFailed(failures, len(runs), errors)
    return table


def _with_total_wall_time(runs: list[GridRun], results: dict[str, dict]) -> list[dict | None]:
    """Results in grid order, where a run that builds on others (M1+M2 on its M1) also counts their wall time
    (its own stays in own_wall_time_s): M1+M2 costs its M1 too. A samples run's results already do."""
    by_name = {r.name: r for r in runs}

    def total(run: GridRun) -> float:
        res = results.get(run.name) or {}
        own = res.get("wall_time_s", 0.0)
        return own if run.samples is not None else own + sum(total(by_name[d]) for d in run.deps)

    out = []
    for run in runs:
        res = results.get(run.name)
        if res is not None and run.deps and run.samples is None:
            res = {**res, "own_wall_time_s": res["wall_time_s"], "wall_time_s": total(run)}
        out.append(res)
    return out


def _finish_unit(unit: list[GridRun], outcomes: dict[str, tuple[dict, bool]], tally: _Tally) -> None:
    """Report each run of a unit from its process's outcome, {run name: (results, reused)}. A run missing from it
    (a job of an earlier, differently packed submission) is taken from its folder if it finished there, else
    reported as failed."""
    for run in unit:
        if run.name in outcomes:
            res, reused = outcomes[run.name]
            if reused:
                tqdm.write(f"  {run.name}: finished by another process; reused")
            tally.finish(run, res, reused)
            continue
        res = finished_results(run)
        if res is not None:
            tally.finish(run, res, False)
        else:
            tally.fail(run, _Failed(f"its job ({unit[0].name}) ended without its results; run the grid again to "
                                    f"train it"))


def _schedule(units: list[list[GridRun]], pool, data, show: bool, tally: _Tally, stack: str = "on") -> None:
    """Start each unit (a run, or a pack of seeds: `pack_runs`) on `pool` once the runs it needs have finished, at
    most pool.slots at once, until every run has ended. A run whose dependency failed is reported, not started; a
    unit whose folder another live process holds is deferred behind the others, then started again to wait for
    that process. A unit is known to the pool by its first run (its job folder, resources and threads)."""
    queue = [(list(u), False) for u in units]  # (unit, wait for its folders' locks)
    running: dict[Future, list[GridRun]] = {}
    for item in list(queue):  # jobs of an earlier submission still queued or running: wait for those
        fut = pool.attach(item[0][0])
        if fut is not None:
            queue.remove(item)
            running[fut] = item[0]
            tqdm.write(f"  {item[0][0].name}: still running from an earlier submission ({pool.where(item[0][0])})")
    while queue or running:
        for item in [it for it in queue if tally.blocked(it[0][0])]:  # packs need no other run
            queue.remove(item)
            tally.fail(item[0][0], _Failed(tally.blocked(item[0][0])))
        _start_ready(queue, running, pool, data, show, tally, stack)
        if not running:
            break  # only runs whose dependencies failed are left; they were reported above
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for fut in done:
            _collect(fut, running.pop(fut), queue, tally)


def _start_ready(queue, running: dict, pool, data, show: bool, tally: _Tally, stack: str = "on") -> None:
    """Submit the units whose dependencies have finished, in queue order, while the pool has free slots."""
    ready = [it for it in queue if all(d in tally.results for r in it[0] for d in r.deps)]
    while ready and len(running) < pool.slots:
        item = ready.pop(0)
        queue.remove(item)
        unit, wait_lock = item
        if wait_lock:
            tqdm.write(f"  {', '.join(r.name for r in unit)}: waiting for the process that trains it")
        else:
            pending = [r for u in [unit, *(it[0] for it in queue), *running.values()] for r in u]
            for run in unit:
                tally.announce(run, pending, pool.slots)
        progress = show and pool.in_process
        running[pool.submit(unit[0], run_unit, unit, data, progress, pool.threads(unit[0]), wait_lock, stack)] = unit
        if pool.where(unit[0]):
            tqdm.write(f"  submitted as {pool.where(unit[0])}")


def _collect(fut: Future, unit: list[GridRun], queue: list, tally: _Tally) -> None:
    """A unit's end: its results; a failure (any exception: the rest of the grid goes on); or Busy, which puts it
    back at the end of the queue, to wait for its folders' holder once the other runs have started."""
    try:
        outcome = fut.result()
    except Exception as e:
        for run in unit:
            tally.fail(run, e)
        return
    if isinstance(outcome, Busy):
        tqdm.write(f"  deferred {', '.join(r.name for r in unit)}: {outcome.holder} trains it; the other runs "
                   f"first, then this grid waits for it and reuses its results")
        queue.append((unit, True))
        return
    _finish_unit(unit, outcome, tally)
