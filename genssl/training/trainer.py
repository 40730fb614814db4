"""The step loop. Owns device, autocast, compile, evaluation cadence, TensorBoard, checkpoints, resume and the
NaN guard; knows nothing about what a method computes.

A run folder holds::

    config.yaml   the resolved config          split.pt     the labeled/unlabeled/val indices
    last.pt       everything to resume         best.pt      weights at the best validation accuracy
    tb/           TensorBoard events           results.json final metrics (written last)
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import torch

from genssl._version import __version__
from genssl.data.batching import SSLBatcher, to_float
from genssl.fileio import CheckpointError, atomic_torch_save, atomic_write_json, atomic_write_text, safe_torch_load
FORMAT_VERSION = 1
from genssl.config import RESUMABLE_OVERRIDES, RunConfig, dump_yaml, flatten
from genssl.data.datasets import ImageData, allows_hflip, load_dataset
from genssl.data.spec import DataSpec
from genssl.methods.base import Method
from genssl.training.monitor import Monitor, progress
from genssl.methods import create_method
from genssl.data.split import Split, make_split
from genssl.training.device import autocast, device_name, resolve_device
from genssl.training.distributed import wrap_method_for_ddp
from genssl.training.metrics import accuracy
from genssl.training.rng import rng_state, seed_everything, set_rng_state


class DivergenceError(RuntimeError):
    """A loss or weight went NaN/inf; the run stopped and its last good checkpoint is intact."""


def default_run_dir(cfg: RunConfig) -> Path:
    name = cfg.name or f"{cfg.method_name}-{cfg.data.dataset}-{cfg.data.n_labels}-s{cfg.train.seed}"
    return Path(cfg.out_dir) / name


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: str | Path | None = None, resume: bool = False,
                 data: tuple[ImageData, ImageData] | None = None, rank: int = 0, world_size: int = 1):
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
        self.resume = resume
        self._data = data
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0

    # ------------------------------------------------------------------ set-up
    def _prepare_run_dir(self) -> None:
        last = self.run_dir / "last.pt"
        if self.resume:
            if not last.is_file():
                raise FileNotFoundError(f"--resume: no checkpoint at {last}")
            for stale in self.run_dir.glob(".*.tmp"):  # half-written saves of a killed process (atomic writes)
                stale.unlink(missing_ok=True)
        elif self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise FileExistsError(f"run folder {self.run_dir} already holds a run; pass --resume to continue it or "
                                  f"choose another name (nothing was overwritten)")
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def _load_data(self):
        d = self.cfg.data
        train, test = self._data if self._data is not None else load_dataset(d.dataset, d.root, d.download)
        split_path = self.run_dir / "split.pt"
        if self.resume and split_path.is_file():
            split = Split.load(split_path)
            split.check_against(len(train), str(split_path))
        else:
            seed = d.split_seed if d.split_seed is not None else self.cfg.train.seed
            split = make_split(train.labels, train.num_classes, d.n_labels, d.n_val, seed, d.labeled_in_unlabeled)
            if self.is_main:
                split.save(split_path)
        if split.unlabeled.numel() == 0:
            raise ValueError("the unlabeled pool is empty: lower data.n_labels/n_val or set labeled_in_unlabeled")
        return train, test, split

    def _check_resume_compatible(self, ckpt: dict, path: Path) -> None:
        if ckpt.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format {ckpt.get('format_version')} is not {FORMAT_VERSION}")
        if ckpt["method"] != self.cfg.method_name:
            raise CheckpointError(f"{path}: checkpoint is from method {ckpt['method']!r}, but the config asks for "
                                  f"{self.cfg.method_name!r}; resume with the run's own config")
        saved, now = flatten(ckpt["config"]), flatten(self.cfg.to_dict())
        changed = sorted(k for k in set(saved) | set(now)
                         if saved.get(k) != now.get(k) and k not in RESUMABLE_OVERRIDES and k != "name")
        if changed:
            diffs = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
            raise CheckpointError(f"{path}: the config differs from the checkpoint's in ways that change the "
                                  f"computation ({diffs}). Only {', '.join(sorted(RESUMABLE_OVERRIDES))} may "
                                  f"change on resume")
        self.resume_overrides = {k: (saved.get(k), now.get(k)) for k in RESUMABLE_OVERRIDES
                                 if saved.get(k) != now.get(k)}

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        start_time = time.perf_counter()
        self.device = device = resolve_device(t.device)
        if t.threads:
            torch.set_num_threads(t.threads)
        if self.is_main:
            self._prepare_run_dir()
        seed_everything(t.seed + self.rank)
        train, test, split = self._load_data()
        images = train.images.to(device)
        labels = train.labels.to(device)
        x_val, y_val = images[split.val.to(device)], labels[split.val.to(device)]
        x_lab = to_float(images[split.labeled.to(device)])
        y_lab = labels[split.labeled.to(device)]
        spec = DataSpec(train.image_shape, train.num_classes, len(split.labeled), len(split.unlabeled),
                        allows_hflip(cfg.data.dataset))
        method = create_method(cfg.method_name, cfg.method, spec).to(device)
        method.setup(t.steps, t.precision)
        batcher = SSLBatcher(images, labels, split.labeled, split.unlabeled, t.labeled_batch_size, t.batch_size,
                             t.seed, shard=(self.rank, self.world_size))

        step, best_val, best_step, elapsed_before = 0, -1.0, -1, 0.0
        self.resume_overrides = {}
        if self.resume:
            path = self.run_dir / "last.pt"
            ckpt = safe_torch_load(path, map_location=device)
            self._check_resume_compatible(ckpt, path)
            method.load_checkpoint_state(ckpt["method_state"])
            batcher.load_state_dict(ckpt["batcher"])
            ranks_rng = ckpt.get("rng_ranks")  # data-parallel runs keep every rank's noise stream
            set_rng_state(ranks_rng[self.rank] if ranks_rng and len(ranks_rng) == self.world_size else ckpt["rng"])
            step, best_val, best_step = ckpt["step"], ckpt["best_val"], ckpt["best_step"]
            elapsed_before = ckpt.get("wall_time_s", 0.0)
            best_val, best_step = self._adopt_newer_best(step, best_val, best_step)
        else:
            with autocast(device, t.precision):
                method.initialize(batcher.next())
        self.ddp = None
        if self.world_size > 1:  # after initialize/resume, so every rank starts from rank 0's state
            self.ddp = wrap_method_for_ddp(method)
        if t.compile:
            method.compile_networks()
        if self.is_main:
            atomic_write_text(dump_yaml(cfg), self.run_dir / "config.yaml")
        # Events up to the saved step were written before the checkpoint; later ones belong to the lost timeline.
        monitor = Monitor(self.run_dir / "tb" if self.is_main else None,
                          purge_step=step + 1 if self.resume else None)
        self.last_good_step = step if self.resume else None

        def save_last(at_step: int) -> None:
            self._check_weights_finite(method, at_step)
            if self.ddp:
                self.ddp.sync_buffers()
            rng_ranks = self.ddp.gather(rng_state()) if self.ddp else None
            if self.is_main:
                atomic_torch_save({
                    "format_version": FORMAT_VERSION, "genssl_version": __version__, "method": cfg.method_name,
                    "config": cfg.to_dict(), "method_state": method.checkpoint_state(),
                    "batcher": batcher.state_dict(), "rng": rng_state(), "rng_ranks": rng_ranks, "step": at_step,
                    "best_val": best_val, "best_step": best_step,
                    "wall_time_s": elapsed_before + time.perf_counter() - start_time,
                }, self.run_dir / "last.pt")
            self.last_good_step = at_step

        def evaluate(at_step: int) -> float:
            nonlocal best_val, best_step
            self._check_weights_finite(method, at_step)
            if self.ddp:  # every rank evaluates rank 0's running statistics, so all take the same decisions
                self.ddp.sync_buffers()
            method.fit_readout(x_lab, y_lab, seed=t.seed)
            val_acc = accuracy(method, x_val, y_val, t.eval_batch_size, t.precision)
            monitor.scalars({"val/acc": val_acc}, at_step)
            if val_acc > best_val:
                best_val, best_step = val_acc, at_step
                if self.is_main:
                    atomic_torch_save({"format_version": FORMAT_VERSION, "method": cfg.method_name,
                                       "config": cfg.to_dict(), "model": method.state_dict(), "step": at_step,
                                       "val_acc": val_acc}, self.run_dir / "best.pt")
            if self.is_main:
                with torch.no_grad():
                    method.eval()
                    for tag, imgs in method.eval_images(to_float(x_val[:64])).items():
                        imgs, nrow = imgs if isinstance(imgs, tuple) else (imgs, None)
                        monitor.images(tag, imgs, at_step, nrow)
                    method.train()
            return val_acc

        bar = progress(t.steps, step, f"{cfg.method_name}", t.progress and self.is_main)
        sums: dict[str, torch.Tensor] = {}
        count = 0
        method.train()
        while step < t.steps:
            batch = batcher.next()
            with autocast(device, t.precision):
                logs = method.train_step(batch, step)
            for k, v in logs.items():
                sums[k] = sums[k] + v.detach().float() if k in sums else v.detach().float()
            count += 1
            step += 1
            if step % t.log_every == 0 or step == t.steps:
                means = self._flush_logs(sums, count, step, method)
                monitor.scalars(means, step)
                bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in means.items()}, refresh=False)
                sums, count = {}, 0
            if step % t.eval_every == 0 or step == t.steps:
                if sums:  # never save weights from steps whose losses were not yet checked
                    monitor.scalars(self._flush_logs(sums, count, step, method), step)
                    sums, count = {}, 0
                val_acc = evaluate(step)
                bar.set_postfix_str(f"val_acc={val_acc:.4f} best={best_val:.4f}", refresh=False)
            if step % t.ckpt_every == 0 or step == t.steps:
                if sums:
                    monitor.scalars(self._flush_logs(sums, count, step, method), step)
                    sums, count = {}, 0
                save_last(step)
            bar.update(1)
        bar.close()
        wall_time = elapsed_before + time.perf_counter() - start_time

        # Final report: the weights chosen on validation, evaluated once on the test set.
        if self.ddp:
            self.ddp.barrier()  # rank 0 has finished writing best.pt
        best = safe_torch_load(self.run_dir / "best.pt", map_location=device)
        method.load_state_dict(best["model"])
        method.fit_readout(x_lab, y_lab, seed=t.seed)
        test_acc = accuracy(method, test.images.to(device), test.labels.to(device), t.eval_batch_size, t.precision)
        results = {
            "method": cfg.method_name, "dataset": cfg.data.dataset, "n_labels": cfg.data.n_labels,
            "seed": t.seed, "test_acc": test_acc, "best_val_acc": best_val, "best_step": best_step,
            "steps": t.steps, "wall_time_s": wall_time, "device": device_name(device), "precision": t.precision,
            "torch": torch.__version__, "genssl": __version__, "config_digest": cfg.digest(),
            "resume_overrides": {k: list(v) for k, v in self.resume_overrides.items()},
        }
        if self.is_main:
            self._log_final(monitor, method, x_val, y_val, results)
            atomic_write_json(results, self.run_dir / "results.json")
        monitor.close()
        self.method = method
        return results

    # ------------------------------------------------------------------ helpers
    def _adopt_newer_best(self, step: int, best_val: float, best_step: int) -> tuple[float, int]:
        """A run killed after an evaluation but before its next checkpoint leaves a best.pt newer than last.pt.
        Keep it as the incumbent, so best.pt and the recorded best accuracy always describe the same weights
        (a deterministic replay reaches the same choice; a non-deterministic one, e.g. on GPU, stays consistent)."""
        path = self.run_dir / "best.pt"
        if not path.is_file():
            return best_val, best_step
        best = safe_torch_load(path)
        if best.get("method") == self.cfg.method_name and best.get("step", -1) > step:
            return float(best["val_acc"]), int(best["step"])
        return best_val, best_step

    def _flush_logs(self, sums, count, step, method) -> dict[str, float]:
        if getattr(self, "ddp", None):
            sums = self.ddp.mean_logs(sums)  # global-batch means; every rank then takes the same decisions
        means = {k: float(v) / count for k, v in sums.items()}  # one host sync per log interval
        bad = {k: v for k, v in means.items() if not math.isfinite(v)}
        if bad:
            self._diverged(step, method, ", ".join(f"{k} = {v}" for k, v in bad.items()))
        problem = method.check_health(means, step)
        if problem:
            self._diverged(step, method, problem)
        return means

    def _check_weights_finite(self, method: Method, step: int) -> None:
        for name, p in method.named_parameters():
            if not torch.isfinite(p).all():
                self._diverged(step, method, f"parameter {name} is not finite")

    def _diverged(self, step: int, method: Method, what: str) -> None:
        last = self.run_dir / "last.pt"
        kept = (f"the last good checkpoint {last} (step {self.last_good_step}) is intact"
                if self.last_good_step is not None and last.is_file() else "no checkpoint had been written yet")
        raise DivergenceError(f"method {self.cfg.method_name!r} diverged by step {step}: {what}. Stopped; {kept}. "
                              f"Try a lower learning rate, precision=fp32, or a different seed.")

    def _log_final(self, monitor: Monitor, method: Method, x_val, y_val, results: dict) -> None:
        with torch.no_grad():
            method.eval()
            try:
                n = min(500, x_val.shape[0])
                feats = method.encode(to_float(x_val[:n]))
                monitor.embedding(feats, y_val[:n], to_float(x_val[:n]), results["steps"])
            except NotImplementedError:
                pass
        hp = {k: v for k, v in flatten(self.cfg.to_dict()).items() if isinstance(v, (int, float, str, bool))}
        monitor.hparams(hp, {"hparam/test_acc": results["test_acc"], "hparam/best_val_acc": results["best_val_acc"]})
