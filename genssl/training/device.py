"""Where and in what precision a run computes: the device, the precision (`auto` picks one per machine),
autocast, and a readable name for results.json."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""train.precision values; `auto` is resolved per device by `resolve_precision`."""

_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names of the native bf16 instructions


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available; use 'auto' or 'cpu'")
    return device


# ---------------------------------------------------------------- detection (small probes, mocked in tests)
@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags: /proc/cpuinfo on Linux, else torch's cpuinfo probes (x86), else none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    flags = set()
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}  # private, optional
    for flag, probe in probes.items():
        fn = getattr(torch.cpu, probe, None)
        if fn is not None and fn():
            flags.add(flag)
    return frozenset(flags)


def cpu_capability() -> str:
    """The SIMD level torch's CPU kernels were dispatched to: DEFAULT, AVX2, AVX512, ..."""
    return torch.backends.cpu.get_cpu_capability()


def mkldnn_bf16_supported() -> bool:
    """oneDNN runs bf16 matmuls/convolutions on this CPU (natively or, on plain AVX-512, emulated)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# ---------------------------------------------------------------- the choice
def resolve_precision(requested: str, device: torch.device, method: type | None = None,
                      method_cfg=None) -> tuple[str, str]:
    """(precision, reason): `requested` itself when it is fp32, bf16 or fp16 (reason "requested"); for `auto`,
    chosen by measurement (benchmarks/README.md): bf16 autocast on a CPU with AMX-BF16 or AVX512-BF16 that oneDNN
    uses (the sgan step 0.88x fp32's on an AMX Xeon, 0.72x on an AVX-512 EPYC), fp32 on an AVX2-only CPU (bf16 emulated, the sgan step 5.8x slower)
    and on every GPU: at genssl's model sizes a GPU step is bound by kernel launches, not arithmetic, and on an
    H200 bf16 was no faster than fp32 for any method (0.9-1.3x the fp32 step; cuDNN convolutions use TF32 in
    fp32 anyway). `method` (a Method class) and `method_cfg` (its config; None: the method's default one): auto
    gives bf16 only to a (method, architecture) pair whose bf16 speed and accuracy were checked
    (`Method.auto_bf16`, `Method.auto_bf16_for`), e.g. fixmatch with arch conv but not with arch mlp. The reason
    is short enough for a progress line."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested, "requested"
    if method is not None and not method.auto_bf16_for(method_cfg):
        arch = None if method_cfg is None else method.precision_arch(method_cfg)
        what = method.name if arch is None else f"{method.name} (arch {arch})"
        return "fp32", f"auto: {what} not shown accurate and faster in bf16 (Method.auto_bf16)"
    device = torch.device(device)
    if device.type == "cuda":
        cc = ".".join(map(str, torch.cuda.get_device_capability(device)))
        return "fp32", f"auto: GPU sm {cc}, launch-bound steps (bf16 measured no faster)"
    if device.type == "cpu":
        cap = cpu_capability()
        native = [f for f in _CPU_BF16_FLAGS if f in cpu_flags()]
        if native and mkldnn_bf16_supported():
            return "bf16", f"auto: CPU has {native[0]}, {cap}"
        if native:
            return "fp32", f"auto: CPU has {native[0]} but oneDNN does not use it, {cap}"
        return "fp32", f"auto: {cap} CPU without native bf16, it would be emulated"
    return "fp32", f"auto: no bf16 detection for {device.type}"


def autocast(device: torch.device, precision: str, method: type | None = None, method_cfg=None):
    """The autocast context of `precision` (`auto` is resolved for `device`, the Method class `method` and its config
    `method_cfg` first, as `resolve_precision` does)."""
    if precision == "auto":
        precision = resolve_precision(precision, device, method, method_cfg)[0]
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(torch.device(device).type, dtype=dtype)


def device_kind(device: torch.device) -> str:
    """What a timing or a float result depends on: the GPU's name, or the CPU's kernel dispatch level. The same
    fp32 run can differ in its last bits between AVX2 and AVX-512 kernels, and a feedback loop such as
    pseudo-labeling grows that into a different run (experiments/HISTORY.md, 2026-12-07)."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu {cpu_capability()}"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
