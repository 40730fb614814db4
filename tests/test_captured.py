"""The captured training step (genssl.training.captured) without a GPU: its static-buffer mode runs the same step
function on the same static inputs, values and outputs as a CUDA graph replays, and must give the eager step's
losses and weights bit for bit, for every method that declares `capturable`; the choice of `train.cuda_graph`; the
Trainer in that mode (guards, checkpoints an eager run resumes exactly); checkpoints written as an eager run writes
them after the optimizers were switched for capture; and the Trainer's checkpoint on SIGUSR2 / SIGTERM. The
CUDA-only checks (the capture itself against the eager step over 100 steps) skip without a GPU."""

from __future__ import annotations

import copy
import os
import signal
from dataclasses import replace

import pytest
import torch

from genssl import Trainer
from genssl.config import ConfigError, build_run_config, parse_overrides
from genssl.data.batching import SSLBatcher
from genssl.data.spec import DataSpec
from genssl.methods import create_method
from genssl.registry import get_method_class, list_methods
from genssl.runs.run_dir import RunDir
from genssl.training import trainer as trainer_mod
from genssl.training.captured import CapturedStep, capture_decision
from genssl.training.rng import seed_everything
from genssl.training.trainer import DivergenceError, SingleStep
from method_recipes import recipe

CAPTURABLE = [m for m in list_methods() if get_method_class(m).capturable]
STEPS = 20
SCHEDULES = {  # options under which each method's numbers change within STEPS steps
    "sgan": {"lr_decay_start": 0.5},
    "fixmatch": {"optimizer": "sgd", "lr": 0.03, "lr_schedule": "cosine"},
    "vae_m1": {"kl_warmup": 0.5},
    "vae_m2": {"kl_warmup": 0.5},
    "adgm": {"kl_warmup": 0.5},
    "sdgm": {"kl_warmup": 0.5},
}


def _spec(train, n_labeled=20):
    return DataSpec(train.image_shape, train.num_classes, n_labeled, len(train) - n_labeled, False)


def _steps(method_name: str, overrides: dict, data, strategy_cls, device="cpu", steps=STEPS, **kw):
    """Logs of `steps` steps of a fresh seeded method under a strategy, and its final state."""
    train, _ = data
    cls = get_method_class(method_name)
    cfg = cls.Config(**{**recipe(method_name), **overrides})
    seed_everything(0)
    method = create_method(method_name, cfg, _spec(train)).to(device)
    method.setup(steps, "fp32")
    images, labels = train.images.to(device), train.labels.to(device)
    idx = torch.arange(len(train))
    batcher = SSLBatcher(images, labels, idx[:20], idx[20:], 16, 32, seed=0)
    method.initialize(batcher.next())
    strategy = strategy_cls([method], **kw)
    method.train()
    logs = [strategy([batcher.next()], s)[0] for s in range(steps)]
    return [{k: v.detach().float().cpu() for k, v in d.items()} for d in logs], method, strategy


@pytest.mark.parametrize("method", CAPTURABLE)
def test_static_buffers_give_the_eager_losses_exactly(method, tiny_data):
    """20 steps with the schedules moving: every log and every weight equal bit for bit."""
    over = SCHEDULES.get(method, {})
    eager, m_eager, _ = _steps(method, over, tiny_data, SingleStep)
    static, m_static, strategy = _steps(method, over, tiny_data, CapturedStep, capture=False)
    assert strategy.frozen_step == 0 and strategy.graph is None  # the function saw step 0 throughout, as a replay
    for s, (a, b) in enumerate(zip(eager, static)):
        assert a.keys() == b.keys(), f"{method} step {s}: logs {sorted(a)} vs {sorted(b)}"
        for k in a:
            assert torch.equal(a[k], b[k]), f"{method} step {s}: {k} {float(a[k])!r} (eager) vs {float(b[k])!r}"
    sa, sb = m_eager.state_dict(), m_static.state_dict()
    for k in sa:
        if isinstance(sa[k], torch.Tensor):
            assert torch.equal(sa[k], sb[k]), f"{method}: {k} differs after {STEPS} steps"
    for name, opt in m_eager.optimizers.items():  # the schedule reached the optimizer: its last lr, as a float
        lr = float(m_static.optimizers[name].param_groups[0]["lr"])
        assert lr == opt.param_groups[0]["lr"], f"{method}: {name} lr {lr} vs {opt.param_groups[0]['lr']}"


