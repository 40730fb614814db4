"""`RunDir`: the one owner of a run folder's files, their names, and how each is written and read.

    <run>/config.yaml    the resolved run config (re-run it with `genssl train config.yaml`)
    <run>/split.pt       the labeled / unlabeled / validation indices
    <run>/last.pt        everything needed to resume (prev.pt: the one before it, the fallback)
    <run>/best.pt        the weights chosen on the validation split
    <run>/results.json   final metrics, written last
    <run>/upstream.json  for runs built on other runs: the fingerprints of their results
    <run>/tb/            TensorBoard events;  <run>/encoder/  an exported encoder
    <run>/lock.json      while a process trains the run: who (genssl.runs.lock; `hold_runs`)
    <run>/error.txt      the traceback of the run's last attempt, when it failed

One process writes a run folder at a time: it holds the folder's lock (`hold_runs`; a grid's worker, and every
Trainer, for the whole attempt), and a process that has lost its lock writes no checkpoint or results there.

A checkpoint is one dict (format 2): format version, genssl version, method name, the resolved config, the
data spec, the weights (and, in last.pt, optimizer/scaler/sampler/RNG states), and a sha256 over every
tensor's bytes and every other value, checked on load. So a model is rebuilt from its checkpoint alone
(`load_method`), without the dataset, and a byte flipped inside tensor data is an error, not a silent load.
Format-1 checkpoints (no data spec, no checksum) are still read; rebuilding from one needs the data spec
from elsewhere (`load_method(..., spec=...)`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Iterator

import torch

from genssl._version import __version__
from genssl.config import RunConfig, build_run_config, dump_yaml, load_yaml
from genssl.data.spec import DataSpec
from genssl.data.split import Split
from genssl.fileio import CheckpointError, atomic_torch_save, atomic_write_json, atomic_write_text, safe_torch_load
from genssl.nn.state import load_state_checked
from genssl.registry import get_method_class
from genssl.runs.lock import LockBusy, LockLost, held, holding

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)


def state_digest(obj) -> str:
    """sha256 over a checkpoint's contents: tensors by dtype, shape and raw bytes; other leaves by repr; dict
    keys in sorted order (so it does not depend on insertion order)."""
    h = hashlib.sha256()

    def feed(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=repr):
                h.update(repr(k).encode())
                feed(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[" if isinstance(x, list) else b"(")
            for v in x:
                feed(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode())

    feed(obj)
    return h.hexdigest()


class RunBusy(LockBusy):
    """Another live process trains this run folder (it holds the folder's lock): `path` is the lock file."""

    def __str__(self) -> str:
        return (f"run folder {self.path.parent} is being trained by {self.holder}. Wait for it to finish, or stop "
                f"that process: a lock whose process has died is taken over (at once on the same host, from another "
                f"host once its heartbeat is stale)")


class RunDir:
    CONFIG, SPLIT, LAST, PREV, BEST = "config.yaml", "split.pt", "last.pt", "prev.pt", "best.pt"
    RESULTS, UPSTREAM, TB, ENCODER = "results.json", "upstream.json", "tb", "encoder"
    VAL_OUTCOMES, FILTER = "val_outcomes.pt", "filter.json"
    STAGED = "last.pt.staged"
    LOCK, ERROR = "lock.json", "error.txt"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @staticmethod
    def budget_checkpoint(budget_s: float) -> str:
        """The file of the weights the selection policy picked within a budget (train.budgets_s)."""
        return f"budget-{budget_s:g}s.pt"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def tb(self) -> Path:
        return self.path / self.TB

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def is_run(self) -> bool:
        return self.config_path.is_file()

    def require_run(self) -> None:
        if not self.is_run():
            raise FileNotFoundError(f"{self.path} is not a genssl run folder (no {self.CONFIG})")

    # ------------------------------------------------------------------ set-up
    def prepare(self, resume: bool) -> None:
        """Create the folder for a fresh run (refusing to overwrite one), or check it can be resumed."""
        if resume:
            if not (self.has(self.LAST) or self.has(self.PREV)):
                raise FileNotFoundError(f"--resume: no checkpoint at {self.path / self.LAST}")
            for stale in [*self.path.glob(".*.tmp"), self.path / self.STAGED]:  # a killed process's partial saves
                stale.unlink(missing_ok=True)
        elif self.path.exists() and any(p.name != self.LOCK for p in self.path.iterdir()):
            raise FileExistsError(f"run folder {self.path} already holds a run; pass --resume to continue it or "
                                  f"choose another name (nothing was overwritten)")
        self.path.mkdir(parents=True, exist_ok=True)

    def clear(self) -> None:
        """Remove everything in the folder but its lock: a run stopped before its first checkpoint starts over."""
        for p in self.path.iterdir() if self.path.is_dir() else ():
            if p.name == self.LOCK:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()

    def _lost(self) -> bool:
        lock = held(self.path / self.LOCK)
        return lock is not None and lock.lost

    def _check_writer(self) -> None:
        if self._lost():
            raise LockLost(f"{self.path}: this process lost the run folder's lock to another process (its heartbeat "
                           f"had gone stale), so it stops writing there; the other process's run stands")

    # ------------------------------------------------------------------ failures
    def write_error(self, text: str) -> None:
        """The traceback of a failed attempt (not written by a process that lost the folder to another)."""
        if not self._lost():
            atomic_write_text(text, self.path / self.ERROR)

    def clear_error(self) -> None:
        (self.path / self.ERROR).unlink(missing_ok=True)

    # ------------------------------------------------------------------ config, split, results
    def write_config(self, cfg: RunConfig) -> None:
        atomic_write_text(dump_yaml(cfg), self.config_path)

    def read_config(self) -> RunConfig:
        self.require_run()
        return build_run_config(load_yaml(self.config_path))

    def write_split(self, split: Split) -> None:
        split.save(self.path / self.SPLIT)

    def read_split(self) -> Split:
        return Split.load(self.path / self.SPLIT)

    def write_results(self, results: dict) -> None:
        self._check_writer()
        atomic_write_json(results, self.path / self.RESULTS)

    def read_results(self) -> dict:
        return json.loads((self.path / self.RESULTS).read_text())

    def write_val_outcomes(self, hits, steps: list[int], val_idx) -> None:
        """With train.oracle: which validation images each evaluation got right, (evals, n_val) bool, so a study
        can replay selection on subsets of the validation set (experiments/realistic/report.py)."""
        atomic_torch_save({"hits": hits, "steps": list(steps), "val": val_idx}, self.path / self.VAL_OUTCOMES)

    def read_val_outcomes(self) -> dict:
        return safe_torch_load(self.path / self.VAL_OUTCOMES)

    def write_filter_report(self, report: dict) -> None:
        atomic_write_json(report, self.path / self.FILTER)

    def read_filter_report(self) -> dict | None:
        path = self.path / self.FILTER
        return json.loads(path.read_text()) if path.is_file() else None

    def write_upstream(self, fingerprints: dict) -> None:
        atomic_write_json(fingerprints, self.path / self.UPSTREAM)

    def read_upstream(self) -> dict | None:
        path = self.path / self.UPSTREAM
        return json.loads(path.read_text()) if path.is_file() else None

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, name: str, payload: dict) -> None:
        """Write checkpoint `name` (best.pt, last.pt) atomically with the format header and checksum. A new
        last.pt keeps the previous one as prev.pt, the fallback when last.pt turns out damaged."""
        self._check_writer()
        ckpt = {"format_version": FORMAT_VERSION, "genssl_version": __version__, **payload}
        ckpt["sha256"] = state_digest({k: v for k, v in ckpt.items() if k != "sha256"})
        if name != self.LAST or not self.has(self.LAST):
            atomic_torch_save(ckpt, self.path / name)
            return
        # Write the new file completely first; only then does the old last.pt become prev.pt. A failed write
        # (disk full) leaves last.pt as it was; a kill between the two renames leaves prev.pt to resume from.
        staged = self.path / self.STAGED
        atomic_torch_save(ckpt, staged)
        os.replace(self.path / self.LAST, self.path / self.PREV)
        os.replace(staged, self.path / self.LAST)

    def load_checkpoint(self, name: str, map_location="cpu") -> dict:
        """Read and verify a checkpoint: a known format, and (format 2) a matching checksum."""
        path = self.path / name
        ckpt = safe_torch_load(path, map_location=map_location)
        if not isinstance(ckpt, dict):
            raise CheckpointError(f"{path}: not a genssl checkpoint (a {type(ckpt).__name__}, not a dict)")
        version = ckpt.get("format_version")
        if version not in READABLE_FORMATS:
            raise CheckpointError(f"{path}: checkpoint format {version!r} is not one this genssl reads "
                                  f"({', '.join(map(str, READABLE_FORMATS))})")
        if version >= 2:
            saved = ckpt.get("sha256")
            actual = state_digest({k: v for k, v in ckpt.items() if k != "sha256"})
            if saved != actual:
                raise CheckpointError(f"{path}: checksum mismatch (stored {str(saved)[:12]}..., contents "
                                      f"{actual[:12]}...): the file was damaged after it was written")
        return ckpt

    def load_resume_checkpoint(self, map_location="cpu") -> tuple[dict, str]:
        """last.pt, or prev.pt when last.pt is missing or damaged (with a warning that says so)."""
        errors = []
        for name in (self.LAST, self.PREV):
            if not self.has(name):
                errors.append(f"{name}: missing")
                continue
            try:
                ckpt = self.load_checkpoint(name, map_location)
            except CheckpointError as e:
                errors.append(str(e))
                continue
            if name != self.LAST:
                warnings.warn(f"resuming {self.path} from {name} (step {ckpt.get('step')}): "
                              f"{'; '.join(errors)}", RuntimeWarning, stacklevel=2)
            return ckpt, name
        raise CheckpointError(f"{self.path}: no usable checkpoint to resume from: {'; '.join(errors)}")

    # ------------------------------------------------------------------ models from checkpoints alone
    def load_method(self, name: str = BEST, device="cpu", spec: DataSpec | None = None):
        """(method in eval mode with the checkpoint's weights, resolved RunConfig, checkpoint), rebuilt from the
        checkpoint's config and data spec; no dataset is read. `spec` is needed only for format-1 files."""
        ckpt = self.load_checkpoint(name)
        cfg = build_run_config(ckpt["config"]) if "config" in ckpt else self.read_config()
        if "data_spec" in ckpt:
            spec = DataSpec.from_dict(ckpt["data_spec"])
        elif spec is None:
            raise CheckpointError(f"{self.path / name}: a format-1 checkpoint has no data spec; pass the data "
                                  f"(or retrain with this genssl) to rebuild the model")
        method = get_method_class(cfg.method_name)(cfg.method, spec)
        state = ckpt.get("model", ckpt.get("method_state", {}).get("model"))
        if state is None:
            raise CheckpointError(f"{self.path / name}: neither a best.pt ('model') nor a last.pt "
                                  f"('method_state') checkpoint")
        load_state_checked(method, state, str(self.path / name))
        method.lay_out(cfg.train.channels_last)  # evaluated in the layout it trained in
        return method.to(device).eval(), cfg, ckpt


@contextlib.contextmanager
def hold_runs(folders, wait: bool = False) -> Iterator[None]:
    """Hold the lock of each run folder (created if missing) for the block: this process is their one writer.
    Another live process holds one: raise RunBusy naming it, or with `wait` wait until it lets go (or dies)."""
    paths = []
    for folder in folders:
        Path(folder).mkdir(parents=True, exist_ok=True)
        paths.append(Path(folder) / RunDir.LOCK)
    try:
        with holding(paths, wait):
            yield
    except LockBusy as e:
        if type(e) is LockBusy:  # one of these folders' locks, taken above
            raise RunBusy(e.path, e.holder) from None
        raise
