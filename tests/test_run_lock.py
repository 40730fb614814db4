"""One writer per run folder (genssl.runs.lock, RunDir's hold_runs) and one grid scheduler that survives any failed
run (genssl.compare.runner): two `genssl compare` processes on one grid train each run once; a lock left by a
SIGKILLed process is taken over; a requeued job does not train beside a live predecessor; a run that raises
KeyError at step 3 is reported with its traceback while the rest of the grid finishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from datafiles import write_idx_dataset
from genssl.cli import main
from genssl.compare.runner import Busy, GridFailed, load_grid, run_grid, run_unit
from genssl.config import build_run_config
from genssl.registry import get_method_class
from genssl.runs.lock import FileLock, LockBusy, LockLost, held
from genssl.runs.run_dir import RunBusy, RunDir, hold_runs
from genssl.training.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent
TINY_TRAIN = {"steps": 6, "batch_size": 32, "labeled_batch_size": 16, "eval_every": 2, "log_every": 2,
              "ckpt_every": 2, "eval_batch_size": 128, "progress": False, "precision": "fp32", "threads": 1}
MNIST = {"dataset": "mnist", "n_val": 100, "download": False}


def write_grid(tmp_path, methods: dict, seeds=(0,), train=TINY_TRAIN) -> str:
    grid = {"out": str(tmp_path / "out"), "overrides": {"train": train}, "methods": methods, "n_labels": [20],
            "seeds": list(seeds)}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return str(path)


def entry(method: str, dataset: dict | None = None) -> dict:
    return {"method": {"name": method}, "data": dataset or {"dataset": "synthetic", "n_val": 100}}


def _env(tmp_path: Path, **extra: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), GENSSL_DATA=str(tmp_path / "data"), OMP_NUM_THREADS="1", **extra)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


HOLDER = textwrap.dedent("""
    import sys
    from genssl.runs.run_dir import hold_runs
    with hold_runs([sys.argv[1]]):
        print("held", flush=True)
        sys.stdin.readline()  # holds (its heartbeat beating) until the test closes stdin or kills it
""")


def _holder(folder: Path, env: dict) -> subprocess.Popen:
    """A process that holds `folder`'s lock, as a run's trainer does, once it has printed "held"."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _end(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


# ---------------------------------------------------------------------------------------------- the lock itself
def test_a_live_lock_elsewhere_is_busy_and_a_stale_one_is_taken_over(tmp_path, capsys):
    path = tmp_path / "lock.json"
    path.write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "pidns": 1, "started": time.time(),
                                "token": "theirs"}))
    with pytest.raises(LockBusy, match=r"lock.json is held by pid 1 on node-elsewhere \(since .*, heartbeat 0 s ago"):
        FileLock(path, stale_s=60).acquire()
    old = time.time() - 120
    os.utime(path, (old, old))  # its holder stopped beating two minutes ago
    lock = FileLock(path, stale_s=60)
    lock.acquire()
    try:
        assert lock.mine() and json.loads(path.read_text())["pid"] == os.getpid()
        assert "took over the lock" in capsys.readouterr().err
    finally:
        lock.release()
    assert not path.exists()


def test_a_lock_from_before_a_restart_or_of_a_reused_pid_is_taken_over_at_once(tmp_path, capsys):
    """This host, a fresh heartbeat and a live pid (this process's parent) prove nothing after a reboot (another boot
    id) or when the pid now names a later process (another start time): both are taken over without waiting for
    staleness; the same lock with this boot's id and that process's own start time is busy."""
    import socket

    from genssl.runs.lock import _boot_id, _pid_namespace, process_start_ticks

    path, live = tmp_path / "lock.json", os.getppid()
    mine = {"host": socket.gethostname(), "pid": live, "pidns": _pid_namespace(), "started": time.time(),
            "token": "theirs", "boot_id": _boot_id(), "start_ticks": process_start_ticks(live)}
    for changed, why in [({}, None), ({"boot_id": "another-boot"}, "the machine has restarted"),
                         ({"start_ticks": process_start_ticks(live) + 1}, "a later process")]:
        path.write_text(json.dumps({**mine, **changed}))
        lock = FileLock(path, stale_s=3600)
        if why is None:
            with pytest.raises(LockBusy):
                lock.acquire()
            continue
        lock.acquire()
        lock.release()
        assert why in capsys.readouterr().err


