"""`genssl compare`: run (or reuse) every run of a grid (genssl/grid.py, where its YAML is described) and
report them in one folder.

Runs land in ``<runs>/<name>-n<labels>-s<seed>``. A run whose results.json exists is reused (after
checking its config still matches the grid's); one with only last.pt is resumed; so a stopped grid picks up
where it left off. A run whose config names another run's folder (M1+M2 naming its M1) starts once that run
has finished, and records in upstream.json which results it was built on, so it is not reused once those
runs change. An executor (genssl/compare/executors.py: local processes, or Slurm through submitit) runs
them; the report (genssl/report.py) is rewritten from all runs once every run has ended, and
`collect_grid` (--collect) rewrites it from the run folders without running anything.

With --pack-seeds (`pack_seeds`: auto packs on CUDA), the seeds of an entry and label count share one process,
their parameters stacked (genssl.training.stacked: where a step is launch-bound, ten seeds cost ~2.5 of one on an
H200). A pack is one unit for the executor; its runs still land in their own folders with their own results.json,
so reuse and resume stay per run. Entries that cannot stack, and seeds whose checkpoints stopped at different
steps, run unpacked, and the grid says why.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path

from tqdm.auto import tqdm

from genssl.compare import samples as compare_samples
from genssl.compare.executors import exit_with_parent, make_executor
from genssl.compare.grid import GridRun, grid_reference, load_grid
from genssl.compare.report import fmt_duration, markdown_table, write_report
from genssl.config import (REPORTING_KEYS, ConfigError, build_run_config, config_differences, flatten, load_yaml,
                           merge, method_defaults)
from genssl.registry import get_method_class
from genssl.runs.run_dir import RunDir
from genssl.training.budget import clock_kind
from genssl.training.device import device_kind, resolve_device, resolve_precision
from genssl.training.trainer import Trainer

__all__ = ["PACK_CHOICES", "GridRun", "collect_grid", "exit_with_parent", "finished_results", "load_grid",
           "pack_runs", "run_grid", "run_one", "run_pack"]

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


def _clear_unresumable(run: GridRun) -> None:
    if run.run_dir.is_dir() and any(run.run_dir.iterdir()):
        shutil.rmtree(run.run_dir)  # stopped before its first checkpoint: nothing to resume, start it over


def run_one(run: GridRun, data=None, progress: bool = True, threads: int = 0) -> tuple[dict, bool]:
    """(results, reused): reuse a finished run, resume an interrupted one, or train a new one."""
    results = finished_results(run)
    if results is not None:
        return results, True
    upstream = upstream_fingerprints(run)  # taken before training: what this run is built on
    if run.samples is not None:
        results = compare_samples.run_samples_classifier(Path(run.raw["samples_from"]), run.run_dir, run.samples,
                                                         data, threads)
    else:
        cfg = _run_config(run, progress, threads)
        resume = _resumable(run)
        if not resume:
            _clear_unresumable(run)
        trainer = Trainer(cfg, run_dir=run.run_dir, resume=resume, data=data)
        results = trainer.fit()
    if run.deps:
        RunDir(run.run_dir).write_upstream(upstream)
    return results, False


def run_pack(runs: list[GridRun], data=None, progress: bool = True, threads: int = 0) -> dict[str, tuple[dict, bool]]:
    """{run name: (results, reused)} of seeds of one entry and label count (`pack_runs`) trained in one process with
    stacked parameters, each in its own folder; all fresh, or all resumed from checkpoints at the same step."""
    cfg = _run_config(runs[0], progress, threads)
    resume = all(_resumable(r) for r in runs)
    if not resume:
        for r in runs:
            _clear_unresumable(r)
    trainer = Trainer(cfg, resume=resume, data=data, seeds=[r.seed for r in runs], run_dirs=[r.run_dir for r in runs])
    return {r.name: (res, False) for r, res in zip(runs, trainer.fit_all())}


def _run_in_worker(run: GridRun, data, threads: int) -> tuple[dict, bool]:
    return run_one(run, data, progress=False, threads=threads)


def _run_pack_in_worker(runs: list[GridRun], data, threads: int) -> dict[str, tuple[dict, bool]]:
    return run_pack(runs, data, progress=False, threads=threads)


# ---------------------------------------------------------------------------------------------- packing seeds
def _resume_step(run: GridRun) -> int | None:
    """The step a run would resume from (None: it starts fresh)."""
    if not _resumable(run):
        return None
    return int(RunDir(run.run_dir).load_resume_checkpoint(map_location="cpu")[0]["step"])


def pack_runs(runs: list[GridRun], pack: str = "auto") -> tuple[list[list[GridRun]], list[str]]:
    """(units, notes): the runs to train, in grid order, as units of one process each: a single run, or a pack of
    the seeds of one entry and label count whose configs differ in train.seed only, stacked in one process
    (genssl.training.stacked). `pack`: on, off, or auto (on where the runs train on CUDA). A pack needs a method
    that can stack (Method.stacking_refusal), runs that need no other run, and seeds that all start fresh or all
    resume from the same step; `notes` say which entries were packed and why others were not."""
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
        if refusal is None and pack == "auto":
            try:
                on_cuda = resolve_device(cfg.train.device).type == "cuda"
            except ValueError:
                on_cuda = False
            if not on_cuda:
                continue  # auto on a CPU: stacked seeds measured no cheaper there (genssl.training.seeds)
        if refusal is None:
            steps = {r.name: _resume_step(r) for r in members}
            if len(set(steps.values())) > 1:
                refusal = "their checkpoints stopped at different steps (" + ", ".join(
                    f"{n}: {'fresh' if s is None else s}" for n, s in steps.items()) + ")"
        if refusal:
            notes.append(f"{where}: unpacked, one process each ({refusal})")
            continue
        notes.append(f"{where}: packed in one process, parameters stacked")
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


def run_grid(path: str | Path, overrides: list[str] | None = None, out: str | None = None,
             jobs: int | None = None, data=None, progress: bool | None = None, executor: str = "local",
             pack_seeds: str = "auto", reference: str | None = None) -> list[dict]:
    """Run (or reuse) every run of the grid and write the report; returns the summary rows.

    executor: local (this machine's processes), slurm or submitit-local (genssl/compare/executors.py).
    pack_seeds: auto | on | off: train the seeds of an entry in one process, stacked (`pack_runs`; auto: on CUDA).
    jobs: runs at once (default 1 here, all of them on Slurm); locally, jobs > 1 trains in separate processes,
    each with cores // jobs threads unless the config sets train.threads; a scheduler's job gets the run's
    resources.cpus. `data` = (train, test) ImageData replaces the configs' datasets (tests).
    `progress`: True/False forces the bars on/off; None shows them on a terminal only."""
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    if pack_seeds not in PACK_CHOICES:
        raise ConfigError(f"--pack-seeds must be one of {', '.join(PACK_CHOICES)}, got {pack_seeds!r}")
    out_dir, runs = load_grid(path, overrides, out)
    runs_dir = runs[0].run_dir.parent
    show = progress if progress is not None else sys.stderr.isatty()
    results: dict[str, dict] = {}
    failures: dict[str, str] = {}
    eta = _TimeLeft()
    bar = tqdm(total=len(runs), desc="grid", unit="run", position=0, leave=True, dynamic_ncols=True,
               disable=not show, file=sys.stderr,
               bar_format="{desc} {n_fmt}/{total_fmt} |{bar}| {elapsed} elapsed{postfix}")
    start = time.perf_counter()
    slots = jobs or 1
    started = 0

    def finish(run: GridRun, res: dict | None, reused: bool, error: BaseException | None = None) -> None:
        if error is not None:
            failures[run.name] = f"{type(error).__name__}: {error}"
            tqdm.write(f"  FAILED {run.name}: {error}")
        else:
            results[run.name] = res
            eta.observe(run, res)
            if not reused:
                tqdm.write(f"  done {run.name}: test acc {100 * res['test_acc']:.2f}% in "
                           f"{fmt_duration(res.get('own_wall_time_s', res['wall_time_s']))}")
        bar.update(1)

    def blocked(run: GridRun) -> str | None:
        bad = [d for d in run.deps if d in failures]
        return f"needs {', '.join(bad)}, which failed" if bad else None

    def announce(run: GridRun, pending: list[GridRun]) -> None:
        nonlocal started
        started += 1
        left = fmt_duration(eta.estimate(pending, slots))
        rd = RunDir(run.run_dir)
        resumes = ", resumes from its last.pt" if rd.has(RunDir.LAST) or rd.has(RunDir.PREV) else ""
        bar.set_postfix_str(f"now {run.name} | ~{left} left", refresh=True)
        tqdm.write(f"[{len(runs) - len(todo) + started}/{len(runs)}] {run.label} n_labels={run.n_labels} "
                   f"seed={run.seed} -> {run.run_dir}{resumes}  (elapsed "
                   f"{fmt_duration(time.perf_counter() - start)}, ~{left} left)")

    # Reused runs first: they cost nothing and calibrate the time estimate of the rest.
    todo = []
    for run in runs:
        res = finished_results(run)
        if res is not None:
            finish(run, res, reused=True)
        else:
            todo.append(run)
    if len(todo) < len(runs):
        tqdm.write(f"reusing {len(runs) - len(todo)} finished run(s) under {runs_dir}")
    units, notes = pack_runs(todo, pack_seeds)
    for note in notes:
        tqdm.write(f"seeds: {note}")

    if executor == "local" and (slots == 1 or len(units) <= 1):
        for k, unit in enumerate(units):
            if blocked(unit[0]):
                finish(unit[0], None, False, _Failed(blocked(unit[0])))
                continue
            pending = [r for u in units[k:] for r in u]
            for run in unit:
                announce(run, pending)
            try:
                outcomes = run_pack(unit, data, progress=show) if len(unit) > 1 else \
                    {unit[0].name: run_one(unit[0], data, progress=show)}
            except (ValueError, RuntimeError, FileExistsError, FileNotFoundError) as e:  # DivergenceError, ...
                for run in unit:
                    finish(run, None, False, e)
                continue
            _finish_unit(unit, outcomes, finish)
    elif units:
        with make_executor(executor, jobs, out_dir / "jobs", len(units)) as pool:
            slots = pool.slots
            pool.check(todo)
            _run_scheduled(units, pool, data, results, blocked, announce, finish)
    bar.close()
    return _report(out_dir, runs, results, failures, _reference(path, reference))


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
    if runs failed, naming each with its error."""
    report = write_report(out_dir, runs, _with_total_wall_time(runs, results), *reference)
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
        raise RuntimeError(f"{len(failures)} of {len(runs)} runs failed (the table shows the rest):\n  "
                           + "\n  ".join(f"{k}: {v}" for k, v in failures.items()))
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


def _finish_unit(unit: list[GridRun], outcomes, finish) -> None:
    """Report each run of a unit from its process's outcome: {run name: (results, reused)} of a pack, or the
    (results, reused) of one run. A run missing from it (a job of an earlier, differently packed submission) is
    taken from its folder if it finished there, else reported as failed."""
    if not isinstance(outcomes, dict):
        outcomes = {unit[0].name: outcomes}
    for run in unit:
        if run.name in outcomes:
            finish(run, *outcomes[run.name])
            continue
        res = finished_results(run)
        if res is not None:
            finish(run, res, False)
        else:
            finish(run, None, False, _Failed(f"its job ({unit[0].name}) ended without its results; run the grid "
                                             f"again to train it"))


def _run_scheduled(units, pool, data, results, blocked, announce, finish) -> None:
    """Start each unit (a run, or a pack of seeds: `pack_runs`) on `pool` once the runs it needs have finished, at
    most pool.slots at once, until every run has ended (a run whose dependency failed is reported, not started).
    A unit is known to the pool by its first run (its job folder, resources and threads)."""
    queue = [list(u) for u in units]
    running = {}
    for unit in list(queue):  # jobs of an earlier submission still queued or running: wait for those
        fut = pool.attach(unit[0])
        if fut is not None:
            queue.remove(unit)
            running[fut] = unit
            tqdm.write(f"  {unit[0].name}: still running from an earlier submission ({pool.where(unit[0])})")
    while queue or running:
        for unit in [u for u in queue if blocked(u[0])]:  # packs need no other run: only single runs get here
            queue.remove(unit)
            finish(unit[0], None, False, _Failed(blocked(unit[0])))
        ready = [u for u in queue if all(d in results for r in u for d in r.deps)]
        while ready and len(running) < pool.slots:
            unit = ready.pop(0)
            queue.remove(unit)
            lead = unit[0]
            pending = [r for u in [unit, *queue, *running.values()] for r in u]
            for run in unit:
                announce(run, pending)
            if len(unit) > 1:
                fut = pool.submit(lead, _run_pack_in_worker, unit, data, pool.threads(lead))
            else:
                fut = pool.submit(lead, _run_in_worker, lead, data, pool.threads(lead))
            running[fut] = unit
            if pool.where(lead):
                tqdm.write(f"  submitted as {pool.where(lead)}")
        if not running:
            break  # only runs whose dependencies failed are left; they were reported above
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for fut in done:
            unit = running.pop(fut)
            try:
                outcomes = fut.result()
            except (ValueError, RuntimeError, FileExistsError, FileNotFoundError) as e:
                for run in unit:
                    finish(run, None, False, e)
                continue
            _finish_unit(unit, outcomes, finish)
