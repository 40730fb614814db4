"""Executors: what runs the runs of a grid (`genssl compare --executor NAME`). genssl/compare/runner.py owns
the list (order, dependencies, reuse, failures, the report); an executor only starts a unit of work (a run, or a
pack of seeds) and says when it has ended.

    local           this machine: --jobs N runs at once, as processes (the default, N = 1, trains in this
                    process, as does a grid of one unit)
    slurm           a Slurm cluster through submitit (https://github.com/facebookincubator/submitit): the runs
                    that are ready together go out as job arrays (submitit's batch submission), one array per
                    set of `resources` (genssl/compare/grid.py), each throttled to --max-in-flight running tasks
                    (Slurm's `%N`); within a cluster's submit limit (below)
    submitit-local  submitit's LocalExecutor: the same job interface as slurm on this machine (real
                    subprocesses, logs, time limits, requeue); how the slurm path is tested without a cluster

Run folders on the shared filesystem stay the one source of truth, so any executor can be stopped,
resubmitted and collected: a run is reused once its results.json exists and resumed from last.pt when it
has one (runner.run_unit), and a process trains a run folder only while it holds the folder's lock
(genssl.runs.lock), so two executors, or a requeued job beside its predecessor, never train one run together.
A submitit job is checkpointable: when Slurm preempts it, or its time limit is near (USR2, `signal_delay_s`
before), submitit requeues the same call and the run resumes from last.pt. Each run's job folder (submission
pickle, log, result) is <out>/jobs/<run name>/ on this machine, and <out>/jobs/slurm/ (logs <array>_<task>_0_log.out)
on Slurm; a failed run is reported with its log. A Slurm job id is recorded in <out>/jobs/<run name>/job.json, so a
grid resubmitted while its earlier jobs are still queued or running waits for those instead of starting a second job
on the same run folder.

Arrays on Slurm: `submit` only queues a run; once no run has been submitted for `batch_window_s` (the scheduler hands
over all ready runs at once), the poller thread submits the queue, one array per set of job parameters. Runs that
need another run are handed over by the scheduler only once that run has finished, so they go out in a later array.
Submit limit: Slurm's MaxSubmitJobs counts every pending or running job and array task, and sbatch refuses a whole
array that would pass it. On that refusal the array is split in halves and tried again; when even one task is
refused, the rest wait until one of this grid's jobs has ended, then are tried again. Other refusals fail their runs.

An executor has `slots` (runs at once), `in_process` (whether fn runs in this process), `threads(run)` (torch
threads for the run's process; 0: leave them), `check(runs)` (fail before any run starts on what it cannot run),
`attach(run)` (a Future for a job of an earlier submission still queued or running, else None),
`submit(run, fn, *args) -> Future` (fn(*args) runs in the run's process) and `where(run)` (a line naming the job
and its log, or "").
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import select
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from genssl.compare.grid import GridRun
from genssl.config import ConfigError
from genssl.fileio import atomic_write_json
from genssl.runs.lock import pid_alive

EXECUTORS = ("local", "slurm", "submitit-local")
JOB_RECORD = "job.json"


def available_cpus() -> int:
    """The cores this process may run on: its CPU affinity (what a container, taskset or a Slurm allocation
    grants), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def make_executor(name: str, jobs: int | None, jobs_dir: Path, n_units: int, max_in_flight: int | None = None):
    """The executor called `name`; jobs: units at once (default: 1 on this machine, every unit on Slurm);
    max_in_flight: on Slurm, the running tasks of each array (its `%N` throttle; default: no throttle)."""
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; valid executors: {', '.join(EXECUTORS)}")
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    if max_in_flight is not None and max_in_flight < 1:
        raise ConfigError(f"--max-in-flight must be >= 1, got {max_in_flight}")
    if max_in_flight is not None and name != "slurm":
        raise ConfigError("--max-in-flight is Slurm's array throttle: it needs --executor slurm (use --jobs here)")
    if name == "local":
        return InProcess() if (jobs or 1) == 1 or n_units <= 1 else LocalProcesses(jobs)
    return SubmititJobs("slurm" if name == "slurm" else "local", jobs_dir,
                        jobs or (max(1, n_units) if name == "slurm" else 1), max_in_flight=max_in_flight)


