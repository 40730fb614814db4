"""Several seeds of one run trained together in one process, with stacked parameters (torch.func).

Each seed is its own run: its own split (data.split_seed or its seed), data order, initialization and
noise, its own folder with config.yaml, split.pt, tb/, best.pt and results.json, exactly as `genssl train`
with that train.seed writes them (`genssl eval` works on each). What is shared is the arithmetic: the N
copies of every parameter are stacked into one (N, ...) tensor, every loss is computed for all seeds at
once with `torch.vmap` over `torch.func.functional_call`, so each small matrix product becomes one batched
product of N, and one backward of the *sum* of the per-seed losses gives every seed exactly its own
gradient (seed i's loss does not depend on seed j's parameters). An elementwise optimizer (Adam, AdamW,
SGD) then makes exactly the per-seed updates. Noise is drawn per seed (vmap randomness="different") from one
generator, so seeds see independent noise but not the same numbers a separate run would: results are
identical in distribution, not bit for bit.

A method supports this when it splits its step into per-optimizer losses::

    def stage_loss(self, name, batch, step, carry) -> (loss, logs, carry)   # name: each optimizer, in order
    def after_update(self, name) -> None                                      # optional (e.g. an EMA update)

and its train_step is `for name in self.optimizers: loss, logs, carry = self.stage_loss(...); self.update(...)`.
Not supported (the caller falls back to separate runs): gradient clipping by a global norm (it would couple
seeds), readouts fitted apart from the model (`fit_readout`), and resuming (each seed's last.pt is not
written; a stopped group is restarted).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from genssl._version import __version__
from genssl.data.batching import SSLBatch, SSLBatcher, to_float
from genssl.fileio import atomic_torch_save, atomic_write_json, atomic_write_text
from genssl.training.rng import seed_everything
from genssl.config import RunConfig, dump_yaml
from genssl.data.datasets import load_dataset
from genssl.data.spec import DataSpec
from genssl.methods.base import Method
from genssl.training.monitor import Monitor, progress
from genssl.methods import create_method
from genssl.registry import get_method_class
from genssl.data.split import make_split
from genssl.training.device import autocast, device_name, resolve_device
from genssl.training.metrics import accuracy
from genssl.training.trainer import DivergenceError
from genssl.training.trainer import default_run_dir
from genssl.training.trainer import Trainer


def supports_multiseed(method_name: str) -> bool:
    cls = get_method_class(method_name)
    return callable(getattr(cls, "stage_loss", None)) and cls.fit_readout is Method.fit_readout


class _Call(nn.Module):
    """functional_call enters through forward(); this forwards to any method of the wrapped Method."""

    def __init__(self, method: Method):
        super().__init__()
        self.m = method

    def forward(self, fn: str, *args):
        return getattr(self.m, fn)(*args)


def _set_tensor(root: nn.Module, name: str, value: torch.Tensor, is_param: bool) -> None:
    *path, leaf = name.split(".")
    mod = root.get_submodule(".".join(path)) if path else root
    if is_param:
        setattr(mod, leaf, nn.Parameter(value, requires_grad=getattr(mod, leaf).requires_grad))
    else:
        mod._buffers[leaf] = value


def stack_methods(methods: list[Method]) -> Method:
    """Turn methods[0] into the stacked template: every parameter and buffer becomes (N, ...) of all seeds'."""
    template = methods[0]
    per = [dict(m.named_parameters()) for m in methods]
    for name in per[0]:
        _set_tensor(template, name, torch.stack([p[name].detach() for p in per]).clone(), True)
    perb = [dict(m.named_buffers()) for m in methods]
    for name in perb[0]:
        _set_tensor(template, name, torch.stack([b[name] for b in perb]).clone(), False)
    return template


@torch.no_grad()
def unstack_into(template: Method, i: int, method: Method) -> None:
    """Copy seed i's slice of the stacked state into a per-seed method (for evaluation and saving)."""
    state = dict(template.named_parameters()) | dict(template.named_buffers())
    for name, t in method.state_dict().items():
        if name in state:
            t.copy_(state[name][i])
    for path, mod in template.named_modules():  # non-tensor state (e.g. an EMA's update count) is shared
        if type(mod).get_extra_state is not nn.Module.get_extra_state:
            method.get_submodule(path).set_extra_state(mod.get_extra_state())


