"""The Method contract every semi-supervised method implements.

A Method is an nn.Module that owns its networks, losses and optimizer updates. The Trainer knows nothing
about what is inside: it calls `setup`, then `train_step(batch, step)` in a loop, and `predict` for
evaluation. Backward, loss scaling and gradient clipping all happen in `update`, so a GAN's two optimizers
need no special case anywhere else.

A method writes its step in one of two ways:
- `stage_loss` (most methods): the loss of each optimizer's stage. The default `train_step` runs the stages, and
  genssl.training.stacked runs the same stages under vmap, so the method can also train seeds stacked.
- `train_step` itself, when the step is not a fixed sequence of losses (e.g. a teacher that is refit between
  rounds, or a loss weight read from Python state): the step is then the method's own; it still calls `update`
  for each optimizer step.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from genssl.data.spec import DataSpec
from genssl.nn.layout import match_optimizer_layout, to_channels_last, use_channels_last


class Method(nn.Module):
    """Subclasses define a nested ``Config`` dataclass and implement `configure_optimizers`, `predict`, `encode`
    and the step: `stage_loss` (run by the default `train_step`), or `train_step` itself (module docstring).
    Optional: `initialize(batch)` (data-dependent init on a fresh run),
    `fit_readout(x_l, y_l)` (methods without their own classifier fit one before evaluation),
    `sample(n, y=None)` and `eval_images(x)` (pictures for TensorBoard), `check_health(means, step)`."""

    name: ClassVar[str]  # set by @register_method
    Config: ClassVar[type]

    # Declared capabilities: what a method can do beyond the contract. Code asks these, never hasattr; the
    # registry-parametrized tests check every claim (tests/test_capabilities.py).
    can_sample: ClassVar[bool] = False
    """sample(n) -> (n, C, H, W) images in [0, 1] (feeds genssl.downstream.samples)."""
    can_sample_conditional: ClassVar[bool] = False
    """sample(n, y) draws images of the given classes."""
    has_encoder: ClassVar[bool] = False
    """encoder_module() -> a registered-arch net that genssl export / load_encoder can rebuild."""
    uses_unlabeled: ClassVar[bool] = True
    """The loss has a term in the unlabeled batch x_u: two steps that differ only in x_u give different models
    (False for a labeled-only baseline). The learning tests hold such a method above the supervised baseline."""
    has_features: ClassVar[bool] = True
    """encode(x) -> (B, D) features (embeddings in TensorBoard)."""
    typicality_score: ClassVar[str | None] = None
    """The name of the score `typicality(x)` computes ("elbo", "log_d" of a generative model, or "ova", OpenMatch's
    one-vs-all inlier probability), or None: the method has no model of its own of how typical an image is
    (genssl.methods.typicality: the scores, and the classifier-confidence baseline that works for every method)."""
    supports_stacking: ClassVar[bool] = False
    """The step is written as `stage_loss` stages, so genssl.training.stacked can train seeds stacked."""
    capturable: ClassVar[bool] = False
    """The step can be captured in a CUDA graph (genssl.training.captured): it is a fixed sequence of kernels on the
    device, with no host synchronisation (no .item(), no data-dependent shapes), and it reads every number that
    changes from step to step (learning rates, loss weights) through `step_values`, never from `step` itself, so a
    replay that runs none of its Python still follows the schedule. tests/test_captured.py runs every claim in the
    static-buffer mode on the CPU."""
    auto_bf16: ClassVar[bool | frozenset[str]] = False
    """Where `train.precision: auto` may choose bf16 for this method on a CPU with native bf16, decided per
    (method, architecture): True for every architecture, False for none, or the set of architectures
    (`precision_arch(cfg)`, e.g. {"conv"}) whose bf16 step was measured at least 1.3x faster than fp32's on such
    a CPU (benchmarks/README.md) and whose bf16 accuracy was checked against fp32 (experiments/README.md). Each
    subclass that sets it says next to it what was measured. Read it through `auto_bf16_for(cfg)`."""

    @classmethod
    def precision_arch(cls, cfg) -> str | None:
        """The architecture of method config `cfg` that `auto_bf16` is keyed by, or None where the method's
        precision choice does not depend on one (the default)."""
        return None

    @classmethod
    def auto_bf16_for(cls, cfg=None) -> bool:
        """Whether `precision: auto` may choose bf16 for method config `cfg` (None: the method's default config)
        on a CPU with native bf16 (`auto_bf16`; genssl.training.device.resolve_precision asks)."""
        if isinstance(cls.auto_bf16, bool):
            return cls.auto_bf16
        return cls.precision_arch(cls.Config() if cfg is None else cfg) in cls.auto_bf16

    @classmethod
    def stacking_refusal(cls, cfg) -> str | None:
        """Why seeds of the method config `cfg` cannot train stacked (genssl.training.stacked), or None when they
        can. A subclass that sets supports_stacking refuses the options its stacked step cannot honour."""
        if not cls.supports_stacking:
            return f"{cls.name} does not support stacked seeds (supports_stacking is False)"
        return None

    @classmethod
    def capture_refusal(cls, cfg) -> str | None:
        """Why the step of method config `cfg` cannot be captured in a CUDA graph (genssl.training.captured), or None
        when it can. A subclass that sets capturable refuses the options whose step syncs with the host."""
        if not cls.capturable:
            return f"{cls.name} does not declare a capturable step (capturable is False)"
        return None

    def __init__(self, cfg, spec: DataSpec):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.scalers: dict[str, torch.amp.GradScaler] = {}
        self.total_steps = 1
        self.grad_clip: float | None = None
        self.grad_sync = None  # set by genssl.training.distributed under torchrun: averages gradients across ranks
        self.static_values: dict[str, torch.Tensor] | None = None  # set by genssl.training.captured (step_values)
        self.channels_last = False  # the conv kernels' layout, chosen in `setup` (genssl.nn.layout)

    # ------------------------------------------------------------------ set-up, called by the Trainer
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def setup(self, total_steps: int, precision: str = "fp32", channels_last: str | bool = "auto") -> None:
        """Lay the networks out (`lay_out(channels_last)`), then create optimizers (after the method is on its
        device) and per-optimizer loss scalers."""
        self.lay_out(channels_last)
        self.total_steps = total_steps
        self.optimizers = self.configure_optimizers()
        device_type = next(self.parameters()).device.type
        self.scalers = {k: torch.amp.GradScaler(device_type, enabled=precision == "fp16") for k in self.optimizers}

    def lay_out(self, channels_last: str | bool = "auto") -> None:
        """The conv kernels' memory layout (train.channels_last: auto | on | off, or a bool): auto rewrites the
        kernels of a method with any convolution in channels_last order, once (genssl.nn.layout), so its
        activations are NHWC from the first convolution on; off keeps NCHW. The choice is `self.channels_last`."""
        self.channels_last = use_channels_last(channels_last, self)
        if self.channels_last:
            to_channels_last(self)

    def initialize(self, batch) -> None:
        """Data-dependent initialization on a fresh run (not on resume)."""

    def fit_readout(self, x_l: torch.Tensor, y_l: torch.Tensor, seed: int = 0) -> None:
        """Called before each evaluation with all labeled images; methods whose classifier is trained apart
        from the model (e.g. a probe on M1's latents) fit it here. The Trainer passes the run's seed, which
        `genssl downstream --seed` also gives for the same split, so both report the same figure."""

    # ------------------------------------------------------------------ the step
    def schedule(self, step: int) -> dict[str, float]:
        """The numbers of step `step` that change during a run (learning rates, loss weights), as Python floats; the
        step reads them through `step_values`. A pure function of `step` and the config. Default: none."""
        return {}

    def step_values(self, step: int) -> dict[str, float | torch.Tensor]:
        """`schedule(step)`, or, while genssl.training.captured runs the step, the 0-d device tensors it fills with
        the schedule's values before each step (a CUDA graph replays kernels, not Python: a float read here at
        capture time would stay fixed). Use them only in tensor arithmetic, `set_lr` and `log_value`."""
        return self.schedule(step) if self.static_values is None else self.static_values

    @staticmethod
    def log_value(value: float | torch.Tensor) -> torch.Tensor:
        """A schedule value as a log scalar: the static tensor itself, or a float as a tensor."""
        return value if isinstance(value, torch.Tensor) else torch.tensor(value)

    def train_step(self, batch, step: int) -> dict[str, torch.Tensor]:
        """One optimization step. Returns detached scalar tensors named like ``train/sup_loss``; the Trainer
        reads them only every log_every steps, so a GPU step needs no host synchronisation.

        The default runs the method's stages: for each optimizer in order, `stage_loss`, `update`,
        `after_update`; parameters updated by an earlier stage get no gradient in later ones (a GAN's
        generator stage leaves the discriminator's weights alone). The stacked-seeds strategy runs the same
        stages under vmap, so a method written this way trains identically alone and stacked."""
        carry, logs, done = {}, {}, []
        try:
            for name, opt in self.optimizers.items():
                for p in done:
                    p.requires_grad_(False)
                loss, stage_logs, carry = self.stage_loss(name, batch, step, carry)
                self.update(loss, name)
                self.after_update(name)
                logs |= stage_logs
                done += [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
        finally:
            for p in done:
                p.requires_grad_(True)
        return logs

    def stage_loss(self, name: str, batch, step: int, carry: dict) -> tuple[torch.Tensor, dict, dict]:
        """The loss of optimizer `name`'s stage: (loss, logs, carry), where `carry` hands tensors (with their
        graphs) to the next stage, e.g. a GAN's generated batch. Written as a pure function of the parameters,
        buffers and inputs (no in-place state changes), so that torch.vmap can run it for stacked seeds."""
        raise NotImplementedError(f"{type(self).__name__} implements neither train_step nor stage_loss")

    def after_update(self, name: str) -> None:
        """Called after optimizer `name` stepped (e.g. an EMA update of the weights it just changed)."""

    def update(self, loss: torch.Tensor, name: str = "main") -> None:
        opt, scaler = self.optimizers[name], self.scalers[name]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(loss.device.type, enabled=False):  # backward runs outside autocast
            scaler.scale(loss).backward()
        if self.grad_sync is not None:  # data-parallel: average before unscaling/clipping so all ranks agree
            self.grad_sync(opt)
        if self.grad_clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], self.grad_clip)
        scaler.step(opt)
        scaler.update()

    def set_lr(self, name: str, lr: float | torch.Tensor) -> None:
        """Set optimizer `name`'s learning rate: a float, or a 0-d tensor (a static value of
        genssl.training.captured, which the optimizer then reads on the device at every step)."""
        for group in self.optimizers[name].param_groups:
            group["lr"] = lr

    # ------------------------------------------------------------------ inference
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float images in [0, 1] -> (B, K) logits."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, D) features (latent means for the VAEs)."""
        raise NotImplementedError

    def typicality(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float images in [0, 1] -> (B,) scores, higher = more typical of the training data; for the
        methods that declare `typicality_score`. Call it through genssl.methods.typicality.typicality_scores (eval
        mode, no grad, fp32, batched, the noise of a stochastic bound from a fixed seed)."""
        raise NotImplementedError(f"{type(self).__name__} declares no typicality_score")

    def eval_images(self, x: torch.Tensor) -> dict[str, torch.Tensor | tuple[torch.Tensor, int]]:
        """Named image batches (N, C, H, W) in [0, 1] to show in TensorBoard at each evaluation; a value may be
        (images, images_per_row) to lay the grid out, e.g. a row per class."""
        return {}

    def check_health(self, means: dict[str, float], step: int) -> str | None:
        """Given the mean logs of the last interval, return a message if training has failed in a way that
        finite losses do not show (e.g. a collapsed discriminator); the Trainer then stops the run."""
        return None

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict:
        return {
            "model": self.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "scalers": {k: s.state_dict() for k, s in self.scalers.items()},
        }

    def load_checkpoint_state(self, state: dict) -> None:
        self.load_state_dict(state["model"])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
            match_optimizer_layout(o)  # a checkpoint saved under the other layout (train.channels_last)
        for k, s in self.scalers.items():
            if state["scalers"].get(k):
                s.load_state_dict(state["scalers"][k])

    def compile_networks(self) -> None:
        """torch.compile each direct sub-network in place (the step's Python stays eager)."""
        for child in self.children():
            child.compile()
