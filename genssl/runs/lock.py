"""A lock file that works where `flock` may not: one holder at a time among the processes, on any hosts, that share
a filesystem (a local disk, NFS, Lustre, GPFS). A run folder's one writer holds it (genssl.runs.run_dir.hold_runs).

    taken      os.open(O_CREAT | O_EXCL): atomic on local disks and on NFSv3 and later, so of two processes that
               race for it one creates the file and the other gets FileExistsError.
    contents   JSON written once, at creation: host, pid, pid namespace, boot id, the process's start time
               since boot, start time, command line and a random token (which acquisition holds it). Never
               rewritten.
    heartbeat  the file's modification time, touched (os.utime) by a daemon thread every `heartbeat_s` (30 s).
               A thread, not a touch at each checkpoint: checkpoints are a config choice (minutes or hours apart,
               and the first comes after loading data, filtering and compiling), so a checkpoint heartbeat would
               need a staleness limit longer than any gap between them, which nobody knows. A touch never rewrites
               the contents, so a holder that has lost its lock cannot overwrite its successor's.
    taken over when its holder is provably dead (same host and pid namespace, and the machine has rebooted since
               (another boot id), or that pid is gone, a zombie, or a newer process that reuses the number (its start
               time since boot differs))
               or its heartbeat is older than `stale_s` (300 s: ten missed beats, well beyond NFS's attribute
               caching of up to 60 s; from another host nothing else proves a process dead, so hosts' clocks must
               agree to well within it). The taker renames the file aside and checks that it moved the lock it
               judged, so of two takers only one wins.
    released   on leaving `holding`, however it is left (exceptions, SystemExit, KeyboardInterrupt). A SIGKILLed
               holder's file stays, and is taken over as above.

A holder whose heartbeat finds the file gone or someone else's has lost the lock: `lost` is set, one line says so,
and its run folder refuses checkpoint and results writes from then on (RunDir). GENSSL_LOCK_HEARTBEAT_S and
GENSSL_LOCK_STALE_S set the two intervals (tests; filesystems slower than these defaults assume).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

HEARTBEAT_S = 30.0
STALE_S = 300.0


class LockBusy(RuntimeError):
    """The lock file `path` is held by a live process; `holder` says which (pid, host, since, heartbeat age)."""

    def __init__(self, path: str | Path, holder: str):
        super().__init__(str(path), holder)
        self.path, self.holder = Path(path), holder

    def __str__(self) -> str:
        return f"{self.path} is held by {self.holder}"


class LockLost(RuntimeError):
    """This process held a lock and another took it over (its heartbeat had gone stale)."""


def _say(line: str) -> None:
    print(f"genssl: {line}", file=sys.stderr, flush=True)


def _interval(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(f"{name}={raw!r} must be a number of seconds > 0 (unset it for {default:g})")
    return value


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino  # two containers of one hostname have different ones
    except OSError:
        return None


def _boot_id() -> str | None:
    try:  # a new value each boot: a pid written before a reboot names nobody now
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def process_start_ticks(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (/proc/<pid>/stat field 22), or None where unknown:
    with the pid it names one process, as a pid reused by a later process has a later start."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host (and pid namespace) is running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:  # a killed process its parent has not reaped yet is a zombie: gone, though its pid answers
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass(frozen=True)
class Holder:
    """Who holds a lock file, as its contents and modification time say (unreadable contents: the holder is
    still writing them, or died doing so; only the heartbeat can judge it then)."""
    host: str
    pid: int
    pidns: int | None
    started: float
    token: str | None
    age_s: float
    boot_id: str | None = None
    start_ticks: int | None = None

    def here(self) -> bool:
        return self.host == socket.gethostname() and self.pidns == _pid_namespace()

    def dead_here(self) -> str | None:
        """Why this host's holder is provably dead (it is on this host and pid namespace), or None."""
        if self.token is None or not self.here():
            return None
        if self.boot_id is not None and _boot_id() is not None and self.boot_id != _boot_id():
            return "the machine has restarted since it took the lock"
        if not pid_alive(self.pid):
            return "that process is gone"
        if self.start_ticks is not None and process_start_ticks(self.pid) not in (None, self.start_ticks):
            return "that process is gone (its pid now belongs to a later process)"
        return None

    def describe(self) -> str:
        if self.token is None:
            return f"a process that has not finished writing the lock file (heartbeat {self.age_s:.0f} s ago)"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host} (since {since}, heartbeat {self.age_s:.0f} s ago)"


