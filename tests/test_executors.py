"""`genssl compare` on a scheduler (genssl/compare/executors.py), through the real engine: submitit's
LocalExecutor starts each run as a job in its own subprocess, with submitit's pickles, logs, results and
requeue, as its SlurmExecutor does on a cluster. Tiny synthetic data (pickled into the jobs), tiny schedules."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from genssl.cli import main
from genssl.compare.executors import LocalProcesses, SubmititJobs, available_cpus, exit_when_gone
from genssl.compare.grid import Resources
from genssl.compare.runner import load_grid, run_grid
from genssl.config import ConfigError
from genssl.runs.run_dir import RunDir
from method_recipes import recipe

TINY_TRAIN = {"steps": 4, "batch_size": 32, "labeled_batch_size": 16, "eval_every": 2, "log_every": 2,
              "ckpt_every": 2, "eval_batch_size": 128, "progress": False, "precision": "fp32"}
# A run long enough to be killed between its first checkpoint and its end (~1 ms a step on one core).
LONG_TRAIN = {**TINY_TRAIN, "steps": 2000, "ckpt_every": 100, "eval_every": 1000, "log_every": 500}
SAMPLES = {"samples_from": "sgan", "classifier": {"steps": 4, "eval_every": 2, "batch_size": 16,
                                                  "labeled_batch_size": 8, "threshold": 0.0}}


def write_grid(tmp_path, methods: dict, train=TINY_TRAIN, name="grid.yaml", **extra) -> str:
    grid = {"out": str(tmp_path / "out"), "overrides": {"train": train}, "methods": methods, "n_labels": [20],
            "seeds": [0], **extra}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return str(path)


def synthetic(method: str, **method_cfg) -> dict:
    return {"method": {"name": method, **method_cfg}, "data": {"dataset": "synthetic", "n_val": 100}}


def rows(path: Path, drop=("wall_time_s_mean", "wall_time_s", "run_dir")) -> list[dict]:
    """A report CSV without the columns that differ between two executions of the same runs."""
    return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(path.read_text().splitlines())]


def engine(grid, out, **kw):
    return run_grid(grid, out=str(out), executor="submitit-local", progress=False, **kw)


def test_a_grid_through_the_engine_gives_the_local_results_reports_a_failing_run_and_collects(
        tmp_path, tiny_data, monkeypatch, capsys):
    # sgan+samples needs the sgan run: the engine starts it once that run has finished. `bad` diverges (at lr
    # 1e30 the weights overflow by step 2): it is reported with its log, bad+samples (built on it) is not
    # started, and the other runs finish and are tabulated. The sgan has the tests' small networks
    # (method_recipes): the engine's path is the same at any width.
    grid = write_grid(tmp_path, {"sgan": synthetic("sgan", **recipe("sgan")), "sgan+samples": SAMPLES,
                                 "bad": synthetic("supervised", lr=1e30, weight_decay=0.0),
                                 "bad+samples": {**SAMPLES, "samples_from": "bad"}})
    with pytest.raises(RuntimeError, match=r"2 of 4 runs failed"):
        run_grid(grid, out=str(tmp_path / "local"), data=tiny_data, progress=False)
    capsys.readouterr()
    with pytest.raises(RuntimeError, match=r"2 of 4 runs failed") as err:
        engine(grid, tmp_path / "engine", jobs=2, data=tiny_data)
    out = capsys.readouterr().out
    eng = tmp_path / "engine"
    assert rows(eng / "results.csv") == rows(tmp_path / "local" / "results.csv")
    assert rows(eng / "runs.csv") == rows(tmp_path / "local" / "runs.csv")
    markdown = (eng / "results.md").read_text()
    assert "| sgan+samples | 20 |" in markdown and "| bad | 20 | — | 0 (1 failed) |" in markdown

    msg = str(err.value)
    assert "bad+samples-n20-s0: _Failed: needs bad-n20-s0, which failed" in msg
    line = next(ln for ln in msg.splitlines() if ln.strip().startswith("bad-n20-s0:"))
    assert "CellFailed: genssl.training.trainer.DivergenceError: " in line and "diverged by step 2" in line
    log = Path(line.split("log: ")[1].rstrip(")"))
    assert log.parent == eng / "jobs" / "bad-n20-s0" and "DivergenceError" in log.read_text()
    assert not (eng / "jobs" / "bad+samples-n20-s0").exists()
    for name in ("sgan-n20-s0", "sgan+samples-n20-s0"):
        logs = list((eng / "jobs" / name).glob("*_log.out"))
        assert len(logs) == 1 and "Job completed successfully" in logs[0].read_text()
        assert f"submitted as local submitit job {logs[0].name.split('_')[0]}, log {logs[0]}" in out
    submitted = next((eng / "jobs" / "sgan+samples-n20-s0").glob("*_submitted.pkl")).stat().st_mtime
    assert (eng / "runs" / "sgan-n20-s0" / "results.json").stat().st_mtime <= submitted

    # --collect rewrites the report from the run folders and runs nothing; runs without results are listed.
    for f in ("results.csv", "results.md", "runs.csv"):
        (eng / f).unlink()
    monkeypatch.setattr("genssl.training.trainer.Trainer.fit", lambda self: pytest.fail("--collect trained"))
    assert main(["compare", grid, "--out", str(eng), "--collect"]) == 0
    printed = capsys.readouterr().out
    assert "collected 2 of 4 runs" in printed and "left out of the table: bad-n20-s0, bad+samples-n20-s0" in printed
    assert rows(eng / "results.csv") == [r for r in rows(tmp_path / "local" / "results.csv")
                                         if not r["method"].startswith("bad")]


def _job_process(folder: Path, timeout: float = 60.0) -> int:
    """The pid of the process that runs the submitit job whose folder is `folder` (its command line names it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmd = (proc / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"submitit.core._submit" in cmd and str(folder).encode() in cmd:
                    return int(proc.name)
        time.sleep(0.01)
    raise AssertionError(f"no job process for {folder}")


def test_a_killed_run_resumes_on_resubmission_and_a_preempted_one_is_requeued(tmp_path, tiny_data, capsys):
    """Two copies of one run, started together: one's process is SIGKILLed (as a node failure would), which
    fails it; the other gets USR2, what Slurm sends before a time limit or a preemption (`signal_delay_s`), and
    submitit calls its checkpoint(), requeues the same call and it continues from its last.pt. Resubmitted, the
    grid resumes the killed run from its last.pt. Both end exactly as the run trained uninterrupted here."""
    reference = write_grid(tmp_path, {"sup": synthetic("supervised", hidden=[32])}, train=LONG_TRAIN,
                           name="reference.yaml")
    run_grid(reference, out=str(tmp_path / "reference"), data=tiny_data, progress=False)
    expected = RunDir(tmp_path / "reference" / "runs" / "sup-n20-s0").read_results()
    grid = write_grid(tmp_path, {"killed": synthetic("supervised", hidden=[32]),
                                 "preempted": synthetic("supervised", hidden=[32])}, train=LONG_TRAIN)
    out = tmp_path / "out"
    errors = []

    def submit():
        try:
            engine(grid, out, jobs=2, data=tiny_data)
        except RuntimeError as e:
            errors.append(e)

    driver = threading.Thread(target=submit)
    driver.start()
    try:  # each signal right after the run's first checkpoint, long before its end
        pending = {"killed-n20-s0": signal.SIGKILL, "preempted-n20-s0": signal.SIGUSR2}
        deadline = time.monotonic() + 90
        while pending and time.monotonic() < deadline:
            for name, sig in list(pending.items()):
                if (out / "runs" / name / RunDir.LAST).exists():
                    os.kill(_job_process(out / "jobs" / name), sig)
                    del pending[name]
            time.sleep(0.01)
        assert not pending, f"no last.pt in time for {pending}"
    finally:
        driver.join(120)
    assert errors and "1 of 2 runs failed" in str(errors[0]), errors
    assert f"killed-n20-s0: CellFailed: job" in str(errors[0]) and "ended without a result" in str(errors[0])
    assert "log: " + str(out / "jobs" / "killed-n20-s0") in str(errors[0])
    killed = RunDir(out / "runs" / "killed-n20-s0")
    assert 0 < killed.load_resume_checkpoint()[0]["step"] < LONG_TRAIN["steps"] and not killed.has(RunDir.RESULTS)
    log = next((out / "jobs" / "preempted-n20-s0").glob("*_log.out")).read_text()
    assert "this job is preempted" in log and "Requeued job" in log
    assert log.count("Starting with JobEnvironment") == 2  # the same job ran the call twice
    _same_run(RunDir(out / "runs" / "preempted-n20-s0").read_results(), expected)

    capsys.readouterr()
    engine(grid, out, jobs=2, data=tiny_data)  # resubmitted: a new job continues the killed run from last.pt
    printed = capsys.readouterr().out
    assert "reusing 1 finished run(s)" in printed and "killed-n20-s0, resumes from its last.pt" in printed
    _same_run(killed.read_results(), expected)


def _same_run(results: dict, reference: dict) -> None:
    for key in ("test_acc", "best_val_acc", "best_step", "steps"):
        assert results[key] == reference[key], key


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """`srun`, `sbatch` and `sacct` stand-ins on PATH: sbatch keeps the script it was given and answers job 4242;
    sacct reports that job as RUNNING."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {"srun": "exit 0",
               "sbatch": f'cp "$1" {tmp_path}/sbatch_script.sh\necho "Submitted batch job 4242"',
               "sacct": 'printf "JobID|State|NodeList\\n4242|RUNNING|node7\\n"',
               "scancel": "exit 0"}
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "sbatch_script.sh"


def test_slurm_jobs_ask_for_each_runs_resources_and_a_resubmitted_grid_waits_for_them(tmp_path, fake_slurm,
                                                                                     capsys):
    grid = write_grid(tmp_path, {"sup": synthetic("supervised"), "sgan": synthetic("sgan")}, resources={
        "cpus": 2, "mem_gb": 8, "time_min": 90, "slurm": {"partition": "cpu", "account": "lab"},
        "methods": {"sgan": {"gpus": 1, "cpus": 4, "slurm": {"partition": "gpu"}}}})
    out_dir, runs = load_grid(grid)
    sgan = next(r for r in runs if r.label == "sgan")
    assert sgan.resources == Resources(cpus=4, gpus=1, mem_gb=8, time_min=90,
                                       slurm={"partition": "gpu", "account": "lab"})
    # The command line overrides the grid's resources: --resources.KEY=VALUE.
    _, again = load_grid(grid, ["--resources.time_min=30", "--resources.methods.sgan.slurm.qos=low"])
    assert next(r for r in again if r.label == "sgan").resources == Resources(
        cpus=4, gpus=1, mem_gb=8, time_min=30, slurm={"partition": "gpu", "account": "lab", "qos": "low"})
    with SubmititJobs("slurm", out_dir / "jobs", slots=10) as pool:
        pool.check(runs)
        assert pool.threads(sgan) == 4
        pool.submit(sgan, print, "never run here")
        assert pool.where(sgan) == ""  # queued for the next array
        pool.flush()
        assert pool.where(sgan).startswith("slurm job 4242, log ")
    script = fake_slurm.read_text()
    for flag in ("--cpus-per-task=4", "--gpus-per-node=1", "--mem=8GB", "--time=90", "--partition=gpu",
                 "--account=lab", "--job-name=genssl-out", "--signal=USR2@90"):
        assert f"#SBATCH {flag}\n" in script, flag
    assert "keep running (4242)" in capsys.readouterr().err
    record = json.loads((out_dir / "jobs" / "sgan-n20-s0" / "job.json").read_text())
    assert record["job_id"] == "4242" and record["cluster"] == "slurm" and record["folder"] == str(out_dir / "jobs"
                                                                                                  / "slurm")
    # The driver was stopped; run again, it waits for the job that sacct still reports RUNNING.
    with SubmititJobs("slurm", out_dir / "jobs", slots=10) as pool:
        assert pool.attach(sgan) is not None and pool.attach(runs[0]) is None
    fake_slurm.unlink()
    # An unknown Slurm parameter fails before anything is submitted, naming the run and the valid ones.
    bad = write_grid(tmp_path, {"sup": synthetic("supervised")}, resources={"slurm": {"partitoin": "gpu"}})
    with pytest.raises(ConfigError, match=r"(?s)resources of sup-n20-s0.*'partitoin'.*Valid arguments:.*partition"):
        run_grid(bad, executor="slurm", progress=False)
    assert not fake_slurm.exists()


def test_slurm_needs_a_login_node(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    grid = write_grid(tmp_path, {"sup": synthetic("supervised")})
    assert main(["compare", grid, "--executor", "slurm"]) == 2
    assert "no `srun` on PATH" in capsys.readouterr().err


@pytest.mark.parametrize("resources, message", [
    ({"cpu": 2}, r"unknown key\(s\) cpu in resources; valid keys: cpus, gpus, mem_gb, time_min, slurm, methods"),
    ({"cpus": 0}, r"resources.cpus must be an integer >= 1, got 0"),
    ({"time_min": 1.5}, r"resources.time_min must be a whole number of minutes >= 1, got 1.5"),
    ({"methods": {"sgan": {"gpus": 1}}}, r"resources.methods names sgan, which are not method entries"),
    ({"methods": {"sup": {"mem": 4}}}, r"unknown key\(s\) mem in resources.methods.sup; valid keys: cpus, gpus, "
                                       r"mem_gb, time_min, slurm$"),
])
def test_bad_resources_fail_naming_the_key(tmp_path, resources, message):
    with pytest.raises(ConfigError, match=message):
        load_grid(write_grid(tmp_path, {"sup": synthetic("supervised")}, resources=resources))


def test_local_threads_follow_the_cpus_this_process_may_use(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert available_cpus() == 3
    _, runs = load_grid(write_grid(tmp_path, {"sup": synthetic("supervised")}))
    with LocalProcesses(2) as pool:
        assert pool.threads(runs[0]) == 1
    with LocalProcesses(1) as pool:
        assert pool.threads(runs[0]) == 3


def test_a_job_on_this_machine_ends_when_its_grid_process_does():
    """Local submitit jobs outlive a killed driver unless they watch it (a restarted grid would then train the
    same run folder twice): the watch fires as soon as the watched process exits."""
    grid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = threading.Event()
    try:
        exit_when_gone(grid.pid, on_gone=gone.set)
        assert not gone.wait(0.2)
        grid.kill()
        assert gone.wait(10)
    finally:
        grid.kill()
        grid.wait()


# ---------------------------------------------------------------------------------------------- fake Slurm
@pytest.fixture
def fake_cluster(tmp_path, monkeypatch):
    """tests/fake_slurm.py's sbatch / squeue / sacct / scontrol / scancel / srun on PATH; returns its state folder."""
    import fake_slurm

    state = tmp_path / "slurm_state"
    fake_slurm.install(tmp_path / "slurm_bin", state)
    monkeypatch.setenv("PATH", f"{tmp_path / 'slurm_bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    return state


def _wait(futures, timeout=120):
    deadline = time.monotonic() + timeout
    while not all(f.done() for f in futures):
        assert time.monotonic() < deadline, f"{sum(not f.done() for f in futures)} futures left"
        time.sleep(0.05)


def test_a_50_run_grid_goes_out_as_throttled_arrays_within_the_submit_limit(tmp_path, fake_cluster, monkeypatch,
                                                                            capsys):
    """MaxSubmitJobs = 20 (every pending or running array task counts, as in Slurm): the 50 ready runs are offered
    as one array of 50, refused, split until an array fits, and the rest go out as the grid's jobs end. No
    submission ever passes the limit, every array carries the --max-in-flight throttle, and every run ends."""
    import fake_slurm

    monkeypatch.setenv("FAKE_SLURM_LIMIT", "20")
    _, runs = load_grid(write_grid(tmp_path, {"sup": synthetic("supervised")}, n_labels=[10, 20, 30, 40, 50],
                                   seeds=list(range(10))))
    assert len(runs) == 50
    with SubmititJobs("slurm", tmp_path / "out" / "jobs", slots=50, poll_s=0.05, max_in_flight=4) as pool:
        futures = {run.name: pool.submit(run, print, run.name) for run in runs}
        _wait(futures.values())
    st = fake_slurm.read_state(fake_cluster)
    accepted = [s for s in st["submissions"] if s["accepted"]]
    assert st["max_active"] <= 20 and any(not s["accepted"] for s in st["submissions"])
    assert st["submissions"][0] == {"array": "0-49%4", "tasks": 50, "active_before": 0, "accepted": False}
    assert sum(s["tasks"] for s in accepted) == 50  # an array of one is a plain job; submitit's %N is <= size
    assert all(s["array"] is None or s["array"] == f"0-{s['tasks'] - 1}%{min(4, s['tasks'])}" for s in accepted)
    assert all(s["active_before"] + s["tasks"] <= 20 for s in accepted) and len(accepted) < 50
    assert max(st["max_running"].values()) <= 4
    done = {name: f.result() for name, f in futures.items()}  # the fake's result for each array task
    assert len(set(done.values())) == 50 and all(v.endswith(" done") for v in done.values())
    record = json.loads((tmp_path / "out" / "jobs" / runs[0].name / "job.json").read_text())
    assert f"{record['job_id']} done" == done[runs[0].name] and "_" in record["job_id"]
    assert re.search(r"submitted 1\d run\(s\) as Slurm job \d+ \(an array of 1\d, at most 4 running\)",
                     capsys.readouterr().err)


def test_max_in_flight_is_for_slurm_only(tmp_path, capsys):
    grid = write_grid(tmp_path, {"sup": synthetic("supervised")})
    assert main(["compare", grid, "--max-in-flight", "2"]) == 2
    assert "--max-in-flight is Slurm's array throttle" in capsys.readouterr().err
    assert main(["compare", grid, "--executor", "slurm", "--max-in-flight", "0"]) == 2
    assert "--max-in-flight must be >= 1, got 0" in capsys.readouterr().err


def test_a_preempted_array_task_is_requeued_and_ends(tmp_path, fake_cluster, monkeypatch):
    """The real submitit worker, run by the fake cluster as array task 4242_0: USR2 (what Slurm sends on a
    preemption, or `signal_delay_s` before a time limit) makes submitit call the job's checkpoint() and
    `scontrol requeue 4242_0`; the fake puts the task back to pending, runs it again, and the call ends."""
    import fake_slurm

    monkeypatch.setenv("FAKE_SLURM_RUN", "1")
    _, runs = load_grid(write_grid(tmp_path, {"sup": synthetic("supervised")}, seeds=[0, 1]))
    marker = tmp_path / "started"
    with SubmititJobs("slurm", tmp_path / "out" / "jobs", slots=2, poll_s=0.05) as pool:
        first = pool.submit(runs[0], fake_slurm.until_preempted, str(marker))
        other = pool.submit(runs[1], print, "second task")
        deadline = time.monotonic() + 90
        while not marker.exists():
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.05)
        time.sleep(0.5)  # past submitit's signal handler setup, inside the call
        os.kill(int(marker.read_text()), signal.SIGUSR2)
        _wait([first, other])
    assert first.result() == "finished after its requeue" and other.result() is None
    deadline = time.monotonic() + 30
    while (task := fake_slurm.read_state(fake_cluster)["tasks"]["4242_0"])["state"] == "RUNNING":
        assert time.monotonic() < deadline  # its result is written before its process ends
        subprocess.run(["squeue"], capture_output=True, check=True)  # a tick of the fake cluster
        time.sleep(0.05)
    assert task["state"] == "COMPLETED" and task["restarts"] == 1
    log = (tmp_path / "out" / "jobs" / "slurm" / "4242_0_0_log.out").read_text()
    assert "this job is preempted" in log and "Requeued job 4242_0 (3 remaining timeouts)" in log
