"""train.channels_last (genssl.nn.layout): a conv method's kernels are converted once in Method.setup and stay
channels_last while it trains; MLPs are untouched; predict, encode, export and load_encoder on contiguous
(NCHW) inputs give the logits and features of the NCHW model; optimizer state saved under the other layout is
re-laid out on load (the fused optimizers would otherwise mix up elements)."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from genssl import Trainer, export_encoder, load_encoder
from genssl.config import REPORTING_KEYS, RESUMABLE_OVERRIDES, ConfigError, build_run_config
from genssl.data.batching import SSLBatch
from genssl.data.spec import DataSpec
from genssl.methods import create_method
from genssl.nn.layout import has_conv, is_channels_last, match_optimizer_layout, to_channels_last, use_channels_last
from genssl.runs.run_dir import RunDir
from conftest import tiny_run_config

CL = torch.channels_last
SPEC = DataSpec((3, 12, 12), 4, 16, 64)  # colour images: NCHW and NHWC are different bytes

CONV_METHODS = {  # name: method overrides (small widths: the layout, not the size, is under test)
    "supervised-conv": ("supervised", {"arch": "conv"}),
    "fixmatch-conv": ("fixmatch", {"arch": "conv"}),
    "sgan-convnet": ("sgan", {"arch": "convnet", "conv_width": 8, "g_hidden": [32]}),
    "vae_m2-conv": ("vae_m2", {"cls_arch": "conv", "enc_hidden": [32], "dec_hidden": [32], "cls_hidden": [32]}),
    "adgm-conv": ("adgm", {"cls_arch": "conv"}),
}


def _method(key: str, spec: DataSpec = SPEC, seed: int = 0):
    name, overrides = CONV_METHODS[key]
    cfg = build_run_config({"method": {"name": name, **overrides}})
    torch.manual_seed(seed)
    return create_method(name, cfg.method, spec)


def _batch(spec: DataSpec = SPEC, seed: int = 0) -> SSLBatch:
    g = torch.Generator().manual_seed(seed)
    return SSLBatch(torch.rand(8, *spec.image_shape, generator=g), torch.arange(8) % spec.num_classes,
                    torch.rand(16, *spec.image_shape, generator=g))


def _kernels(method) -> list[torch.Tensor]:
    return [p for p in method.parameters() if p.dim() == 4]


@pytest.mark.parametrize("key", list(CONV_METHODS))
def test_conv_method_trains_channels_last(key):
    m = _method(key)
    assert has_conv(m)
    m.setup(10)  # channels_last="auto"
    assert m.channels_last
    kernels = _kernels(m)
    assert kernels and all(is_channels_last(p) for p in kernels)  # exact NHWC strides, single-channel ones too
    batch = _batch()
    m.initialize(batch)
    m.train()
    for step in range(2):
        logs = m.train_step(batch, step)
    assert all(torch.isfinite(v).all() for v in logs.values())
    assert all(is_channels_last(p) for p in _kernels(m))  # the optimizer kept the layout
    for opt in m.optimizers.values():
        for p, state in opt.state.items():
            for v in state.values():
                if isinstance(v, torch.Tensor) and v.shape == p.shape:
                    assert v.stride() == p.stride()


@pytest.mark.parametrize("key", list(CONV_METHODS))
def test_contiguous_inputs_give_the_nchw_models_outputs(key):
    m = _method(key)
    m.setup(10)
    batch = _batch()
    m.initialize(batch)
    m.train()
    m.train_step(batch, 0)
    ref = _method(key)
    ref.setup(10, channels_last="off")
    assert not ref.channels_last and all(p.is_contiguous() for p in _kernels(ref))
    ref.load_state_dict(m.state_dict())
    assert all(p.is_contiguous() for p in _kernels(ref))  # loading copies values, not layouts
    m.eval(), ref.eval()
    x = _batch(seed=1).x_l  # contiguous NCHW
    with torch.no_grad():
        logits = m.predict(x)
        torch.testing.assert_close(logits, ref.predict(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m.predict(x.contiguous(memory_format=CL)), logits, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.encode(x), ref.encode(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("key", ["fixmatch-conv", "supervised-conv"])
def test_exported_encoder_takes_contiguous_inputs(key, tmp_path):
    m = _method(key)
    m.setup(10)
    batch = _batch()
    m.train()
    m.train_step(batch, 0)
    m.eval()
    x = _batch(seed=2).x_u
    with torch.no_grad():
        expected = m.encode(x)
    folder = export_encoder(m.encoder_module(), tmp_path / "enc", input_shape=SPEC.image_shape, source_method=key)
    weights = torch.load(folder / "weights.pt", weights_only=True)
    assert all(t.is_contiguous() for t in weights.values())  # the file is NCHW whatever the run trained in
    enc = load_encoder(folder)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(enc(x.contiguous(memory_format=CL)), enc(x), rtol=1e-5, atol=1e-6)


def test_mlp_is_untouched():
    cfg = build_run_config({"method": {"name": "fixmatch", "arch": "mlp", "hidden": [32]}})
    m = create_method("fixmatch", cfg.method, SPEC)
    before = {k: v.stride() for k, v in m.named_parameters()}
    m.setup(10)
    assert not has_conv(m) and not m.channels_last
    assert {k: v.stride() for k, v in m.named_parameters()} == before


def test_use_channels_last_choices():
    conv, mlp = _method("supervised-conv"), torch.nn.Linear(3, 4)
    assert use_channels_last("auto", conv) and not use_channels_last("auto", mlp)
    assert use_channels_last("on", mlp) and not use_channels_last("off", conv)
    assert use_channels_last(True, mlp) and not use_channels_last(False, conv)
    with pytest.raises(ValueError, match="'nhwc' is not one of auto, on, off"):
        use_channels_last("nhwc", conv)


def test_single_channel_nets_run_nhwc_from_the_first_convolution():
    """A grey-image net's first kernel (O, 1, kh, kw) passes is_contiguous(channels_last) in NCHW order too; it must
    get exact NHWC strides, or oneDNN runs the first convolution NCHW and the first stage's backward mixes layouts.
    Noise and dropout masks follow their input's layout."""
    spec = DataSpec((1, 28, 28), 10, 16, 64)
    for key in ("fixmatch-conv", "sgan-convnet"):
        m = _method(key, spec)
        m.setup(10)
        first = _kernels(m)[0]
        assert first.shape[1] == 1 and first.stride() == (first.shape[2] * first.shape[3], 1, first.shape[3], 1)
        net = m.net if key == "fixmatch-conv" else m.disc
        seen = []
        hooks = [mod.register_forward_hook(lambda mod, i, o: seen.append(is_channels_last(o)))
                 for mod in net.body if isinstance(mod, (torch.nn.ReLU, torch.nn.LeakyReLU))]
        m.train()
        with torch.no_grad():
            net(_batch(spec).x_l)
        for h in hooks:
            h.remove()
        assert seen and all(seen)


