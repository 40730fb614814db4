"""Training-step throughput: unlabeled samples/s and peak memory of `Method.train_step`, per registered method
at its default config (or a YAML config's), per device, precision and eager/compiled. Prints a table.

    .venv/bin/python benchmarks/throughput.py                               # every method, CPU, fp32 + bf16
    .venv/bin/python benchmarks/throughput.py --methods sgan vae_m2 --precisions fp32 bf16 --compile off on
    .venv/bin/python benchmarks/throughput.py --config experiments/fmnist_sgan.yaml --batch-sizes 100 500
    .venv/bin/python benchmarks/throughput.py --devices cuda                # on a GPU machine

Each setting runs in a fresh child process, so peak memory is that setting's own (CPU: the process's peak
resident set; CUDA: torch.cuda.max_memory_allocated) and one setting's compile caches, thread pools or
allocator state cannot flatter the next. Data are random uint8 images already on the device, as in training
(the loop's batch indexing is included in the time; evaluation and logging are not). Settings interleave
in rounds (--repeats), and the table reports the median, so a burst of load on a shared machine hits every
setting rather than one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


def machine_info() -> dict:
    import torch

    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ---------------------------------------------------------------- one setting, in a child process
def measure(setting: dict) -> dict:
    import resource

    import torch

    from genssl.data.batching import SSLBatcher
    from genssl.config import build_run_config, load_yaml, merge
    from genssl.data.spec import DataSpec
    from genssl.training.stacked import stack_methods
    from genssl.methods import create_method
    from genssl.training.device import autocast

    if setting["threads"]:
        torch.set_num_threads(setting["threads"])
    device = torch.device(setting["device"])
    raw = load_yaml(setting["config"]) if setting["config"] else {"method": {"name": setting["method"]}}
    raw = merge(raw, {"method": setting.get("method_overrides") or {}})
    cfg = build_run_config(raw)
    n, shape, k = 4000, (1, 28, 28), 10
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8).to(device)
    labels = (torch.arange(n) % k).to(device)
    idx = torch.arange(n)
    n_lab = setting["n_labels"]
    spec = DataSpec(shape, k, n_lab, n)
    total = setting["warmup"] + setting["steps"]
    n_seeds = setting["seeds"]
    batchers, methods = [], []
    for seed in range(n_seeds):
        batchers.append(SSLBatcher(images, labels, idx[:n_lab], idx, setting["labeled_batch_size"],
                                   setting["batch_size"], seed))
        torch.manual_seed(seed)
        method = create_method(cfg.method_name, cfg.method, spec).to(device)
        method.setup(10 * total, setting["precision"])  # schedules stay in their first phase
        with autocast(device, setting["precision"]):
            method.initialize(batchers[-1].next())
        methods.append(method)
    if n_seeds > 1:  # all seeds in one stacked step (genssl.training.stacked)
        from genssl.training.stacked import StackedStep, stack_batches

        method = stack_methods(methods)
        method.setup(10 * total, setting["precision"])
        step_fn = StackedStep(method)
        next_batch = lambda: stack_batches([b.next() for b in batchers])  # noqa: E731
    else:
        method, batcher = methods[0], batchers[0]
        step_fn, next_batch = method.train_step, batcher.next
    if setting["compile"]:
        method.compile_networks()
    method.train()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run(steps: int, start: int):
        for s in range(start, start + steps):
            batch = next_batch()
            with autocast(device, setting["precision"]):
                logs = step_fn(batch, s)
        return logs

    t0 = time.perf_counter()
    logs = run(setting["warmup"], 0)
    sync()
    warm_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    logs = run(setting["steps"], setting["warmup"])
    sync()
    dt = time.perf_counter() - t0
    finite = all(bool(torch.isfinite(v).all()) for v in logs.values())
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"samples_per_s": n_seeds * setting["batch_size"] * setting["steps"] / dt,
            "ms_per_step": 1e3 * dt / setting["steps"],
            "peak_mib": peak_mib, "warmup_s": warm_s, "finite": finite, "threads": torch.get_num_threads()}


def run_child(setting: dict, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(setting)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
        return {"error": lines[-1][:120] if lines else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the table
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="*", default=None, help="registered methods (default: all)")
    p.add_argument("--config", default=None, help="a run YAML instead of --methods (its method section is used)")
    p.add_argument("--devices", nargs="*", default=None, help="cpu cuda (default: cpu, plus cuda when available)")
    p.add_argument("--precisions", nargs="*", default=["fp32", "bf16"])
    p.add_argument("--compile", nargs="*", default=["off"], choices=["off", "on"])
    p.add_argument("--batch-sizes", nargs="*", type=int, default=[100], help="unlabeled images per step")
    p.add_argument("--labeled-batch-size", type=int, default=100)
    p.add_argument("--n-labels", type=int, default=100)
    p.add_argument("--seeds", nargs="*", type=int, default=[1],
                   help="seeds trained together in one stacked step (genssl.training.stacked); samples/s counts all seeds")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=1, help="interleaved rounds; the median is reported")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="method config overrides")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return 0

    import torch
    import yaml

    from genssl.registry import list_methods

    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    names = [None] if args.config else (args.methods or list_methods())
    settings = []
    for name in names:
        for device in devices:
            for prec in args.precisions:
                for comp in args.compile:
                    for bs, ns in ((b, n) for b in args.batch_sizes for n in args.seeds):
                        settings.append({"seeds": ns, "method": name, "config": args.config,
                                         "method_overrides": overrides,
                                         "device": device, "precision": prec, "compile": comp == "on",
                                         "batch_size": bs, "labeled_batch_size": args.labeled_batch_size,
                                         "n_labels": args.n_labels, "threads": args.threads, "steps": args.steps,
                                         "warmup": args.warmup})
    info = machine_info()
    print("# genssl training-step throughput")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"settings: steps={args.steps} warmup={args.warmup} repeats={args.repeats} labeled_batch="
          f"{args.labeled_batch_size} threads={args.threads or 'default'} config={args.config or 'method defaults'}"
          + (f" overrides={overrides}" if overrides else ""))
    results: list[list[dict]] = [[] for _ in settings]
    for _ in range(args.repeats):
        for i, s in enumerate(settings):
            results[i].append(run_child(s, args.timeout))
    rows = []
    header = ("| method | device | precision | compile | batch | seeds | unlabeled samples/s | ms/step | peak MiB | "
              "threads | note |")
    print()
    print(header)
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for s, rs in zip(settings, results):
        ok = [r for r in rs if "error" not in r]
        name = s["method"] or Path(s["config"]).stem
        if not ok:
            note = rs[0]["error"]
            print(f"| {name} | {s['device']} | {s['precision']} | {'on' if s['compile'] else 'off'} | "
                  f"{s['batch_size']} | {s['seeds']} | - | - | - | - | {note} |")
            rows.append({**s, "error": note})
            continue
        sps = statistics.median(r["samples_per_s"] for r in ok)
        ms = statistics.median(r["ms_per_step"] for r in ok)
        peak = max(r["peak_mib"] for r in ok)
        note = "" if all(r["finite"] for r in ok) else "non-finite loss"
        if len(ok) > 1:
            note = (note + " " if note else "") + f"range {min(r['samples_per_s'] for r in ok):.0f}-" \
                                                  f"{max(r['samples_per_s'] for r in ok):.0f}"
        print(f"| {name} | {s['device']} | {s['precision']} | {'on' if s['compile'] else 'off'} | {s['batch_size']} | "
              f"{s['seeds']} | {sps:,.0f} | {ms:.1f} | {peak:,.0f} | {ok[0]['threads']} | {note} |")
        rows.append({**s, "samples_per_s": sps, "ms_per_step": ms, "peak_mib": peak, "runs": ok})
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (1 min)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