def test_a_schedule_read_from_step_would_show(tiny_data, monkeypatch):
    """The static mode passes the capture step, as a replay would: sgan with its learning rate read from `step`
    (not from step_values) no longer matches the eager run."""
    from genssl.methods.sgan import SGAN

    real = SGAN.step_values
    monkeypatch.setattr(SGAN, "step_values", lambda self, step: {"lr": self.lr_at(step)})
    eager, _, _ = _steps("sgan", SCHEDULES["sgan"], tiny_data, SingleStep, steps=14)
    static, _, _ = _steps("sgan", SCHEDULES["sgan"], tiny_data, CapturedStep, steps=14, capture=False)
    assert any(not torch.equal(a["train/lr"], b["train/lr"]) for a, b in zip(eager, static))
    monkeypatch.setattr(SGAN, "step_values", real)


def test_capture_is_declared_and_refused_with_reasons():
    for name in list_methods():
        cls = get_method_class(name)
        refusal = cls.capture_refusal(cls.Config())
        assert (refusal is None) == cls.capturable, f"{name}: capturable={cls.capturable} but refusal {refusal!r}"
        if cls.capturable:  # a capturable step is written as stages, like a stacked one
            assert cls.supports_stacking, name
        else:
            assert name in refusal
    m2 = get_method_class("vae_m2")
    assert "boolean mask" in m2.capture_refusal(m2.Config(encoder="x", m1_active_threshold=0.1))


def test_cuda_graph_decision():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    sup, st = get_method_class("supervised"), get_method_class("self_training")
    assert capture_decision("off", cuda, sup, sup.Config(), "fp32") == (False, "off")
    ok, why = capture_decision("auto", cpu, sup, sup.Config(), "fp32")
    assert not ok and "CUDA" in why
    with pytest.raises(ValueError, match="cuda_graph=on needs a CUDA device"):
        capture_decision("on", cpu, sup, sup.Config(), "fp32")
    assert capture_decision("auto", cuda, sup, sup.Config(), "fp32") == (True, "auto: captured")
    assert capture_decision("on", cuda, sup, sup.Config(), "fp32") == (True, "on: captured")
    for kw, words in (({"precision": "bf16"}, "fp32 only"), ({"compile": True}, "compile"),
                      ({"world_size": 2}, "ranks"), ({"n_seeds": 3}, "stacked")):
        args = {"precision": "fp32", **kw}
        ok, why = capture_decision("on", cuda, sup, sup.Config(), args.pop("precision"), **args)
        assert not ok and why.startswith("on: eager") and words in why, why
    ok, why = capture_decision("auto", cuda, st, st.Config(), "fp32")
    assert not ok and "self_training" in why
    with pytest.raises(ValueError, match="not one of"):
        capture_decision("yes", cuda, sup, sup.Config(), "fp32")


def test_config_checks_cuda_graph(run_config_factory):
    assert run_config_factory("supervised").train.cuda_graph == "off"  # until measured on a GPU
    with pytest.raises(ConfigError, match="train.cuda_graph: 'yes' is not one of auto, on, off"):
        build_run_config({"method": {"name": "supervised"}, "train": {"cuda_graph": "yes"}})
    # a bare off / on, as YAML and --train.cuda_graph=off give it (a bool), means "off" / "on"
    overrides = parse_overrides(["--train.cuda_graph=off"])
    assert build_run_config({"method": {"name": "supervised"}, **overrides}).train.cuda_graph == "off"
    assert build_run_config({"method": {"name": "supervised"}, "train": {"cuda_graph": True}}).train.cuda_graph == "on"


def test_trainer_records_the_choice(run_config_factory, tiny_data, tmp_path):
    cfg = run_config_factory("supervised", recipe("supervised"), train={"steps": 2, "eval_every": 2,
                                                                         "cuda_graph": "auto"})
    res = Trainer(cfg, run_dir=tmp_path / "a", data=tiny_data).fit()
    assert res["cuda_graph"] == "eager" and "CUDA" in res["cuda_graph_reason"]
    on = replace(cfg, train=replace(cfg.train, cuda_graph="on", device="cpu"))
    with pytest.raises(ValueError, match="CUDA device"):
        Trainer(on, run_dir=tmp_path / "b", data=tiny_data).fit()


def _static_trainer(monkeypatch):
    """The Trainer picks the captured strategy on this CPU: CapturedStep then runs in its static-buffer mode."""
    monkeypatch.setattr(trainer_mod, "capture_decision", lambda *a, **k: (True, "test: static buffers"))