def test_to_channels_last_leaves_stacked_kernels():
    stacked = torch.nn.Module()
    stacked.w = torch.nn.Parameter(torch.randn(3, 8, 4, 3, 3))  # (seeds, O, I, kh, kw), as genssl.training.stacked
    to_channels_last(stacked)
    assert stacked.w.is_contiguous()


@pytest.mark.parametrize("fused", [False, True])
def test_optimizer_state_follows_the_parameters_layout(fused):
    """A moment saved from an NCHW run, loaded next to a channels_last parameter, is re-laid out: the fused
    optimizers walk parameter and state memory in step."""
    w0, g = torch.randn(8, 3, 3, 3), torch.randn(8, 3, 3, 3)
    results = []
    for layout in (torch.contiguous_format, CL):
        p = torch.nn.Parameter(w0.clone())
        opt = torch.optim.AdamW([p], lr=0.1, fused=fused)
        p.grad = g.clone()
        opt.step()
        saved = copy.deepcopy(opt.state_dict())  # NCHW moments
        p.data = p.data.contiguous(memory_format=layout)
        opt = torch.optim.AdamW([p], lr=0.1, fused=fused)
        opt.load_state_dict(saved)
        match_optimizer_layout(opt)
        assert all(v.stride() == p.stride() for v in opt.state[p].values() if v.dim() == 4)
        p.grad = g.clone().contiguous(memory_format=layout)
        opt.step()
        results.append(p.detach().clone())
    torch.testing.assert_close(results[1], results[0])


def test_resume_from_nchw_checkpoint_into_channels_last():
    m = _method("vae_m2-conv")  # fused AdamW
    m.setup(10, channels_last="off")
    batch = _batch()
    m.train()
    m.train_step(batch, 0)
    state = copy.deepcopy(m.checkpoint_state())
    torch.manual_seed(5)
    m.train_step(batch, 1)
    resumed = _method("vae_m2-conv")
    resumed.setup(10)
    assert resumed.channels_last
    resumed.load_checkpoint_state(state)
    resumed.train()
    torch.manual_seed(5)
    resumed.train_step(batch, 1)
    for (name, a), b in zip(m.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


def test_config_key():
    assert build_run_config({"method": "supervised"}).train.channels_last == "auto"
    assert build_run_config({"method": "supervised", "train": {"channels_last": "off"}}).train.channels_last == "off"
    # YAML 1.1 reads a bare off / on as false / true (a file's `channels_last: off`, `--train.channels_last=off`)
    assert build_run_config(yaml.safe_load("{method: supervised, train: {channels_last: off}}")).train.channels_last \
        is False
    assert not use_channels_last(False, _method("supervised-conv")) and use_channels_last(True, torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="train.channels_last: 'nhwc' is not one of auto, on, off"):
        build_run_config({"method": "supervised", "train": {"channels_last": "nhwc"}})
    # a layout changes how a run computes, not what: grids reuse runs across it, resumes may change it
    assert "train.channels_last" in REPORTING_KEYS and "train.channels_last" in RESUMABLE_OVERRIDES


def test_trained_run_predicts_the_same_from_its_folder(tmp_path, tiny_data):
    cfg = tiny_run_config("fixmatch", tmp_path, {"arch": "conv"}, train={"steps": 2, "eval_every": 2})
    trainer = Trainer(cfg, data=tiny_data)
    trainer.fit()
    method = trainer.method.eval()
    assert method.channels_last
    loaded, _, _ = RunDir(trainer.run_dir).load_method(RunDir.BEST)
    assert loaded.channels_last and all(is_channels_last(p) for p in _kernels(loaded))
    x = tiny_data[1].images[:32].float() / 255
    off = copy.deepcopy(loaded)
    for p in _kernels(off):
        p.data = p.data.contiguous()
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict(x), method.predict(x), rtol=0, atol=0)
        torch.testing.assert_close(off.predict(x), loaded.predict(x), rtol=1e-4, atol=1e-5)