def test_a_holder_that_lost_its_lock_writes_nothing_more_and_leaves_the_new_lock(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GENSSL_LOCK_HEARTBEAT_S", "0.2")
    lock_path = tmp_path / RunDir.LOCK
    with hold_runs([tmp_path]):
        old = time.time() - 600  # as if this process had been stopped (SIGSTOP) for ten minutes
        os.utime(lock_path, (old, old))
        successor = FileLock(lock_path, stale_s=60)
        successor.acquire()
        deadline = time.monotonic() + 10
        while not held(lock_path).lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held(lock_path).lost
        with pytest.raises(LockLost, match=r"lost the run folder's lock to another process"):
            RunDir(tmp_path).write_results({"test_acc": 0.5})
        assert not RunDir(tmp_path).has(RunDir.RESULTS)
    assert successor.mine()  # leaving the block removed nothing of the successor's
    successor.release()
    assert "lost the lock" in capsys.readouterr().err


def test_a_lock_left_by_a_sigkilled_process_is_taken_over(tmp_path, tiny_data, capsys):
    _, runs = load_grid(write_grid(tmp_path, {"sup": entry("supervised")}))
    holder = _holder(runs[0].run_dir, _env(tmp_path))
    try:
        assert isinstance(run_unit(runs, data=tiny_data), Busy)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        outcome = run_unit(runs, data=tiny_data)  # the default staleness (300 s): the dead pid is the proof
    finally:
        _end(holder)
    assert outcome[runs[0].name][1] is False and RunDir(runs[0].run_dir).has(RunDir.RESULTS)
    err = capsys.readouterr().err
    assert f"took over the lock {runs[0].run_dir / RunDir.LOCK} from pid {holder.pid} on " in err
    assert "that process is gone" in err
    assert not (runs[0].run_dir / RunDir.LOCK).exists()


def test_a_requeued_job_does_not_train_beside_its_live_predecessor(tmp_path, tiny_data, monkeypatch):
    """The predecessor (a live process with a beating heartbeat) holds the run folder for longer than the
    staleness limit: the requeued job's unit comes back Busy, a Trainer on the folder refuses, and a unit told to
    wait trains only once the predecessor is gone."""
    fast = {"GENSSL_LOCK_HEARTBEAT_S": "0.2", "GENSSL_LOCK_STALE_S": "1"}
    for k, v in fast.items():
        monkeypatch.setenv(k, v)
    _, runs = load_grid(write_grid(tmp_path, {"sup": entry("supervised")}))
    run_dir = runs[0].run_dir
    holder = _holder(run_dir, _env(tmp_path, **fast))
    outcome = {}
    waiter = threading.Thread(target=lambda: outcome.update(run_unit(runs, data=tiny_data, wait=True)))
    try:
        time.sleep(1.5)  # past the staleness limit: only the heartbeat keeps the lock fresh
        busy = run_unit(runs, data=tiny_data)
        assert isinstance(busy, Busy) and f"pid {holder.pid} on " in busy.holder
        with pytest.raises(RunBusy, match=rf"run folder {run_dir} is being trained by pid {holder.pid}"):
            Trainer(build_run_config(runs[0].raw), run_dir=run_dir, data=tiny_data).fit()
        waiter.start()
        time.sleep(1.5)
        assert waiter.is_alive() and sorted(p.name for p in run_dir.iterdir()) == [RunDir.LOCK]
        holder.stdin.close()  # the predecessor ends
        holder.wait(30)
        waiter.join(120)
    finally:
        _end(holder)
    assert not waiter.is_alive() and outcome[runs[0].name][1] is False
    assert RunDir(run_dir).has(RunDir.RESULTS) and not (run_dir / RunDir.LOCK).exists()


# ---------------------------------------------------------------------------------------------- two grids at once
COUNTING_CLI = textwrap.dedent("""
    import os, sys
    from genssl.training.trainer import Trainer
    fit_all = Trainer._fit_all
    def counted(self):
        with open(os.environ["TRAIN_LOG"], "a") as f:
            f.write(f"{os.getpid()} {self.lanes[0].run.path.name}\\n")
        return fit_all(self)
    Trainer._fit_all = counted
    from genssl.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_two_compare_processes_on_one_grid_train_each_run_once(tmp_path):
    write_idx_dataset(tmp_path / "data" / "mnist", n_train=300, n_test=100)
    grid = write_grid(tmp_path, {"sup": entry("supervised", MNIST)}, seeds=(0, 1, 2),
                      train={**TINY_TRAIN, "steps": 40, "eval_every": 20, "ckpt_every": 20, "log_every": 10})
    log = tmp_path / "trained.txt"
    env = _env(tmp_path, TRAIN_LOG=str(log), GENSSL_LOCK_HEARTBEAT_S="0.5")
    procs = [subprocess.Popen([sys.executable, "-c", COUNTING_CLI, "compare", grid], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    trained = dict(reversed(line.split()) for line in log.read_text().splitlines())  # run name -> trainer's pid
    assert len(log.read_text().splitlines()) == 3 and sorted(trained) == ["sup-n20-s0", "sup-n20-s1", "sup-n20-s2"]
    runs_dir = tmp_path / "out" / "runs"
    for name, pid in trained.items():  # one set of event files (named <time>.<host>.<pid>.<n>): its trainer's
        events = list((runs_dir / name / "tb").rglob("events.out.tfevents*"))
        assert events and {e.name.split(".")[-2] for e in events} == {pid}, events
        assert not (runs_dir / name / RunDir.LOCK).exists()
    assert "| sup | 20 |" in (tmp_path / "out" / "results.md").read_text()
    for out in outputs:
        assert "| sup | 20 |" in out and "| 3 |" in out, out[-3000:]


# ---------------------------------------------------------------------------------------------- failed runs
def _key_error_at_step_3(monkeypatch, method: str = "pseudo_label", error: type[BaseException] = KeyError):
    cls = get_method_class(method)
    train_step = cls.train_step

    def failing(self, batch, step):
        if step == 3:
            raise error("no_such_key")
        return train_step(self, batch, step)

    monkeypatch.setattr(cls, "train_step", failing)


def test_a_run_that_raises_key_error_is_reported_with_its_traceback_and_the_grid_goes_on(tmp_path, monkeypatch,
                                                                                          capsys):
    write_idx_dataset(tmp_path / "data" / "mnist", n_train=300, n_test=100)
    monkeypatch.setenv("GENSSL_DATA", str(tmp_path / "data"))
    _key_error_at_step_3(monkeypatch)
    grid = write_grid(tmp_path, {"pl": entry("pseudo_label", MNIST), "sup": entry("supervised", MNIST)})
    assert main(["compare", grid]) == 1
    captured = capsys.readouterr()
    runs_dir = tmp_path / "out" / "runs"
    error = (runs_dir / "pl-n20-s0" / RunDir.ERROR).read_text()
    assert error.startswith("Traceback") and "in failing" in error and "KeyError: 'no_such_key'" in error
    assert RunDir(runs_dir / "sup-n20-s0").has(RunDir.RESULTS)  # the run after it trained
    assert not (runs_dir / "pl-n20-s0" / RunDir.LOCK).exists()
    assert "1 of 2 runs failed" in captured.err and "pl-n20-s0: KeyError: 'no_such_key'" in captured.err
    assert f"traceback: {runs_dir / 'pl-n20-s0' / RunDir.ERROR}" in captured.err
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "| pl | 20 | — | 0 (1 failed) |" in markdown and "| sup | 20 |" in markdown
    assert "- pl-n20-s0: KeyError: 'no_such_key'" in markdown

    monkeypatch.undo()  # the bug fixed: the same command resumes the failed run from its step-2 checkpoint
    monkeypatch.setenv("GENSSL_DATA", str(tmp_path / "data"))
    assert main(["compare", grid]) == 0
    assert "resumes from its last.pt" in capsys.readouterr().out
    assert not (runs_dir / "pl-n20-s0" / RunDir.ERROR).exists()


def test_any_exception_fails_only_its_run_but_keyboard_interrupt_stops_the_grid(tmp_path, tiny_data, monkeypatch):
    grid = write_grid(tmp_path, {"pl": entry("pseudo_label"), "sup": entry("supervised")})
    _key_error_at_step_3(monkeypatch, error=ZeroDivisionError)
    with pytest.raises(GridFailed, match=r"pl-n20-s0: ZeroDivisionError: no_such_key") as failed:
        run_grid(grid, data=tiny_data, progress=False)
    assert failed.value.errors == {"pl-n20-s0": tmp_path / "out" / "runs" / "pl-n20-s0" / RunDir.ERROR}
    _key_error_at_step_3(monkeypatch, method="supervised", error=KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        run_grid(grid, out=str(tmp_path / "other"), data=tiny_data, progress=False)
    assert not list((tmp_path / "other" / "runs").glob(f"*/{RunDir.LOCK}"))  # released on the way out