def test_static_run_resumes_exactly_as_eager(run_config_factory, tiny_data, tmp_path, monkeypatch):
    """sgan (two optimizers, EMA, decaying lr): a static-buffer run is the eager run (results, last.pt), and its
    step-4 checkpoint, written with float learning rates, resumes eagerly to the same end."""
    from test_exact_resume import SAME_KEYS, assert_same

    cfg = run_config_factory("sgan", {**recipe("sgan"), "lr_decay_start": 0.5},
                             train={"steps": 8, "ckpt_every": 4, "eval_every": 4, "log_every": 2, "seed": 1})
    eager = Trainer(cfg, run_dir=tmp_path / "eager", data=tiny_data).fit()
    with monkeypatch.context() as m:
        _static_trainer(m)
        static = Trainer(cfg, run_dir=tmp_path / "static", data=tiny_data).fit()
        real = CapturedStep.__call__

        def stop(self, batches, s):
            if s == 6:
                raise KeyboardInterrupt
            return real(self, batches, s)

        m.setattr(CapturedStep, "__call__", stop)
        with pytest.raises(KeyboardInterrupt):
            Trainer(cfg, run_dir=tmp_path / "part", data=tiny_data).fit()
    ckpt, _ = RunDir(tmp_path / "part").load_resume_checkpoint()
    groups = [g for o in ckpt["method_state"]["optimizers"].values() for g in o["param_groups"]]
    assert ckpt["step"] == 4 and all(type(g["lr"]) is float for g in groups)
    resumed = Trainer(cfg, run_dir=tmp_path / "part", data=tiny_data, resume=True).fit()
    assert static["cuda_graph"] == "static" and resumed["cuda_graph"] == "eager"
    for res in (static, resumed):
        assert (res["test_acc"], res["best_val_acc"], res["best_step"]) == \
            (eager["test_acc"], eager["best_val_acc"], eager["best_step"])
    last = RunDir(tmp_path / "eager").load_checkpoint("last.pt")
    for other in ("static", "part"):
        theirs = RunDir(tmp_path / other).load_checkpoint("last.pt")
        for key in SAME_KEYS:
            if key != "config":
                assert_same(last.get(key), theirs.get(key), f"last.pt of {other}", key)


def test_static_run_keeps_the_nan_guard(run_config_factory, tiny_data, monkeypatch):
    """The guard reads the losses from the static outputs: an exploding learning rate stops the run at step 2."""
    _static_trainer(monkeypatch)
    cfg = run_config_factory("supervised", {"lr": 1e30, "weight_decay": 0.0},
                             train={"steps": 30, "ckpt_every": 1, "log_every": 1, "eval_every": 30})
    with pytest.raises(DivergenceError, match="diverged by step 2: train/sup_loss"):
        Trainer(cfg, data=tiny_data).fit()


def test_checkpoint_after_capture_setup_is_an_eager_one(tiny_data):
    """The CUDA set-up (Adam capturable with its step count on the device, SGD fused, tensor learning rates) is
    undone in the checkpoint: an eager optimizer on the CPU loads it and steps."""
    for name, over in (("sgan", {}), ("supervised", {}), ("fixmatch", SCHEDULES["fixmatch"])):
        _, method, strategy = _steps(name, over, tiny_data, CapturedStep, steps=2, capture=False)
        strategy._capturable_optimizers()  # what capture=True does on CUDA
        flags = {k: [dict(g) for g in o.param_groups] for k, o in method.optimizers.items()}
        assert any(g.get("capturable") or g.get("fused") for gs in flags.values() for g in gs)
        states = strategy.checkpoint_states()[0]["optimizers"]
        fresh = copy.deepcopy(method)
        fresh.setup(2, "fp32")
        for k, opt in fresh.optimizers.items():
            eager_groups = [{f: g[f] for f in ("capturable", "fused", "foreach") if f in g} for g in opt.param_groups]
            saved = [{f: g[f] for f in ("capturable", "fused", "foreach") if f in g}
                     for g in states[k]["param_groups"]]
            assert saved == eager_groups, f"{name} {k}: {saved} vs {eager_groups}"
            assert all(type(g["lr"]) is float for g in states[k]["param_groups"])
            opt.load_state_dict(states[k])
            for st in opt.state.values():
                assert "step" not in st or st["step"].device.type == "cpu"
        fresh.train_step(strategy.inputs, 2)  # an eager step on the loaded state


