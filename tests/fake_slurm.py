"""A fake Slurm for tests/test_executors.py: `sbatch`, `squeue`, `sacct`, `scontrol`, `scancel` and `srun` on PATH
(`install(bin_dir, state_dir)` writes them), all backed by one JSON state file under FAKE_SLURM_DIR.

- sbatch enforces a submit limit as Slurm's MaxSubmitJobs does: every job and every array task that is pending or
  running counts, and a submission that would pass FAKE_SLURM_LIMIT is refused whole, with Slurm's message. It
  records each submission's `--array` spec (accepted or refused) in the state file.
- Time advances when sacct or squeue is called (a tick): pending tasks start, at most `%N` of an array at once.
  With FAKE_SLURM_RUN=1 a task runs its sbatch script's command (submitit's worker) as a process with Slurm's
  environment variables; otherwise a running task completes at the next tick, with ("success", "<task id> done") as
  its submitit result.
- `scontrol requeue ID` puts a task back to pending and counts the restart, as Slurm does for a requeued job.

Also `until_preempted`, a job function for the requeue test (imported by the job's process from this file)."""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import re
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

COMMANDS = ("sbatch", "squeue", "sacct", "scontrol", "scancel", "srun")
ACTIVE = ("PENDING", "RUNNING")
LIMIT_ERROR = ("sbatch: error: QOSMaxSubmitJobPerUserLimit\nsbatch: error: Batch job submission failed: Job violates "
               "accounting/QOS policy (job submit limit, user's size and/or time limits)\n")


