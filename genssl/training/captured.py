"""A training step captured once in a CUDA graph and replayed: the `CapturedStep` strategy of the Trainer
(`train.cuda_graph`).

At genssl's model sizes a GPU step is launch-bound (benchmarks/README.md: an H200 used ~0.1% of its arithmetic):
the time goes to Python and kernel launches. A CUDA graph records the step's kernels once and replays them with
one launch (torch.cuda.graph, the "whole network capture" recipe of torch's CUDA graphs notes). A replay runs no
Python, so everything the step reads must sit at fixed addresses and everything that changes must be device data:

- inputs: each step's batch, drawn on the device by the Trainer's batcher, is copied into fixed buffers;
- values: the numbers that change from step to step (`Method.schedule`: learning rates, a KL weight) are written
  into 0-d device tensors before each step (one host-to-device copy); the method reads them through
  `Method.step_values`, its optimizers take them as their learning rate (on CUDA: Adam/AdamW with capturable=True,
  SGD fused, the implementations that read a tensor learning rate on the device);
- outputs: the logged scalars are stacked into one buffer that each replay overwrites; the Trainer gets a copy,
  so the NaN and collapse guards read every step's own losses;
- initialization: data-dependent init (weight norm) ran before (the Trainer's `method.initialize`), and a few
  warm-up steps run the same step eagerly on a side stream first, so optimizer state and workspaces exist;
- random numbers: torch's CUDA generator registers with the graph, and each replay advances its offset as the
  eager step does, so the checkpoint's RNG state (genssl.training.rng) resumes exactly; a resumed run warms up
  and captures again. Checkpoints are written as an eager run writes them (float learning rates, the optimizers'
  own flags), so any strategy on any device can resume them.

Everything but the capture itself runs on any device: on a CPU (or with capture=False) the strategy runs the
same step function on the same buffers, eagerly (the static-buffer mode). It passes the step at which it would
have captured, not the current one, as a replay would, so a method that read `step` instead of `step_values`
would show it. tests/test_captured.py checks that this mode gives the eager step's losses exactly for every
method that declares `capturable`.
"""

from __future__ import annotations

import torch

from genssl.config import CUDA_GRAPH_CHOICES
from genssl.data.batching import SSLBatch
from genssl.methods.base import Method

__all__ = ["CUDA_GRAPH_CHOICES", "CapturedStep", "capture_decision"]
WARMUP_STEPS = 3
"""Eager steps (on a side stream) before the capture: optimizer state, cuBLAS workspaces and the like exist by then."""


def capture_decision(requested: str, device: torch.device, method_class: type[Method], method_cfg, precision: str,
                     compile: bool = False, world_size: int = 1, n_seeds: int = 1) -> tuple[bool, str]:
    """(capture the step?, why): `train.cuda_graph` resolved for this run. `on` on a device that is not CUDA is an
    error; a run that cannot be captured (the method's `capture_refusal`, or the run's precision, compile, ranks
    or stacked seeds) trains eagerly and says why; `auto` captures on CUDA wherever it can."""
    if requested not in CUDA_GRAPH_CHOICES:
        raise ValueError(f"train.cuda_graph={requested!r} is not one of {', '.join(CUDA_GRAPH_CHOICES)}")
    if requested == "off":
        return False, "off"
    device = torch.device(device)
    if device.type != "cuda":
        if requested == "on":
            raise ValueError(f"train.cuda_graph=on needs a CUDA device (CUDA graphs are a CUDA feature), but the run's "
                             f"device is {device}; use cuda_graph: auto (captured on CUDA, eager elsewhere) or off")
        return False, f"auto: eager on {device.type} (CUDA graphs need a CUDA device)"
    refusal = method_class.capture_refusal(method_cfg)
    if refusal is None and precision != "fp32":
        refusal = (f"precision {precision}: captured steps run in fp32 only (fp16's loss scaler checks for inf on "
                   f"the host; bf16 was measured no faster on a GPU)")
    if refusal is None and compile:
        refusal = "train.compile is on: compile or capture, not both (compile's mode='reduce-overhead' captures too)"
    if refusal is None and world_size > 1:
        refusal = "data-parallel ranks average gradients through a host-side hook"
    if refusal is None and n_seeds > 1:
        refusal = "stacked seeds: the vmapped step is not captured (genssl.training.stacked)"
    if refusal:
        return False, f"{requested}: eager, not captured: {refusal}"
    return True, f"{requested}: captured"


