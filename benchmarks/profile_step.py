"""Where one training step's time goes: torch.profiler over a few steps of a method at its default config (or a
YAML's), the ops sorted by their own time, plus the step's FLOPs against this machine's matmul limit.

    .venv/bin/python benchmarks/profile_step.py --config experiments/fmnist_sgan.yaml --precision bf16 --threads 1
    .venv/bin/python benchmarks/profile_step.py --method vae_m2 --precision bf16 --threads 1 --trace /tmp/m2.json

Same data and step as throughput.py (random uint8 images on the device, batch 100 labeled + 100 unlabeled).
`--trace` writes a Chrome trace (chrome://tracing, or https://ui.perfetto.dev) to see the order of the ops.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import build_step, machine_info, matmul_gflops  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default=None)
    p.add_argument("--config", default=None)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--steps", type=int, default=10, help="profiled steps")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rows", type=int, default=30)
    p.add_argument("--sort", default="self_cpu_time_total")
    p.add_argument("--trace", default=None, help="write a Chrome trace here")
    args = p.parse_args(argv)
    if not args.method and not args.config:
        p.error("give --method or --config")

    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    setting = {"method": args.method, "config": args.config, "method_overrides": {}, "device": args.device,
               "precision": args.precision, "compile": args.compile, "batch_size": args.batch_size,
               "labeled_batch_size": 100, "n_labels": 100, "threads": args.threads, "steps": args.steps,
               "warmup": args.warmup, "seeds": args.seeds}
    step, module, device, precision = build_step(setting)
    if args.compile:
        module.compile_networks()
    for s in range(args.warmup):
        step(s)
    with FlopCounterMode(display=False) as counter:
        step(args.warmup)
    flops = counter.get_total_flops()
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(args.steps):
        step(args.warmup + 1 + s)
    ms = 1e3 * (time.perf_counter() - t0) / args.steps
    cpu_ms = 1e3 * (time.process_time() - c0) / args.steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=False) as prof:
        for s in range(args.steps):
            step(args.warmup + 1 + args.steps + s)
    if args.trace:
        prof.export_chrome_trace(args.trace)
    peaks = {p: matmul_gflops(p) for p in ("fp32", "bf16")} if device.type == "cpu" else {}
    info = machine_info()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"{args.method or args.config}: {precision}, {torch.get_num_threads()} thread(s), seeds {args.seeds}, "
          f"compile {args.compile}: {ms:.1f} ms/step ({cpu_ms:.1f} CPU ms) unprofiled, {flops / 1e9:.2f} GFLOP/step = "
          f"{flops / 1e9 / (cpu_ms / 1e3):.0f} GFLOP per CPU-second"
          + "".join(f"; {100 * flops / 1e9 / (cpu_ms / 1e3) / g:.0f}% of the {k} 1000^3 matmul ({g:.0f})"
                    for k, g in peaks.items()))
    by_op = {str(op): n for op, n in counter.get_flop_counts().get("Global", {}).items()}
    print("FLOPs by op: " + ", ".join(f"{op} {n / 1e9:.2f} G" for op, n in sorted(by_op.items(), key=lambda kv: -kv[1])))
    print(prof.key_averages().table(sort_by=args.sort, row_limit=args.rows, max_name_column_width=48))
    print(f"load average: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