def read_holder(path: Path) -> Holder | None:
    """The holder of the lock file `path`, or None when there is none."""
    try:
        with open(path) as f:
            raw, age = f.read(), max(0.0, time.time() - os.fstat(f.fileno()).st_mtime)  # >= 0 despite clock skew
    except FileNotFoundError:
        return None
    try:
        info = json.loads(raw)
        return Holder(info["host"], int(info["pid"]), info.get("pidns"), float(info["started"]), info["token"], age,
                      info.get("boot_id"), info.get("start_ticks"))
    except (ValueError, KeyError, TypeError):
        return Holder("?", 0, None, 0.0, None, age)


class FileLock:
    """One acquisition of the lock file `path`: acquire() (or raise LockBusy), a heartbeat while held, release()."""

    def __init__(self, path: str | Path, heartbeat_s: float | None = None, stale_s: float | None = None):
        self.path = Path(path)
        self.heartbeat_s = heartbeat_s or _interval("GENSSL_LOCK_HEARTBEAT_S", HEARTBEAT_S)
        self.stale_s = stale_s or _interval("GENSSL_LOCK_STALE_S", STALE_S)
        self.token = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ------------------------------------------------------------------ taking
    def acquire(self, wait: bool = False, say: Callable[[str], None] = _say) -> None:
        """Take the lock, first taking over a dead or stale holder's. Held by a live process: raise LockBusy, or
        with `wait` check again every few seconds until it is free (or its holder dies)."""
        while not self._create():
            holder = read_holder(self.path)
            if holder is None:
                continue  # released between our attempt and the read: try again
            why = self._takeover_reason(holder)
            if why is not None:
                self._take_over(holder, why, say)
            elif not wait:
                raise LockBusy(self.path, holder.describe())
            else:
                time.sleep(min(2.0, self.heartbeat_s))
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock-heartbeat {self.path}", daemon=True)
        self._beat.start()

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        info = {"host": socket.gethostname(), "pid": os.getpid(), "pidns": _pid_namespace(), "boot_id": _boot_id(),
                "start_ticks": process_start_ticks(os.getpid()), "started": time.time(), "token": self.token,
                "command": " ".join(sys.argv)[:500]}
        # Not fileio's atomic write: a rename would replace another holder's lock. A reader that comes between the
        # create and this write sees no contents yet, and judges the lock by its heartbeat alone (read_holder).
        try:
            os.write(fd, json.dumps(info).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def _takeover_reason(self, holder: Holder) -> str | None:
        if holder.age_s > self.stale_s:
            return f"its heartbeat is {holder.age_s:.0f} s old (stale after {self.stale_s:g} s)"
        return holder.dead_here()

    def _take_over(self, holder: Holder, why: str, say: Callable[[str], None]) -> None:
        """Remove the lock `holder` held, unless another process has replaced it since it was judged."""
        aside = self.path.with_name(f"{self.path.name}.taken-{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another process took it over (or its holder released it) first
        moved = read_holder(aside)
        if moved is not None and moved.token != holder.token:  # a lock taken after we judged: put it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
        else:
            say(f"took over the lock {self.path} from {holder.describe()}: {why}")
        aside.unlink(missing_ok=True)

    # ------------------------------------------------------------------ holding
    def mine(self) -> bool:
        holder = read_holder(self.path)
        return holder is not None and holder.token == self.token

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.mine():
                self.lost = True
                _say(f"lost the lock {self.path} (another process took it over after this one's heartbeat went "
                     f"stale); this process writes nothing more there")
                return
            try:
                os.utime(self.path)  # touching a successor's lock (a race with the check above) only freshens it
            except OSError:
                pass  # a passing filesystem error: the next beat tries again

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if not self.lost and self.mine():
            self.path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- per process
_held: dict[str, FileLock] = {}


def held(path: str | Path) -> FileLock | None:
    """This process's lock on `path`, if it holds one."""
    return _held.get(os.path.realpath(path))


@contextlib.contextmanager
def holding(paths, wait: bool = False, say: Callable[[str], None] = _say) -> Iterator[None]:
    """Hold the lock files `paths` for the block, taken in sorted order (two processes that need overlapping sets
    cannot each hold what the other waits for). A path this process already holds is not taken again, so the
    block nests (a grid's worker holds a run's folder, then its Trainer does)."""
    with contextlib.ExitStack() as stack:
        for key in sorted({os.path.realpath(p) for p in paths}):
            if key in _held:
                continue
            lock = FileLock(key)
            lock.acquire(wait, say)
            _held[key] = lock
            stack.callback(_release, key)
        yield


def _release(key: str) -> None:
    _held.pop(key).release()