class CapturedStep:
    """One lane's step on static buffers: captured in a CUDA graph and replayed (capture=True, CUDA only), or run
    eagerly on the same buffers (capture=False: the static-buffer mode, any device). `capture=None` captures on
    CUDA. See the module docstring for what each buffer holds."""

    stacked = False

    def __init__(self, methods: list[Method], capture: bool | None = None, warmup: int = WARMUP_STEPS):
        (self.method,) = methods
        self.device = next(self.method.parameters()).device
        self.capture = self.device.type == "cuda" if capture is None else capture
        if self.capture and self.device.type != "cuda":
            raise ValueError(f"a CUDA graph needs the method on a CUDA device, not {self.device}")
        self.warmup = warmup
        self.inputs: SSLBatch | None = None
        self.values: dict[str, torch.Tensor] | None = None  # 0-d views of _packed, read through step_values
        self._packed: torch.Tensor | None = None
        self.outputs: torch.Tensor | None = None  # (n_logs,) float32, one per name in `names`
        self.names: list[str] = []
        self.graph = None
        self.frozen_step: int | None = None  # the step the step function sees: the first one, as a replay would
        self.steps_run = 0
        self._eager_flags: dict[str, list[dict]] = {}  # per optimizer: each group's flags before the capture set-up
        self._stream = None

    # ------------------------------------------------------------------ the step
    def __call__(self, batches: list[SSLBatch], step: int) -> list[dict[str, torch.Tensor]]:
        (batch,) = batches
        self._load_inputs(batch)
        self._load_values(step)
        if self.frozen_step is None:
            self.frozen_step = step
        self.method.static_values = self.values
        try:
            if not self.capture:
                out = self._step()
            elif self.graph is None and self.steps_run < self.warmup:
                out = self._warmup_step()
            else:
                if self.graph is None:
                    self._capture()
                self.graph.replay()
                out = self.outputs
        finally:
            self.method.static_values = None
        self.steps_run += 1
        out = out.clone()  # the next step overwrites the static outputs; the Trainer keeps sums of these
        return [dict(zip(self.names, out.unbind()))]

    def _step(self) -> torch.Tensor:
        """The step function: the method's step on the static inputs, its logs stacked into the static outputs."""
        logs = self.method.train_step(self.inputs, self.frozen_step)
        names = list(logs)
        if self.names and names != self.names:
            raise RuntimeError(f"{self.method.name}: the step logged {names}, then {self.names}; a captured step needs "
                               f"the same logs every step")
        self.names = names
        host = [k for k, v in logs.items() if v.device != self.device]
        if host:
            raise ValueError(f"{self.method.name}: log(s) {', '.join(host)} are not on {self.device}: a replay would "
                             f"repeat their capture-time value; compute them on the device or read them from "
                             f"Method.step_values")
        self.outputs = torch.stack([v.detach().float().reshape(()) for v in logs.values()])
        return self.outputs

    def _warmup_step(self) -> torch.Tensor:
        """The step run eagerly on a side stream (torch's recipe: the first uses of kernels and the optimizer's lazy
        state stay out of the capture). The side stream waits for the main one each time, so memory it frees is
        reused only after the main stream's work on it."""
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            out = self._step().clone()
        torch.cuda.current_stream(self.device).wait_stream(self._stream)
        return out

    def _capture(self) -> None:
        torch.cuda.synchronize(self.device)
        for opt in self.method.optimizers.values():  # gradients are allocated in the graph's pool, at fixed addresses
            opt.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self._step()

    # ------------------------------------------------------------------ static buffers
    def _load_inputs(self, batch: SSLBatch) -> None:
        if self.inputs is None:
            self.inputs = SSLBatch(*(None if t is None else torch.empty_like(t) for t in batch))
        for name, dst, src in zip(SSLBatch._fields, self.inputs, batch):
            if (dst is None) != (src is None) or (dst is not None and dst.shape != src.shape):
                raise ValueError(f"batch field {name} changed shape or presence between steps "
                                 f"({None if dst is None else tuple(dst.shape)} -> "
                                 f"{None if src is None else tuple(src.shape)}); a captured step needs static shapes")
            if dst is not None:
                dst.copy_(src)

    def _load_values(self, step: int) -> None:
        values = self.method.schedule(step)
        if self.values is None:
            # float64 on the CPU keeps the Python floats exact (the static mode then matches the eager step bit for
            # bit); float32 on CUDA, the dtype the fused optimizers read a tensor learning rate in.
            dtype = torch.float32 if self.device.type == "cuda" else torch.float64
            self._packed = torch.zeros(len(values), dtype=dtype, device=self.device)
            self.values = {k: self._packed[i] for i, k in enumerate(values)}
            if self.capture:
                self._capturable_optimizers()
        if list(values) != list(self.values):
            raise RuntimeError(f"{self.method.name}: schedule() gave {list(values)}, earlier {list(self.values)}; it "
                               f"must name the same values at every step")
        if values:
            src = torch.tensor(list(values.values()), dtype=self._packed.dtype)
            if self.device.type == "cuda":  # pinned: an asynchronous copy, ordered before the step on the stream
                self._packed.copy_(src.pin_memory(), non_blocking=True)
            else:
                self._packed.copy_(src)

    # ------------------------------------------------------------------ optimizers
    def _capturable_optimizers(self) -> None:
        """Switch each optimizer to an implementation that reads a tensor learning rate on the device and keeps its
        step count there (Adam/AdamW: capturable; SGD: fused), remembering the flags for the checkpoints."""
        for name, opt in self.method.optimizers.items():
            self._eager_flags[name] = [{k: g[k] for k in ("capturable", "fused", "foreach") if k in g}
                                       for g in opt.param_groups]
            if isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)):
                for g in opt.param_groups:
                    g["capturable"] = True
                for p, st in opt.state.items():
                    if "step" in st:  # capturable keeps the step count beside the parameter
                        st["step"] = st["step"].to(device=p.device, dtype=torch.float32)
            elif isinstance(opt, torch.optim.SGD):
                for g in opt.param_groups:
                    g["fused"], g["foreach"] = True, False
            else:
                raise ValueError(f"{self.method.name}: optimizer {name!r} ({type(opt).__name__}) has no capturable "
                                 f"step known to genssl.training.captured (Adam, AdamW, SGD); use cuda_graph: off")

    def _eager_optimizer_state(self, name: str, state: dict) -> dict:
        """An optimizer state_dict as the eager optimizer writes it: float learning rates, its own flags, and the
        step count where that implementation keeps it (on the CPU unless capturable or fused)."""
        flags = self._eager_flags.get(name)
        groups = []
        for i, g in enumerate(state["param_groups"]):
            g = dict(g)
            if isinstance(g.get("lr"), torch.Tensor):
                g["lr"] = float(g["lr"])
            if flags is not None:
                g.update(flags[i])
            groups.append(g)
        moved = {}
        for idx, st in state["state"].items():
            group = next((g for g in groups if idx in g["params"]), None)
            if flags is not None and group is not None and "step" in st and not (
                    group.get("capturable") or group.get("fused")):
                st = {**st, "step": st["step"].cpu()}
            moved[idx] = st
        return {"state": moved, "param_groups": groups}

    # ------------------------------------------------------------------ the strategy interface
    def lane_method(self, i: int) -> Method:
        return self.method

    def checkpoint_states(self) -> list[dict]:
        state = self.method.checkpoint_state()
        state["optimizers"] = {k: self._eager_optimizer_state(k, s) for k, s in state["optimizers"].items()}
        return [state]

    def train(self) -> None:
        self.method.train()
