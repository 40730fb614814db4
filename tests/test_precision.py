"""train.precision: auto picks bf16 only where it was measured faster, CPUs with native bf16
(genssl.training.device.resolve_precision); the
hardware detection is mocked, so every branch runs on any machine."""

from __future__ import annotations

import json

import pytest
import torch

from genssl.config import ConfigError, build_run_config
from genssl.registry import get_method_class, list_methods
from genssl.training import device as dev
from genssl.training.trainer import Trainer
from conftest import tiny_run_config

CPU = torch.device("cpu")


def _cpu(monkeypatch, flags, capability, mkldnn):
    monkeypatch.setattr(dev, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(dev, "cpu_capability", lambda: capability)
    monkeypatch.setattr(dev, "mkldnn_bf16_supported", lambda: mkldnn)


def test_avx2_only_cpu_gets_fp32(monkeypatch):
    _cpu(monkeypatch, {"avx", "avx2", "fma"}, "AVX2", False)
    precision, reason = dev.resolve_precision("auto", CPU)
    assert precision == "fp32"
    assert "AVX2" in reason and "without native bf16" in reason


def test_avx512_without_bf16_gets_fp32(monkeypatch):
    # Skylake-class AVX-512: oneDNN accepts bf16 (emulated), but there is no bf16 instruction
    _cpu(monkeypatch, {"avx2", "avx512f", "avx512bw"}, "AVX512", True)
    assert dev.resolve_precision("auto", CPU)[0] == "fp32"


@pytest.mark.parametrize("flag", ["amx_bf16", "avx512_bf16"])
def test_native_bf16_cpu_gets_bf16(monkeypatch, flag):
    _cpu(monkeypatch, {"avx2", "avx512f", flag}, "AVX512", True)
    precision, reason = dev.resolve_precision("auto", CPU)
    assert precision == "bf16"
    assert flag in reason


def test_native_flag_but_no_onednn_bf16_gets_fp32(monkeypatch):
    _cpu(monkeypatch, {"amx_bf16"}, "AVX2", False)
    precision, reason = dev.resolve_precision("auto", CPU)
    assert precision == "fp32" and "oneDNN" in reason


@pytest.mark.parametrize("cc", [(9, 0), (8, 0), (7, 5)])
def test_cuda_gets_fp32_by_measurement(monkeypatch, cc):
    # an H200 ran every method's step no faster in bf16 than in fp32 (launch-bound at these sizes)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cc)
    precision, reason = dev.resolve_precision("auto", torch.device("cuda", 0))
    assert precision == "fp32"
    assert f"sm {cc[0]}.{cc[1]}" in reason and "launch-bound" in reason


@pytest.mark.parametrize("requested", ["fp32", "bf16", "fp16"])
def test_explicit_values_pass_through(monkeypatch, requested):
    _cpu(monkeypatch, {"avx2"}, "AVX2", False)  # even where auto would choose otherwise
    assert dev.resolve_precision(requested, CPU) == (requested, "requested")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert dev.resolve_precision(requested, torch.device("cuda", 0)) == (requested, "requested")


def test_unknown_precision_names_the_choices():
    with pytest.raises(ValueError, match="'fp8' is not one of auto, fp32, bf16, fp16"):
        dev.resolve_precision("fp8", CPU)


def test_other_devices_get_fp32():
    assert dev.resolve_precision("auto", torch.device("meta"))[0] == "fp32"


def test_autocast_resolves_auto(monkeypatch):
    _cpu(monkeypatch, {"amx_bf16"}, "AVX512", True)
    with dev.autocast(CPU, "auto"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    _cpu(monkeypatch, {"avx2"}, "AVX2", False)
    with dev.autocast(CPU, "auto"):
        assert not torch.is_autocast_enabled("cpu")


def test_config_accepts_auto_and_rejects_others():
    assert build_run_config({"method": "supervised", "train": {"precision": "auto"}}).train.precision == "auto"
    with pytest.raises(ConfigError, match="auto"):
        build_run_config({"method": "supervised", "train": {"precision": "fp8"}})


def test_this_machine_resolves():
    """The real probes run without error and give one of the two answers."""
    precision, reason = dev.resolve_precision("auto", CPU)
    assert precision in ("fp32", "bf16") and reason.startswith("auto: ")


@pytest.mark.parametrize("name", list_methods())
def test_auto_gives_bf16_only_to_methods_checked_in_bf16(monkeypatch, name):
    # auto is the default, so a method whose bf16 accuracy nobody measured must not get bf16 by it
    _cpu(monkeypatch, {"avx512f", "avx512_bf16"}, "AVX512", True)
    cls = get_method_class(name)
    precision, reason = dev.resolve_precision("auto", CPU, cls)  # no config: the method's default one
    if cls.auto_bf16_for(cls.Config()):
        assert precision == "bf16"
    else:
        assert precision == "fp32"
        assert reason == f"auto: {name} not shown accurate and faster in bf16 (Method.auto_bf16)"
    assert dev.resolve_precision("bf16", CPU, cls) == ("bf16", "requested")  # an explicit choice still passes
    with dev.autocast(CPU, "auto", cls):  # the autocast helper resolves auto the same way
        assert torch.is_autocast_enabled("cpu") == (precision == "bf16")


def test_auto_is_the_default_and_the_run_records_its_choice(monkeypatch, tmp_path, tiny_data):
    _cpu(monkeypatch, {"avx512f", "avx512_bf16"}, "AVX512", True)
    assert build_run_config({"method": "supervised"}).train.precision == "auto"
    cfg = tiny_run_config("supervised", tmp_path, train={"precision": "auto", "steps": 2, "eval_every": 2})
    results = Trainer(cfg, run_dir=tmp_path / "run", data=tiny_data).fit()
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    expected = "bf16" if get_method_class("supervised").auto_bf16_for(cfg.method) else "fp32"
    assert results["precision"] == saved["precision"] == expected
    assert saved["precision_reason"].startswith("auto: ")


CONV_ARCH_METHODS = ["supervised", "fixmatch"]  # their conv bf16 was checked for accuracy; pseudo_label's and
UNCHECKED_CONV_METHODS = ["pseudo_label", "self_training"]  # self_training's was not, so they stay fp32


@pytest.mark.parametrize("name", UNCHECKED_CONV_METHODS)
def test_auto_keeps_fp32_for_a_conv_step_whose_accuracy_was_not_checked(monkeypatch, name):
    _cpu(monkeypatch, {"avx512f", "avx512_bf16"}, "AVX512", True)
    conv = build_run_config({"method": {"name": name, "arch": "conv"}}).method
    assert dev.resolve_precision("auto", CPU, get_method_class(name), conv)[0] == "fp32"


@pytest.mark.parametrize("name", CONV_ARCH_METHODS)
def test_auto_is_decided_per_method_and_arch(monkeypatch, name):
    """supervised and FixMatch get bf16 with the ConvNet (its step measured >= 1.3x faster in bf16 on a native-bf16
    CPU, benchmarks/README.md; not worse in accuracy at 240 s, paired over 6 seeds) and stay fp32 with the MLP; the
    same config on an AVX2-only CPU stays fp32."""
    cls = get_method_class(name)
    conv = build_run_config({"method": {"name": name, "arch": "conv"}}).method
    mlp = build_run_config({"method": {"name": name, "arch": "mlp"}}).method
    _cpu(monkeypatch, {"avx512f", "avx512_bf16"}, "AVX512", True)
    assert dev.resolve_precision("auto", CPU, cls, conv) == ("bf16", "auto: CPU has avx512_bf16, AVX512")
    precision, reason = dev.resolve_precision("auto", CPU, cls, mlp)
    assert precision == "fp32" and reason == (f"auto: {name} (arch mlp) not shown accurate and faster in bf16 "
                                              f"(Method.auto_bf16)")
    with dev.autocast(CPU, "auto", cls, conv):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    _cpu(monkeypatch, {"avx", "avx2", "fma"}, "AVX2", False)
    for cfg in (conv, mlp):
        assert dev.resolve_precision("auto", CPU, cls, cfg)[0] == "fp32"


@pytest.mark.parametrize("name, overrides", [("sgan", {"arch": "convnet"}), ("sgan", {"arch": "conv28"}),
                                             ("sgan", {"arch": "mlp"}), ("vae_m2", {"cls_arch": "conv"}),
                                             ("vae_m2", {})])
def test_methods_checked_for_every_arch_keep_bf16(monkeypatch, name, overrides):
    _cpu(monkeypatch, {"amx_bf16"}, "AVX512", True)
    cfg = build_run_config({"method": {"name": name, **overrides}}).method
    assert dev.resolve_precision("auto", CPU, get_method_class(name), cfg)[0] == "bf16"