def install(bin_dir: Path, state_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" {name} "$@"\n')
        path.chmod(0o755)
    state_dir.mkdir(parents=True, exist_ok=True)


def read_state(state_dir: Path) -> dict:
    path = Path(state_dir) / "state.json"
    return json.loads(path.read_text()) if path.exists() else _empty()


def _empty() -> dict:
    return {"next_id": 4242, "tasks": {}, "arrays": {}, "submissions": [], "max_active": 0, "max_running": {}}


@contextmanager
def _state():
    d = Path(os.environ["FAKE_SLURM_DIR"])
    with open(d / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = read_state(d)
        yield state
        tmp = d / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(d / "state.json")


def _sbatch(script: str) -> int:
    text = Path(script).read_text()
    opts = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", text, re.M))
    spec = opts.get("array")
    n, throttle = 1, None
    if spec:
        m = re.fullmatch(r"0-(\d+)(?:%(\d+))?", spec)
        n, throttle = int(m.group(1)) + 1, int(m.group(2)) if m.group(2) else None
    limit = int(os.environ.get("FAKE_SLURM_LIMIT", "1000000"))
    with _state() as st:
        active = sum(t["state"] in ACTIVE for t in st["tasks"].values())
        accepted = active + n <= limit
        st["submissions"].append({"array": spec, "tasks": n, "active_before": active, "accepted": accepted})
        if not accepted:
            sys.stderr.write(LIMIT_ERROR)
            return 1
        jid = str(st["next_id"])
        st["next_id"] += 1
        srun = next(ln for ln in text.splitlines() if ln.startswith("srun "))
        words = shlex.split(srun)[1:]
        while words[0].startswith("--"):
            words = words[2:] if words[0] == "--output" else words[1:]
        st["arrays"][jid] = {"throttle": throttle, "command": words, "log": opts["output"]}
        for i in range(n):
            tid = f"{jid}_{i}" if spec else jid
            st["tasks"][tid] = {"array": jid, "index": i if spec else None, "state": "PENDING", "restarts": 0,
                                "pid": None}
        st["max_active"] = max(st["max_active"], active + n)
    print(f"Submitted batch job {jid}")
    return 0


def _tick(st: dict) -> None:
    run = os.environ.get("FAKE_SLURM_RUN") == "1"
    d = Path(os.environ["FAKE_SLURM_DIR"])
    for tid, t in st["tasks"].items():
        if t["state"] != "RUNNING":
            continue
        if run:
            rc = d / f"{tid}.{t['restarts']}.rc"
            if rc.exists():
                t["state"] = "COMPLETED" if rc.read_text().strip() == "0" else "FAILED"
        else:
            folder = Path(st["arrays"][t["array"]]["log"]).parent
            with open(folder / f"{tid}_0_result.pkl", "wb") as f:
                pickle.dump(("success", f"{tid} done"), f)
            t["state"] = "COMPLETED"
    for tid, t in st["tasks"].items():
        arr = st["arrays"][t["array"]]
        running = sum(u["state"] == "RUNNING" and u["array"] == t["array"] for u in st["tasks"].values())
        if t["state"] != "PENDING" or (arr["throttle"] is not None and running >= arr["throttle"]):
            continue
        t["state"] = "RUNNING"
        st["max_running"][t["array"]] = max(st["max_running"].get(t["array"], 0), running + 1)
        if run:
            t["pid"] = _start(d, tid, t, arr)


def _start(d: Path, tid: str, t: dict, arr: dict) -> int:
    jid = arr_id = t["array"]
    env = {**os.environ, "SLURM_JOB_ID": jid, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
           "SLURM_NTASKS": "1", "SLURM_JOB_NODELIST": "node1", "SUBMITIT_EXECUTOR": "slurm",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    log = arr["log"].replace("%A", arr_id).replace("%j", jid)
    if t["index"] is not None:
        env |= {"SLURM_ARRAY_JOB_ID": arr_id, "SLURM_ARRAY_TASK_ID": str(t["index"])}
        log = log.replace("%a", str(t["index"]))
    cmd = " ".join(shlex.quote(w) for w in arr["command"])
    rc = d / f"{tid}.{t['restarts']}.rc"
    pidfile = d / f"{tid}.pid"
    script = f"{cmd} >> {shlex.quote(log)} 2>&1 & echo $! > {pidfile}; wait $!; echo $? > {rc}"
    subprocess.Popen(["sh", "-c", script], env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(500):
        if pidfile.exists() and pidfile.read_text().strip():
            return int(pidfile.read_text())
        time.sleep(0.01)
    raise RuntimeError(f"fake slurm: {tid} did not start")


def _sacct(args: list[str]) -> int:
    ids = {args[i + 1] for i, a in enumerate(args) if a == "-j"}
    with _state() as st:
        _tick(st)
        print("JobID|State|NodeList")
        for tid, t in st["tasks"].items():
            if t["array"] in ids or tid in ids:
                print(f"{tid}|{t['state']}|node1")
    return 0


def _squeue() -> int:
    with _state() as st:
        _tick(st)
        print("JOBID STATE")
        for tid, t in st["tasks"].items():
            if t["state"] in ACTIVE:
                print(f"{tid} {t['state']}")
    return 0


def _scontrol(args: list[str]) -> int:
    if args[:1] == ["requeue"]:
        with _state() as st:
            t = st["tasks"][args[1]]
            t["state"], t["restarts"], t["pid"] = "PENDING", t["restarts"] + 1, None
    return 0


def _scancel(args: list[str]) -> int:
    with _state() as st:
        for tid, t in st["tasks"].items():
            if (tid in args or t["array"] in args) and t["state"] in ACTIVE:
                t["state"] = "CANCELLED"
    return 0


def until_preempted(marker: str) -> str:
    """A job's function: the first time, note it in `marker` and wait (for a preemption); after a requeue, end."""
    if Path(marker).exists():
        return "finished after its requeue"
    Path(marker).write_text(str(os.getpid()))
    time.sleep(120)
    return "never preempted"


if __name__ == "__main__":
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "sbatch":
        sys.exit(_sbatch(rest[-1]))
    if cmd == "sacct":
        sys.exit(_sacct(rest))
    if cmd == "squeue":
        sys.exit(_squeue())
    if cmd == "scontrol":
        sys.exit(_scontrol(rest))
    if cmd == "scancel":
        sys.exit(_scancel(rest))
    sys.exit(0)  # srun: submitit only checks that it exists
