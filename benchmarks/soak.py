"""Soak test: train the fastest method for a long stretch and print memory over time, to show no growth.

    python benchmarks/soak.py                       # 20k steps of `supervised` (MLP) on Fashion-MNIST or synthetic data
    python benchmarks/soak.py --steps 2000 --every 200 --method pseudo_label --data synthetic

Prints one row per sample: step, wall time, steps/s, process RSS and (on CUDA) allocated / reserved / peak
memory, then the RSS growth between the first sample after warm-up and the last. Evaluations and checkpoints
run at their usual cadence inside the stretch, so leaks there show up too. Not a unit test: run it by hand.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from genssl.config import build_run_config  # noqa: E402
from genssl.data.datasets import DatasetNotFoundError, ImageData, load_dataset  # noqa: E402
from genssl.registry import get_method_class  # noqa: E402
from genssl.training.trainer import Trainer  # noqa: E402

MIB = 2**20


def rss_bytes() -> int:
    """Current resident set size (Linux /proc), else the peak from getrusage."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def synthetic(n: int, seed: int) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    x = torch.rand(n, 1, 28, 28, generator=g) * 0.7
    for k in range(10):
        r, c = divmod(k, 4)
        x[labels == k, :, r * 7:(r + 1) * 7, c * 7:(c + 1) * 7] += 0.3
    return ImageData((x.clamp(0, 1) * 255).to(torch.uint8), labels, 10, "synthetic")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--every", type=int, default=1000, help="sample memory every N steps")
    p.add_argument("--method", default="supervised")
    p.add_argument("--data", default="auto", help="auto (Fashion-MNIST if found, else synthetic) | synthetic")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--run-dir", default=None, help="keep the run here (default: a temporary folder)")
    args = p.parse_args()

    data = None
    if args.data == "auto":
        try:
            data = load_dataset("fashion_mnist", download=False)
            source = "fashion_mnist"
        except DatasetNotFoundError:
            pass
    if data is None:
        data, source = (synthetic(12_000, 0), synthetic(2_000, 1)), "synthetic"

    # Sample memory from inside the loop: Method.check_health is called with the step at every log interval.
    rows = []
    cls = get_method_class(args.method)
    original = cls.check_health
    start = time.perf_counter()

    def sample(self, means, step):
        if step % args.every == 0:
            row = {"step": step, "time_s": time.perf_counter() - start, "rss_mib": rss_bytes() / MIB}
            if torch.cuda.is_available():
                row.update(cuda_alloc_mib=torch.cuda.memory_allocated() / MIB,
                           cuda_reserved_mib=torch.cuda.memory_reserved() / MIB,
                           cuda_peak_mib=torch.cuda.max_memory_allocated() / MIB)
            rows.append(row)
            _print_row(row, rows)
        return original(self, means, step)

    cls.check_health = sample
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run_dir or str(Path(tmp) / "soak")
        log_every = math.gcd(args.every, 100)  # divides --every, so every sample step is a log step
        cfg = build_run_config({
            "method": {"name": args.method},
            "data": {"dataset": source, "n_labels": 100, "n_val": 1000},
            "train": {"steps": args.steps, "seed": 0, "device": args.device, "threads": args.threads,
                      "log_every": log_every, "eval_every": max(args.every * 2, log_every),
                      "ckpt_every": max(args.steps // 4, 1), "progress": False},
        })
        print(f"soak: {args.method} on {source}, {args.steps} steps, device {args.device}, "
              f"torch {torch.__version__}, threads {args.threads or torch.get_num_threads()}")
        header = f"{'step':>7} {'time_s':>8} {'steps/s':>8} {'rss_MiB':>9}"
        if torch.cuda.is_available():
            header += f" {'cuda_alloc':>10} {'cuda_resv':>10} {'cuda_peak':>10}"
        print(header)
        results = Trainer(cfg, run_dir=run_dir, data=data).fit()
    cls.check_health = original

    warm = rows[min(1, len(rows) - 1)] if rows else None
    if warm and len(rows) > 2:
        growth = rows[-1]["rss_mib"] - warm["rss_mib"]
        per_k = growth / max(rows[-1]["step"] - warm["step"], 1) * 1000
        print(f"RSS from step {warm['step']} to {rows[-1]['step']}: {growth:+.1f} MiB ({per_k:+.3f} MiB per 1k steps)")
        if torch.cuda.is_available():
            print(f"CUDA allocated from step {warm['step']} to {rows[-1]['step']}: "
                  f"{rows[-1]['cuda_alloc_mib'] - warm['cuda_alloc_mib']:+.1f} MiB")
    print(f"final: test_acc {results['test_acc']:.4f}, wall {results['wall_time_s']:.1f}s")
    return 0


def _print_row(row: dict, rows: list) -> None:
    prev = rows[-2] if len(rows) > 1 else {"step": 0, "time_s": 0.0}
    rate = (row["step"] - prev["step"]) / max(row["time_s"] - prev["time_s"], 1e-9)
    line = f"{row['step']:>7} {row['time_s']:>8.1f} {rate:>8.0f} {row['rss_mib']:>9.1f}"
    if "cuda_alloc_mib" in row:
        line += f" {row['cuda_alloc_mib']:>10.1f} {row['cuda_reserved_mib']:>10.1f} {row['cuda_peak_mib']:>10.1f}"
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