def exit_when_gone(pid: int, on_gone=None, poll_s: float = 1.0) -> None:
    """End this process (or call on_gone) as soon as process `pid` has exited: the grid process, watched by its
    local workers and jobs. A killed (SIGTERM/SIGKILL) grid does not take its spawn workers or local submitit jobs
    with it; left alone they would train on beside a restarted grid. The run keeps its last checkpoint, as when
    the grid itself is stopped. A pidfd becomes readable when `pid` exits (Linux >= 5.3); elsewhere, poll."""
    on_gone = on_gone or (lambda: os._exit(1))
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        on_gone()
        return
    except (AttributeError, OSError):  # no pidfd: poll
        def watch():
            while pid_alive(pid):
                time.sleep(poll_s)
            on_gone()
    else:
        def watch():
            select.select([fd], [], [])
            os.close(fd)
            on_gone()

    threading.Thread(target=watch, name="exit-with-grid", daemon=True).start()


# ---------------------------------------------------------------------------------------------- local
class InProcess:
    """One unit at a time, in this process (tests pass ImageData objects, and see the progress bars)."""
    slots = 1
    in_process = True

    def threads(self, run: GridRun) -> int:
        return 0  # the config's train.threads, else torch's default

    def check(self, runs: list[GridRun]) -> None:
        """Nothing to check: this process takes no resources from the grid."""

    def attach(self, run: GridRun) -> Future | None:
        return None

    def submit(self, run: GridRun, fn, *args) -> Future:
        """fn(*args) now; its result or its exception (any Exception: KeyboardInterrupt stops the grid) in a
        completed Future."""
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except Exception as e:
            fut.set_exception(e)
        return fut

    def where(self, run: GridRun) -> str:
        return ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class LocalProcesses:
    """`slots` spawn processes on this machine, each run with cores // slots torch threads."""
    in_process = False

    def __init__(self, slots: int):
        self.slots = slots
        # spawn, not fork: torch's thread pools and any CUDA context do not survive a fork.
        self._pool = ProcessPoolExecutor(max_workers=slots, mp_context=mp.get_context("spawn"),
                                         initializer=exit_when_gone, initargs=(os.getpid(),))

    def threads(self, run: GridRun) -> int:
        return max(1, available_cpus() // self.slots)

    def check(self, runs: list[GridRun]) -> None:
        """Nothing to check: local processes take no resources from the grid."""

    def attach(self, run: GridRun) -> Future | None:
        return None

    def submit(self, run: GridRun, fn, *args) -> Future:
        return self._pool.submit(fn, *args)

    def where(self, run: GridRun) -> str:
        return ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._pool.shutdown(wait=True)


# ---------------------------------------------------------------------------------------------- submitit
class CellFailed(RuntimeError):
    """A run's job ended without results: its exception, or how it ended, and its log."""


class _Cell:
    """One grid run as a submitit job. Checkpointable: on preemption or near the time limit submitit calls
    checkpoint(), which requeues the same call, and the requeued run resumes from its last.pt. With
    driver_pid (jobs on this machine) the job ends when the grid process does, as the local pool's do."""

    def __init__(self, fn, driver_pid: int | None = None):
        self.fn = fn
        self.driver_pid = driver_pid

    def __call__(self, *args):
        if self.driver_pid is not None:
            exit_when_gone(self.driver_pid)
        return self.fn(*args)

    def checkpoint(self, *args):
        import submitit  # optional dependency (the cluster extra); only the submitit executors need it

        return submitit.helpers.DelayedSubmission(self, *args)


SUBMIT_LIMIT = ("submit limit", "maxsubmitjob", "maxsubmitjobs")  # sbatch's words when MaxSubmitJobs refuses


class SubmititJobs:
    """Each run a submitit job (cluster "slurm" or "local") with the run's resources; at most `slots` at once. On
    Slurm the runs go out as arrays (the module's docstring). A thread polls the jobs and completes their Futures."""
    in_process = False

    def __init__(self, cluster: str, jobs_dir: Path, slots: int, poll_s: float | None = None,
                 max_in_flight: int | None = None, batch_window_s: float = 0.2):
        try:
            import submitit  # optional dependency (the cluster extra); only the submitit executors need it
        except ImportError as e:
            raise ConfigError("--executor slurm / submitit-local needs submitit: pip install 'genssl[cluster]' "
                              "(or pip install submitit)") from e
        if cluster == "slurm" and submitit.SlurmExecutor.affinity() <= 0:
            raise ConfigError("--executor slurm: no `srun` on PATH, so this is not a Slurm login node; run "
                              "there, or try the grid here with --executor submitit-local")
        self.submitit = submitit
        self.cluster = cluster
        self.jobs_dir = Path(jobs_dir)
        self.slots = slots
        self.poll_s = poll_s if poll_s is not None else (0.1 if cluster == "local" else 5.0)
        self.max_in_flight = max_in_flight
        self.batch_window_s = batch_window_s
        self._queued: list[tuple[GridRun, object, tuple, Future]] = []  # Slurm: runs not submitted yet
        self._queued_at = 0.0
        self._held = False  # the queue waits for one of our jobs to end (the submit limit refused even one)
        self._jobs: dict[str, object] = {}        # run name -> its current submitit job
        self._watch: dict[Future, object] = {}    # futures not completed yet -> their job
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="submitit-poller", daemon=True)
        self._poller.start()

    def threads(self, run: GridRun) -> int:
        return run.resources.cpus

    def parameters(self, run: GridRun) -> dict:
        """submitit's AutoExecutor parameters for a run: its resources, its Slurm extras prefixed `slurm_`."""
        r = run.resources
        params = {"name": f"genssl-{run.name}", "timeout_min": r.time_min, "cpus_per_task": r.cpus,
                  "gpus_per_node": r.gpus, "nodes": 1, "tasks_per_node": 1, "stderr_to_stdout": True}
        if r.mem_gb is not None:
            params["mem_gb"] = r.mem_gb
        return params | {f"slurm_{k}": v for k, v in r.slurm.items()}

    def check(self, runs: list[GridRun]) -> None:
        """Fail before any job starts on a resources.slurm key that submitit does not know."""
        probe = self.submitit.AutoExecutor(self.jobs_dir, cluster="local")  # validates names, submits nothing
        for run in runs:
            try:
                probe.update_parameters(**self.parameters(run))
            except (NameError, AssertionError) as e:
                raise ConfigError(f"resources of {run.name} (method entry {run.label!r}): {e}") from e

    def submit(self, run: GridRun, fn, *args) -> Future:
        """fn(*args) as a job; on Slurm the run is queued for the next array (`flush`)."""
        if self.cluster == "slurm":
            fut: Future = Future()
            with self._lock:
                self._queued.append((run, fn, args, fut))
                self._queued_at = time.monotonic()
            return fut
        folder = self.jobs_dir / run.name
        if self.cluster == "local":  # local job ids are process ids, which repeat: drop an old attempt's result
            for stale in folder.glob("*_result.pkl"):
                stale.unlink()
        fut: Future = Future()
        try:
            executor = self.submitit.AutoExecutor(folder, cluster=self.cluster)
            executor.update_parameters(**self.parameters(run))
            job = executor.submit(_Cell(fn, os.getpid() if self.cluster == "local" else None), *args)
        except Exception as e:  # sbatch refused it (partition, limits, ...): this run fails, the others go on
            fut.set_exception(CellFailed(f"submitting {run.name} to {self.cluster} failed: {e}"))
            return fut
        if self.cluster == "local":
            job._results_timeout_s = 1.0  # a local job writes its result before its process exits
        else:
            atomic_write_json({"cluster": self.cluster, "job_id": job.job_id, "submitted": time.time()},
                              folder / JOB_RECORD)
        return self._track(run, job, fut)

    def flush(self) -> None:
        """Submit the queued runs as arrays, one per set of job parameters, within the submit limit (the module's
        docstring); what the limit holds back stays queued."""
        with self._lock:
            queued, self._queued, self._held = self._queued, [], False
        groups: dict[str, list] = {}
        for item in queued:
            params = {k: v for k, v in self.parameters(item[0]).items() if k != "name"}
            groups.setdefault(json.dumps(params, sort_keys=True, default=str), []).append((params, item))
        held = []
        for members in groups.values():
            held += self._submit_arrays(members[0][0], [item for _, item in members])
        if held:
            with self._lock:
                self._queued[:0] = held
                self._held = True

    def _submit_arrays(self, params: dict, items: list) -> list:
        """Submit `items` (runs with the same job parameters) as arrays; returns those the submit limit held back."""
        folder = self.jobs_dir / "slurm"
        size = len(items)
        while items:
            chunk = items[:size]
            executor = self.submitit.AutoExecutor(folder, cluster="slurm")
            executor.update_parameters(name=f"genssl-{self.jobs_dir.parent.name}", **params)
            if self.max_in_flight is not None:
                executor.update_parameters(slurm_array_parallelism=self.max_in_flight)
            try:
                with executor.batch():
                    jobs = [executor.submit(_Cell(fn), *args) for _, fn, args, _ in chunk]
            except Exception as e:
                if any(w in str(e).lower() for w in SUBMIT_LIMIT):
                    if size == 1:
                        return items  # wait for one of our jobs to end
                    size = max(1, size // 2)
                    continue
                for run, _, _, fut in chunk:  # refused for another reason (partition, ...): these runs fail
                    fut.set_exception(CellFailed(f"submitting {run.name} to slurm failed: {e}"))
            else:
                for (run, _, _, fut), job in zip(chunk, jobs):
                    atomic_write_json({"cluster": self.cluster, "job_id": job.job_id, "folder": str(folder),
                                       "submitted": time.time()}, self.jobs_dir / run.name / JOB_RECORD)
                    self._track(run, job, fut)
                array = jobs[0].job_id.split("_")[0]
                throttle = f", at most {self.max_in_flight} running" if self.max_in_flight else ""
                print(f"  submitted {len(chunk)} run(s) as Slurm job {array}" +
                      (f" (an array of {len(chunk)}{throttle})" if len(chunk) > 1 else "") +
                      f": {', '.join(r.name for r, *_ in chunk)}; logs under {folder}", file=sys.stderr)
            items = items[len(chunk):]
            size = min(size, len(items)) if items else size
        return []

    def attach(self, run: GridRun) -> Future | None:
        """A Slurm job of an earlier submission of this run that is still queued or running (its driver was
        stopped): wait for it rather than start a second job on the same run folder."""
        record = self.jobs_dir / run.name / JOB_RECORD
        if self.cluster != "slurm" or not record.is_file():
            return None
        saved = json.loads(record.read_text())
        if saved.get("cluster") != self.cluster:
            return None
        job = self.submitit.SlurmJob(folder=saved.get("folder", record.parent), job_id=str(saved["job_id"]))
        if job.done(force_check=True):
            return None
        return self._track(run, job, Future())

    def where(self, run: GridRun) -> str:
        job = self._jobs.get(run.name)
        if job is None:
            return ""
        kind = "slurm job" if self.cluster == "slurm" else "local submitit job"
        return f"{kind} {job.job_id}, log {job.paths.stdout}"

    def _track(self, run: GridRun, job, fut: Future) -> Future:
        with self._lock:
            self._jobs[run.name] = job
            self._watch[fut] = job
        return fut

    def _poll(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                due = self._queued and not self._held and time.monotonic() - self._queued_at >= self.batch_window_s
            if due:
                self.flush()
            with self._lock:
                watched = list(self._watch.items())
            if self.cluster == "slurm" and watched:  # one sacct for all our jobs, then read its answer
                self.submitit.SlurmJob.watcher.update()
            for fut, job in watched:
                try:
                    if not job.done():
                        continue
                    with self._lock:
                        self._watch.pop(fut, None)
                        self._held = False  # a job ended: what the submit limit held back may go now
                    self._resolve(fut, job)
                except Exception as e:  # never leave the grid waiting on a Future nobody completes
                    with self._lock:
                        self._watch.pop(fut, None)
                    if not fut.done():
                        fut.set_exception(CellFailed(f"job {job.job_id}: {type(e).__name__}: {e}"))
            self._stop.wait(self.poll_s)

    def _resolve(self, fut: Future, job) -> None:
        UncompletedJobError = self.submitit.core.utils.UncompletedJobError
        try:
            fut.set_result(job.result())
            return
        except UncompletedJobError:
            pass
        log = job.paths.stdout
        outcome = None
        if job.paths.result_pickle.exists():
            outcome = self.submitit.core.utils.pickle_load(job.paths.result_pickle)
        if outcome is not None and outcome[0] == "error":  # the run raised: its exception's last line
            last = [line for line in outcome[1].strip().splitlines() if line.strip()][-1]
            fut.set_exception(CellFailed(f"{last.strip()} (job {job.job_id}; log: {log})"))
        else:
            fut.set_exception(CellFailed(
                f"job {job.job_id} ended without a result (state {job.state}): killed, out of memory or past "
                f"its time limit too often? Its last.pt, if any, is kept for a resubmission; log: {log}"))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self._stop.set()
        self._poller.join()
        with self._lock:
            left = list(self._watch.values())
            self._watch.clear()
            unsent, self._queued = self._queued, []
        for run, _, _, fut in unsent:  # the grid stopped before these were submitted
            fut.cancel()
        if not left:
            return
        ids = ", ".join(str(j.job_id) for j in left)
        if self.cluster == "local":  # on this machine: end them with the grid, as the local pool does
            for job in left:
                job.cancel(check=False)
            print(f"genssl compare: stopped {len(left)} local submitit job(s) ({ids}); their runs keep their "
                  f"last.pt and resume when the grid runs again", file=sys.stderr)
        else:
            print(f"genssl compare: {len(left)} Slurm job(s) keep running ({ids}); run the same command again to "
                  f"wait for them and report (it does not submit them twice), or scancel them", file=sys.stderr)
