"""Several seeds of one run trained stacked, as one step: the `StackedStep` strategy of the Trainer.

The N copies of every parameter are stacked into one (N, ...) tensor, every loss is computed for all seeds
at once with `torch.vmap` over `torch.func.functional_call`, so each small matrix product becomes one batched
product of N, and one backward of the *sum* of the per-seed losses gives every seed exactly its own
gradient (seed i's loss does not depend on seed j's parameters). An elementwise optimizer (Adam, AdamW,
SGD) then makes exactly the per-seed updates. Noise is drawn per seed (vmap randomness="different") from one
generator, so seeds see independent noise but not the same numbers a separate run would: results are
identical in distribution, not bit for bit.

Everything else is the Trainer's, per seed: its own folder, split, data order, initialization, guards,
checkpoints (each last.pt holds that seed's own slice of the weights and optimizer state, so a seed can
also be resumed alone) and results.json. A method declares `supports_stacking = True` when its step is
written as stages (`Method.stage_loss`, see genssl/methods/base.py); global-norm gradient clipping would
couple the seeds and is refused.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call

from genssl.data.batching import SSLBatch
from genssl.methods.base import Method


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


def stack_methods(methods: list[Method], sources: list[Method] | None = None) -> Method:
    """Turn methods[0] into the stacked template: every parameter and buffer becomes (N, ...) of the seeds'
    (taken from `sources`, default `methods`)."""
    template = methods[0]
    methods = sources if sources is not None else methods
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


def _stack_optimizer_state(states: list[dict]) -> dict:
    """Per-seed optimizer state_dicts -> one for the stacked parameters (per-parameter tensors stacked on a
    new dim 0; scalars such as Adam's step count are equal across seeds and kept once)."""
    out = {"param_groups": states[0]["param_groups"], "state": {}}
    for idx, first in states[0]["state"].items():
        out["state"][idx] = {k: torch.stack([s["state"][idx][k] for s in states])
                             if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in first.items()}
    return out


def _slice_optimizer_state(state: dict, i: int) -> dict:
    return {"param_groups": state["param_groups"],
            "state": {idx: {k: v[i].clone() if isinstance(v, torch.Tensor) and v.dim() > 0 else v
                            for k, v in s.items()} for idx, s in state["state"].items()}}


class StackedStep:
    """The stacked-seeds step strategy of the Trainer: per optimizer (in order), the vmapped per-seed losses,
    one backward of their sum, the optimizer's step. `methods` are the lanes' set-up (initialized or resumed)
    per-seed methods; they stay the per-seed views used for evaluation, checkpoints and health checks, while a
    stacked copy (the template) trains. A loss scaler (fp16) is shared by the seeds: it scales their sum."""

    stacked = True

    def __init__(self, methods: list[Method], total_steps: int, precision: str):
        cls = type(methods[0])
        refusal = cls.stacking_refusal(methods[0].cfg)
        if refusal:
            raise ValueError(f"{refusal}; train the seeds one after another")
        if methods[0].grad_clip:
            raise ValueError(f"{cls.name}: gradient clipping by global norm couples the seeds; train them one "
                             f"after another")
        self.methods, self.n = methods, len(methods)
        self.template = template = stack_methods([copy.deepcopy(methods[0])] + methods[1:], methods)
        # optimizers over the stacked parameters; their (N, ...) kernels stay in stacking order (vmap batches the
        # convolutions itself), whatever layout the per-seed methods use
        template.setup(total_steps, precision, channels_last=False)
        for name, opt in template.optimizers.items():
            per_seed = [m.optimizers[name].state_dict() for m in methods]
            if per_seed[0]["state"]:  # resumed lanes carry optimizer state
                opt.load_state_dict(_stack_optimizer_state(per_seed))
        for name, scaler in template.scalers.items():
            scaler.load_state_dict(methods[0].scalers[name].state_dict())
        caller = _Call(template)

        def per_seed(state, batch, step, carry, name):
            return functional_call(caller, state, ("stage_loss", name, batch, step, carry))

        self._per_seed = per_seed

    def __call__(self, batches: list[SSLBatch], step: int) -> list[dict[str, torch.Tensor]]:
        template, carry, logs = self.template, {}, {}
        batch = stack_batches(batches)
        batch_dims = SSLBatch(*(None if f is None else 0 for f in batch))  # optional fields may be absent
        stage = torch.vmap(self._per_seed, in_dims=(0, batch_dims, None, 0, None), randomness="different")
        done: list[torch.Tensor] = []
        for name, opt in template.optimizers.items():
            # Parameters already updated this step get no gradient in later stages (e.g. the discriminator
            # in a GAN's generator step), as the single-seed step's staged train_step does.
            for p in done:
                p.requires_grad_(False)
            state = {"m." + k: v for k, v in template.named_parameters()}
            state |= {"m." + k: v for k, v in template.named_buffers()}
            loss, stage_logs, carry = stage(state, batch, step, carry, name)  # loss: (N,)
            template.update(loss.sum(), name)
            template.after_update(name)
            logs |= stage_logs
            done += [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
        for p in done:
            p.requires_grad_(True)
        return [{k: v.reshape(self.n, -1)[i].mean() for k, v in logs.items()} for i in range(self.n)]

    def lane_method(self, i: int) -> Method:
        """Seed i's method with the current stacked weights copied in."""
        unstack_into(self.template, i, self.methods[i])
        return self.methods[i]

    def checkpoint_states(self) -> list[dict]:
        states = []
        for i in range(self.n):
            state = self.lane_method(i).checkpoint_state()
            state["optimizers"] = {k: _slice_optimizer_state(o.state_dict(), i)
                                   for k, o in self.template.optimizers.items()}
            state["scalers"] = {k: s.state_dict() for k, s in self.template.scalers.items()}
            states.append(state)
        return states

    def train(self) -> None:
        self.template.train()


def stack_batches(parts: list[SSLBatch]) -> SSLBatch:
    return SSLBatch(*(None if x[0] is None else torch.stack(x) for x in zip(*parts)))  # (N, B, ...)