class StackedStep:
    """One training step of all seeds: per optimizer (in order), the vmapped per-seed losses, one backward of
    their sum, the optimizer's step. `template` comes from stack_methods and has had setup() called."""

    def __init__(self, template: Method):
        self.template = template
        caller = _Call(template)

        def per_seed(state, batch, step, carry, name):
            return functional_call(caller, state, ("stage_loss", name, batch, step, carry))

        self.stage = torch.vmap(per_seed, in_dims=(0, 0, None, 0, None), randomness="different")

    def __call__(self, batch: SSLBatch, step: int) -> dict[str, torch.Tensor]:
        """batch: SSLBatch of (N, B, ...) tensors. Returns logs of (N, ...) tensors."""
        template, carry, logs = self.template, {}, {}
        done: list[torch.Tensor] = []
        for name, opt in template.optimizers.items():
            # Parameters already updated this step get no gradient in later stages (e.g. the discriminator
            # in a GAN's generator step), as the single-seed step's `frozen` does.
            for p in done:
                p.requires_grad_(False)
            state = {"m." + k: v for k, v in template.named_parameters()}
            state |= {"m." + k: v for k, v in template.named_buffers()}
            loss, stage_logs, carry = self.stage(state, batch, step, carry, name)  # loss: (N,)
            template.update(loss.sum(), name)
            if hasattr(template, "after_update"):
                template.after_update(name)
            logs |= stage_logs
            done += [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
        for p in done:
            p.requires_grad_(True)
        return logs


def stack_batches(parts: list[SSLBatch]) -> SSLBatch:
    return SSLBatch(*(torch.stack(x) for x in zip(*parts)))  # (N, B, ...)


class MultiSeedTrainer:
    def __init__(self, cfg: RunConfig, seeds: list[int], run_dirs: list[str | Path], data=None):
        if len(seeds) != len(run_dirs) or len(set(seeds)) != len(seeds):
            raise ValueError(f"need one run folder per distinct seed, got seeds {seeds}")
        if not supports_multiseed(cfg.method_name):
            raise ValueError(f"method {cfg.method_name!r} does not support training seeds together (it needs "
                             f"stage_loss and no fit_readout); train the seeds one after another")
        self.cfg, self.seeds, self.run_dirs, self._data = cfg, list(seeds), [Path(d) for d in run_dirs], data

    def fit(self) -> list[dict]:
        cfg, t, n = self.cfg, self.cfg.train, len(self.seeds)
        start_time = time.perf_counter()
        device = resolve_device(t.device)
        if t.threads:
            torch.set_num_threads(t.threads)
        for d in self.run_dirs:
            if d.exists() and any(d.iterdir()):
                raise FileExistsError(f"run folder {d} already holds a run; choose another name (nothing was "
                                      f"overwritten; multi-seed groups do not resume)")
        train, test = self._data if self._data is not None else load_dataset(cfg.data.dataset, cfg.data.root,
                                                                               cfg.data.download)
        images, labels = train.images.to(device), train.labels.to(device)
        seeds_cfg, methods, batchers, vals, labs, monitors = [], [], [], [], [], []
        for seed, run_dir in zip(self.seeds, self.run_dirs):
            scfg = replace(cfg, train=replace(t, seed=seed))
            seeds_cfg.append(scfg)
            run_dir.mkdir(parents=True, exist_ok=True)
            d = cfg.data
            split = make_split(train.labels, train.num_classes, d.n_labels, d.n_val,
                               d.split_seed if d.split_seed is not None else seed, d.labeled_in_unlabeled)
            split.save(run_dir / "split.pt")
            atomic_write_text(dump_yaml(scfg), run_dir / "config.yaml")
            seed_everything(seed)
            spec = DataSpec(train.image_shape, train.num_classes, len(split.labeled), len(split.unlabeled))
            m = create_method(cfg.method_name, cfg.method, spec).to(device)
            m.setup(t.steps, t.precision)
            if m.grad_clip:
                raise ValueError(f"{cfg.method_name}: gradient clipping by global norm couples the seeds; train "
                                 f"them one after another")
            b = SSLBatcher(images, labels, split.labeled, split.unlabeled, t.labeled_batch_size, t.batch_size, seed)
            with autocast(device, t.precision):
                m.initialize(b.next())
            methods.append(m)
            batchers.append(b)
            vals.append((images[split.val.to(device)], labels[split.val.to(device)]))
            labs.append((to_float(images[split.labeled.to(device)]), labels[split.labeled.to(device)]))
            monitors.append(Monitor(run_dir / "tb"))
        # Per-seed copies for evaluation and saving; methods[0] becomes the stacked template.
        evals = [create_method(cfg.method_name, cfg.method, methods[0].spec).to(device) for _ in range(n)]
        template = stack_methods(methods)
        template.setup(t.steps, t.precision)  # optimizers over the stacked parameters
        train_step = StackedStep(template)
        best = [(-1.0, -1)] * n
        sums, count, step = {}, 0, 0
        bar = progress(t.steps, 0, f"{cfg.method_name} x{n} seeds", t.progress)
        template.train()
        while step < t.steps:
            batch = stack_batches([b.next() for b in batchers])
            with autocast(device, t.precision):
                logs = train_step(batch, step)
            for k, v in logs.items():
                v = v.detach().float().reshape(n, -1).mean(1)
                sums[k] = sums[k] + v if k in sums else v
            count += 1
            step += 1
            if step % t.log_every == 0 or step == t.steps or step % t.eval_every == 0:
                means = {k: (v / count).tolist() for k, v in sums.items()}
                for i in range(n):
                    bad = {k: v[i] for k, v in means.items() if not torch.isfinite(torch.tensor(v[i]))}
                    if bad:
                        raise DivergenceError(f"seed {self.seeds[i]} diverged by step {step}: {bad}")
                    monitors[i].scalars({k: v[i] for k, v in means.items()}, step)
                sums, count = {}, 0
            if step % t.eval_every == 0 or step == t.steps:
                accs = []
                for i in range(n):
                    unstack_into(template, i, evals[i])
                    acc = accuracy(evals[i], *vals[i], t.eval_batch_size, t.precision)
                    monitors[i].scalars({"val/acc": acc}, step)
                    if acc > best[i][0]:
                        best[i] = (acc, step)
                        atomic_torch_save({"format_version": 1, "method": cfg.method_name,
                                           "config": seeds_cfg[i].to_dict(), "model": evals[i].state_dict(),
                                           "step": step, "val_acc": acc}, self.run_dirs[i] / "best.pt")
                    accs.append(acc)
                bar.set_postfix_str("val_acc=" + ",".join(f"{a:.3f}" for a in accs), refresh=False)
            bar.update(1)
        bar.close()
        wall = time.perf_counter() - start_time
        results = []
        x_test, y_test = test.images.to(device), test.labels.to(device)
        for i, (seed, run_dir) in enumerate(zip(self.seeds, self.run_dirs)):
            evals[i].load_state_dict(torch.load(run_dir / "best.pt", map_location=device, weights_only=True)["model"])
            res = {"method": cfg.method_name, "dataset": cfg.data.dataset, "n_labels": cfg.data.n_labels,
                   "seed": seed, "test_acc": accuracy(evals[i], x_test, y_test, t.eval_batch_size, t.precision),
                   "best_val_acc": best[i][0], "best_step": best[i][1], "steps": t.steps,
                   "wall_time_s": wall / n, "group_wall_time_s": wall, "seeds_trained_together": n,
                   "device": device_name(device), "precision": t.precision, "torch": torch.__version__,
                   "genssl": __version__, "config_digest": seeds_cfg[i].digest(), "resume_overrides": {}}
            atomic_write_json(res, run_dir / "results.json")
            monitors[i].close()
            results.append(res)
        return results


# ---------------------------------------------------------------- `genssl train CONFIG --seeds 0,1,2`
def parse_seeds(text: str) -> list[int]:
    """'0,1,2' or '0-4' (inclusive) -> [0, 1, 2, ...]."""
    try:
        if "-" in text.strip("-") and "," not in text:
            lo, hi = (int(v) for v in text.split("-"))
            seeds = list(range(lo, hi + 1))
        else:
            seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--seeds: expected a list like 0,1,2 or a range like 0-4, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: expected distinct seeds, got {text!r}")
    return seeds


def seed_run_dirs(cfg: RunConfig, seeds: list[int], run_dir: str | None) -> list[Path]:
    """<run_dir>/s<seed> when a folder is given, else each seed's default folder (its name + -s<seed>)."""
    if run_dir is not None:
        return [Path(run_dir) / f"s{s}" for s in seeds]
    return [default_run_dir(replace(cfg, name=f"{cfg.name}-s{s}" if cfg.name else None,
                                    train=replace(cfg.train, seed=s))) for s in seeds]


def train_seeds(cfg: RunConfig, seeds: list[int], run_dir: str | None = None, resume: bool = False,
                together: bool | None = None, data=None) -> list[dict]:
    """Train `seeds` of `cfg`: together in one process when the method supports it (and this is not a resume),
    else one after another. Each seed gets its own folder and results.json either way."""
    dirs = seed_run_dirs(cfg, seeds, run_dir)
    if together is None:
        together = len(seeds) > 1 and not resume and supports_multiseed(cfg.method_name)
    if together:
        return MultiSeedTrainer(cfg, seeds, dirs, data=data).fit()
    return [Trainer(replace(cfg, train=replace(cfg.train, seed=s)), run_dir=d,
                    resume=resume and (d / "last.pt").is_file(), data=data).fit() for s, d in zip(seeds, dirs)]
