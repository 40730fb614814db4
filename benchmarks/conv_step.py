"""The conv step side by side in one process: precision (fp32 / bf16 autocast) x memory layout (NCHW /
channels_last) x eager / torch.compile, for the conv entries of throughput.py (CONV_ENTRIES), as ratios to the
first setting. Prints a table.

    .venv/bin/python benchmarks/conv_step.py                                   # fixmatch-conv, the four settings
    .venv/bin/python benchmarks/conv_step.py --entries fixmatch-conv supervised-conv --compile off on --rounds 4

Every setting is built in the same process from the same seed (the same weights and batches) and the settings
take turns, `--steps` steps each per round, for `--rounds` rounds: load on a shared machine hits every setting
alike, and the ratios are per-round ratios to the first setting (their median is reported). The time is the
process's CPU time (one thread: seconds of one core, what the study's budget clock counts) and wall time.
torch.compile's cost is its warm-up (reported apart); the rounds time the compiled step in its steady state.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # throughput.py beside it, however this script is started
from throughput import CONV_ENTRIES, LAYOUTS, machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def build(entry: str, precision: str, layout: str, compile_: bool, n: int = 4000):
    """(step(s), method) for one setting, on random uint8 images of Fashion-MNIST's shape."""
    from genssl.config import build_run_config, load_yaml, merge
    from genssl.data.batching import SSLBatcher
    from genssl.data.spec import DataSpec
    from genssl.methods import create_method
    from genssl.training.device import autocast

    config, extra = CONV_ENTRIES[entry]
    raw = load_yaml(ROOT / config)
    cfg = build_run_config(merge(raw, {"method": extra}))
    t = raw.get("train", {})
    lbs = 64 if entry == "supervised-conv" else t.get("labeled_batch_size", 100)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 10
    idx = torch.arange(n)
    batcher = SSLBatcher(images, labels, idx[:100], idx, lbs, t.get("batch_size", 100), 0)
    torch.manual_seed(0)
    method = create_method(cfg.method_name, cfg.method, DataSpec((1, 28, 28), 10, 100, n))
    method.setup(100_000, precision, LAYOUTS[layout])  # schedules stay in their first phase
    device = torch.device("cpu")
    with autocast(device, precision):
        method.initialize(batcher.next())
    if compile_:
        method.compile_networks()
    method.train()

    def step(s: int):
        batch = batcher.next()
        with autocast(device, precision):
            return method.train_step(batch, s)

    return step, method, f"{lbs} labeled + {t.get('batch_size', 100)} unlabeled images"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", nargs="*", default=["fixmatch-conv"], choices=list(CONV_ENTRIES))
    p.add_argument("--precisions", nargs="*", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--layouts", nargs="*", default=["nchw", "channels_last"], choices=["nchw", "channels_last"])
    p.add_argument("--compile", nargs="*", default=["off"], choices=["off", "on"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=5, help="steps per setting per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info()
    print("# conv step, settings side by side in one process")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items())
          + f", capability={torch.backends.cpu.get_cpu_capability()}"
          + f", mkldnn_bf16={torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    print(f"settings: threads={args.threads} steps={args.steps} per round, rounds={args.rounds}, warmup={args.warmup}")
    for entry in args.entries:
        settings = [(pr, lay, c == "on") for c in args.compile for pr in args.precisions for lay in args.layouts]
        steps, warm, images = [], [], 0
        for pr, lay, comp in settings:
            step, _, images = build(entry, pr, lay, comp)
            t0 = time.process_time()
            for s in range(args.warmup):
                step(s)
            warm.append(time.process_time() - t0)
            steps.append(step)
        cpu = [[] for _ in settings]
        wall = [[] for _ in settings]
        for r in range(args.rounds):
            for i, step in enumerate(steps):
                t0, c0 = time.perf_counter(), time.process_time()
                for s in range(args.steps):
                    step(args.warmup + r * args.steps + s)
                cpu[i].append(1e3 * (time.process_time() - c0) / args.steps)
                wall[i].append(1e3 * (time.perf_counter() - t0) / args.steps)
        print(f"\n## {entry} ({images} a step)\n")
        print("| precision | layout | compile | CPU ms/step (median) | per round | x first setting (CPU) | "
              "wall ms/step | warm-up s |")
        print("|---|---|---|---:|---|---:|---:|---:|")
        for i, (pr, lay, comp) in enumerate(settings):
            ratio = statistics.median(c / b for c, b in zip(cpu[i], cpu[0]))
            print(f"| {pr} | {lay} | {'on' if comp else 'off'} | {statistics.median(cpu[i]):.1f} | "
                  f"{' / '.join(f'{c:.0f}' for c in cpu[i])} | {ratio:.2f} | {statistics.median(wall[i]):.1f} | "
                  f"{warm[i]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