@pytest.mark.parametrize("signame", ["SIGUSR2", "SIGTERM"])
def test_preemption_signal_saves_last_at_that_step(signame, run_config_factory, tiny_data, tmp_path, monkeypatch):
    """The signal arrives during step 5 (of 12, periodic checkpoints every 100): last.pt is written at step 6,
    the step boundary, before the handler installed earlier runs; afterwards that handler is back in place."""
    signum = getattr(signal, signame)
    cfg = run_config_factory("supervised", recipe("supervised"),
                             train={"steps": 12, "ckpt_every": 100, "eval_every": 100, "log_every": 100})
    run_dir = tmp_path / "run"
    seen = []

    def earlier(sig, frame):  # e.g. submitit's requeue
        seen.append((sig, RunDir(run_dir).load_checkpoint("last.pt")["step"]))

    real = SingleStep.__call__

    def step(self, batches, s):
        if s == 5:
            os.kill(os.getpid(), signum)
        return real(self, batches, s)

    monkeypatch.setattr(SingleStep, "__call__", step)
    previous = signal.signal(signum, earlier)
    try:
        res = Trainer(cfg, run_dir=run_dir, data=tiny_data).fit()
        assert signal.getsignal(signum) is earlier
    finally:
        signal.signal(signum, previous)
    assert seen == [(signum, 6)] and res["steps"] == 12
    assert RunDir(run_dir).load_checkpoint("last.pt")["step"] == 12


# ---------------------------------------------------------------------------------------------- on a GPU
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("method", CAPTURABLE)
def test_cuda_captured_step_follows_the_eager_step(method, tiny_data):
    """The replayed graph against the eager step over 100 steps on the GPU: the same random numbers (the CUDA
    generator registered with the graph), so the same losses within float tolerance (kernel order may differ)."""
    over = SCHEDULES.get(method, {})
    eager, m_eager, _ = _steps(method, over, tiny_data, SingleStep, device="cuda", steps=100)
    graphed, m_graph, strategy = _steps(method, over, tiny_data, CapturedStep, device="cuda", steps=100)
    assert strategy.graph is not None and strategy.capture
    for s, (a, b) in enumerate(zip(eager, graphed)):
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4,
                                       msg=lambda d, k=k, s=s: f"{method} step {s} {k}: {d}")


@cuda
def test_cuda_captured_run_resumes_and_guards(run_config_factory, tiny_data, tmp_path, monkeypatch):
    """A captured sgan run on the GPU records why it captured; stopped before step 9 and resumed from its step-6
    checkpoint (warm-up and capture again, the CUDA generator restored) it ends where the uninterrupted captured run
    ends, within float tolerance; the NaN guard still stops an exploding run."""
    cfg = run_config_factory("sgan", recipe("sgan"), train={"steps": 12, "ckpt_every": 6, "eval_every": 6,
                                                             "device": "cuda", "cuda_graph": "on", "seed": 1})
    full = Trainer(cfg, run_dir=tmp_path / "full", data=tiny_data).fit()
    assert full["cuda_graph"] == "captured" and full["cuda_graph_reason"] == "on: captured"
    real = CapturedStep.__call__

    def stop(self, batches, s):
        if s == 9:
            raise KeyboardInterrupt
        return real(self, batches, s)

    with monkeypatch.context() as m:
        m.setattr(CapturedStep, "__call__", stop)
        with pytest.raises(KeyboardInterrupt):
            Trainer(cfg, run_dir=tmp_path / "part", data=tiny_data).fit()
    assert RunDir(tmp_path / "part").load_resume_checkpoint()[0]["step"] == 6
    part = Trainer(cfg, run_dir=tmp_path / "part", data=tiny_data, resume=True).fit()
    assert part["cuda_graph"] == "captured" and part["steps"] == 12
    wa = RunDir(tmp_path / "full").load_checkpoint("last.pt")["method_state"]["model"]
    wb = RunDir(tmp_path / "part").load_checkpoint("last.pt")["method_state"]["model"]
    for k in wa:
        if isinstance(wa[k], torch.Tensor) and wa[k].is_floating_point():
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5, msg=lambda d, k=k: f"{k}: {d}")
    boom = run_config_factory("supervised", {"lr": 1e30, "weight_decay": 0.0},
                              train={"steps": 30, "ckpt_every": 1, "log_every": 1, "eval_every": 30, "device": "cuda",
                                     "cuda_graph": "on"})
    with pytest.raises(DivergenceError, match="diverged by step"):
        Trainer(boom, run_dir=tmp_path / "boom", data=tiny_data).fit()
