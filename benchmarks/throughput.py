"""Training-step throughput: unlabeled samples/s and peak memory of `Method.train_step`, per registered method
at its default config (or a YAML config's), per device, precision, memory layout and eager/compiled. Prints a table.

    .venv/bin/python benchmarks/throughput.py                               # every method, CPU, fp32 + bf16
    .venv/bin/python benchmarks/throughput.py --methods sgan vae_m2 --precisions fp32 bf16 --compile off on
    .venv/bin/python benchmarks/throughput.py --config experiments/fmnist_sgan.yaml --batch-sizes 100 500
    .venv/bin/python benchmarks/throughput.py --devices cuda                # on a GPU machine
    .venv/bin/python benchmarks/throughput.py --conv --layouts nchw channels_last --threads 1   # the conv rows

`--conv` measures every conv method of the matched-network study (CONV_ENTRIES: supervised and FixMatch with the
classifiers' ConvNet, the SSL-GAN's conv28 and matched discriminators, M2's conv q(y|x)) at its experiment
config's batch sizes; `--layouts` compares NCHW with channels_last (train.channels_last, genssl.nn.layout).

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
def matmul_gflops(dtype_name: str, n: int = 1000, min_time: float = 0.3) -> float:
    """GFLOP per CPU-second of an n x n x n matmul in fp32 or bf16 on the current thread count: the per-core matmul
    limit a step's FLOPs are compared with. CPU time, not wall time, so that other processes' load (which takes
    cores away, not speed from a core) lowers it little; the best of three bursts."""
    import torch

    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        reps, t0 = 0, time.process_time()
        while time.process_time() - t0 < min_time / 3:
            a @ b
            reps += 1
        best = max(best, 2 * n**3 * reps / (time.process_time() - t0) / 1e9)
    return best


CONV_ENTRIES = {
    # row name: (experiment config, method overrides); batch sizes are the config's train section's
    "supervised-conv": ("experiments/fmnist_supervised.yaml", {"arch": "conv", "augment": "strong"}),
    "pseudo_label-conv": ("experiments/fmnist_pseudo_label.yaml", {"arch": "conv"}),
    "self_training-conv": ("experiments/fmnist_self_training.yaml", {"arch": "conv"}),
    "fixmatch-conv": ("experiments/fmnist_fixmatch_conv.yaml", {}),
    "sgan-conv28": ("experiments/fmnist_sgan_conv.yaml", {}),
    "sgan-convnet": ("experiments/fmnist_sgan_convnet.yaml", {}),
    "vae_m2-conv": ("experiments/fmnist_vae_m2.yaml", {"cls_arch": "conv"}),
    "adgm-conv": ("experiments/fmnist_adgm.yaml", {"cls_arch": "conv"}),
}
"""The conv rows (`--conv`): the ConvNet entries of experiments/realistic/matched.yaml (supervised with 64 labeled
images a step as there), pseudo-labeling and self-training with the ConvNet, and the conv28 SSL-GAN."""
LAYOUTS = {"auto": "auto", "nchw": "off", "channels_last": "on"}
"""--layouts names -> train.channels_last."""


def build_step(setting: dict):
    """The training step of `setting` on random uint8 data: (step(s) -> logs, module to compile, device).
    `seeds` > 1 trains that many seeds stacked (genssl.training.stacked.StackedStep), as `genssl train --seeds`."""
    import torch

    from genssl.config import build_run_config, load_yaml, merge
    from genssl.data.batching import SSLBatcher
    from genssl.data.spec import DataSpec
    from genssl.methods import create_method
    from genssl.training.device import autocast, resolve_precision
    from genssl.training.stacked import StackedStep

    from genssl.registry import get_method_class

    if setting["threads"]:
        torch.set_num_threads(setting["threads"])
    device = torch.device(setting["device"])
    raw = load_yaml(setting["config"]) if setting["config"] else {"method": {"name": setting["method"]}}
    raw = merge(raw, {"method": setting.get("method_overrides") or {}})
    cfg = build_run_config(raw)
    precision = resolve_precision(setting["precision"], device, get_method_class(cfg.method_name), cfg.method)[0]
    n, shape, k = 4000, (1, 28, 28), 10
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8).to(device)
    labels = (torch.arange(n) % k).to(device)
    idx = torch.arange(n)
    n_lab = setting["n_labels"]
    spec = DataSpec(shape, k, n_lab, n)
    total = setting["warmup"] + setting["steps"]
    batchers, methods = [], []
    for seed in range(setting["seeds"]):
        batchers.append(SSLBatcher(images, labels, idx[:n_lab], idx, setting["labeled_batch_size"],
                                   setting["batch_size"], seed))
        torch.manual_seed(seed)
        method = create_method(cfg.method_name, cfg.method, spec).to(device)
        method.setup(10 * total, precision, LAYOUTS[setting.get("layout", "auto")])  # schedules: first phase
        with autocast(device, precision):
            method.initialize(batchers[-1].next())
        methods.append(method)
    if len(methods) > 1:
        strategy = StackedStep(methods, 10 * total, precision)
        module = strategy.template

        def step(s: int):
            with autocast(device, precision):
                return strategy([b.next() for b in batchers], s)[0]
    else:
        module, batcher = methods[0], batchers[0]

        def step(s: int):
            batch = batcher.next()
            with autocast(device, precision):
                return module.train_step(batch, s)
    module.train()
    return step, module, device, precision


def measure(setting: dict) -> dict:
    import resource

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    step, module, device, precision = build_step(setting)
    if setting["compile"]:
        module.compile_networks()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run(steps: int, start: int):
        for s in range(start, start + steps):
            logs = step(s)
        return logs

    t0 = time.perf_counter()
    logs = run(setting["warmup"], 0)
    sync()
    warm_s = time.perf_counter() - t0
    flops = 0
    if setting.get("count_flops", True) and not setting["compile"]:  # compiled graphs hide matmuls from the counter
        with FlopCounterMode(display=False) as counter:
            run(1, setting["warmup"])
        flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0, c0 = time.perf_counter(), time.process_time()
    logs = run(setting["steps"], setting["warmup"] + 1)
    sync()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    finite = all(bool(torch.isfinite(v).all()) for v in logs.values())
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
        limits = {}
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        limits = {p: matmul_gflops(p) for p in ("fp32", "bf16")  # same process, threads and moment as the step
                  if setting.get("count_flops", True)}
    return {"precision": precision, "channels_last": module.channels_last,
            "samples_per_s": setting["seeds"] * setting["batch_size"] * setting["steps"] / dt,
            "ms_per_step": 1e3 * dt / setting["steps"],
            # CPU time of all the process's threads per step: on a shared machine it counts the work done, not the
            # waits for a core, so it is the steadier figure for A/B comparisons (wall = cpu / threads when idle)
            "cpu_ms_per_step": 1e3 * cpu / setting["steps"], "gflop_per_step": flops / 1e9,
            "matmul_gflops": limits, "peak_mib": peak_mib, "warmup_s": warm_s, "finite": finite,
            "threads": torch.get_num_threads()}


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
    p.add_argument("--layouts", nargs="*", default=["auto"], choices=list(LAYOUTS),
                   help="conv memory layout (train.channels_last): auto (channels_last for conv nets), nchw, "
                        "channels_last")
    p.add_argument("--conv", action="store_true",
                   help="the conv rows: every entry of CONV_ENTRIES at its config's batch sizes (not --methods, "
                        "--config)")
    p.add_argument("--batch-sizes", nargs="*", type=int, default=[100], help="unlabeled images per step")
    p.add_argument("--labeled-batch-size", type=int, default=100)
    p.add_argument("--n-labels", type=int, default=100)
    p.add_argument("--seeds", nargs="*", type=int, default=[1],
                   help="seeds trained together in one stacked step (genssl.training.stacked); samples/s counts all seeds")
    p.add_argument("--threads", nargs="*", type=int, default=[0], help="torch threads (0: torch's default)")
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

    from genssl.config import load_yaml
    from genssl.registry import list_methods

    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.conv:  # (row name, config, method overrides, [(batch, labeled batch)])
        root = Path(__file__).resolve().parent.parent
        entries = []
        for label, (config, extra) in CONV_ENTRIES.items():
            t = load_yaml(root / config).get("train", {})
            lbs = 64 if label == "supervised-conv" else t.get("labeled_batch_size", args.labeled_batch_size)
            entries.append((label, str(root / config), {**extra, **overrides},
                            [(t.get("batch_size", args.batch_sizes[0]), lbs)]))
    else:
        names = [None] if args.config else (args.methods or list_methods())
        entries = [(name, args.config, overrides, [(b, args.labeled_batch_size) for b in args.batch_sizes])
                   for name in names]
    settings = []
    for label, config, extra, sizes in entries:
        for device in devices:
            for prec in args.precisions:
                for layout in args.layouts:
                    for comp in args.compile:
                        for (bs, lbs), th, ns in ((b, t, n) for b in sizes for t in args.threads for n in args.seeds):
                            settings.append({"seeds": ns, "method": None if config else label, "config": config,
                                             "label": label, "method_overrides": extra,
                                             "device": device, "precision": prec, "layout": layout,
                                             "compile": comp == "on", "batch_size": bs, "labeled_batch_size": lbs,
                                             "n_labels": args.n_labels, "threads": th, "steps": args.steps,
                                             "warmup": args.warmup})
    info = machine_info()
    print("# genssl training-step throughput")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"settings: steps={args.steps} warmup={args.warmup} repeats={args.repeats} labeled_batch="
          f"{'per config' if args.conv else args.labeled_batch_size} threads={args.threads} "
          f"config={'CONV_ENTRIES' if args.conv else args.config or 'method defaults'}"
          + (f" overrides={overrides}" if overrides else ""))
    results: list[list[dict]] = [[] for _ in settings]
    for _ in range(args.repeats):
        for i, s in enumerate(settings):
            results[i].append(run_child(s, args.timeout))
    rows = []
    print()
    print("| method | device | precision | layout | compile | threads | batch (unl. / lab.) | seeds | x 1 seed (wall / "
          "CPU) | unlabeled samples/s | ms/step | CPU ms/step | GFLOP/step | GFLOP per CPU-s | % fp32 matmul | "
          "% bf16 matmul | peak MiB | note |")
    print("|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    one_seed = {}  # (ms/step, CPU ms/step) of the 1-seed setting with the same everything else
    for s, rs in zip(settings, results):
        ok = [r for r in rs if "error" not in r]
        key = json.dumps({k: v for k, v in s.items() if k != "seeds"}, sort_keys=True)
        if s["seeds"] == 1 and ok:
            one_seed[key] = (statistics.median(r["ms_per_step"] for r in ok),
                             statistics.median(r["cpu_ms_per_step"] for r in ok))
    for s, rs in zip(settings, results):
        ok = [r for r in rs if "error" not in r]
        name = s.get("label") or s["method"] or Path(s["config"]).stem
        layout = ("channels_last" if ok[0]["channels_last"] else "nchw") if ok else s["layout"]
        lead = f"| {name} | {s['device']} | {s['precision']} | {layout} | {'on' if s['compile'] else 'off'} | " \
               f"{s['threads'] or '-'} | {s['batch_size']} / {s['labeled_batch_size']} | {s['seeds']} |"
        if not ok:
            note = rs[0]["error"]
            print(f"{lead} - | - | - | - | - | - | - | - | - | {note} |")
            rows.append({**s, "error": note})
            continue
        sps = statistics.median(r["samples_per_s"] for r in ok)
        ms = statistics.median(r["ms_per_step"] for r in ok)
        cpu_ms = statistics.median(r["cpu_ms_per_step"] for r in ok)
        peak = max(r["peak_mib"] for r in ok)
        gflop = ok[0]["gflop_per_step"]
        rate = gflop / (cpu_ms / 1e3)  # per CPU-second, as the matmul limits
        limits = {p: statistics.median(r["matmul_gflops"][p] for r in ok) for p in ok[0]["matmul_gflops"]}
        own = ok[0].get("precision", s["precision"])
        share = lambda lim: f"{100 * rate / lim:.0f}%" if gflop and lim else "-"  # noqa: E731
        base = one_seed.get(json.dumps({k: v for k, v in s.items() if k != "seeds"}, sort_keys=True))
        ratio = f"{ms / base[0]:.2f} / {cpu_ms / base[1]:.2f}" if base and s["seeds"] > 1 else "-"
        note = "" if all(r["finite"] for r in ok) else "non-finite loss"
        if len(ok) > 1:
            note = (note + " " if note else "") + f"ms range {min(r['ms_per_step'] for r in ok):.1f}-" \
                                                  f"{max(r['ms_per_step'] for r in ok):.1f}"
        if own != s["precision"]:
            note = (note + " " if note else "") + f"{s['precision']} -> {own}"
        print(f"{lead} {ratio} | {sps:,.0f} | {ms:.1f} | {cpu_ms:.1f} | {gflop:.2f} | {rate:.0f} | "
              f"{share(limits.get('fp32'))} | {share(limits.get('bf16'))} | {peak:,.0f} | {note} |")
        rows.append({**s, "samples_per_s": sps, "ms_per_step": ms, "cpu_ms_per_step": cpu_ms, "peak_mib": peak, "gflop_per_step": gflop,
                     "matmul_gflops": limits, "runs": ok})
    lims = [(s, r["matmul_gflops"]) for s, rs in zip(settings, results) for r in rs if r.get("matmul_gflops")]
    for th in sorted({s["threads"] for s, _ in lims}):
        got = {p: statistics.median(m[p] for s, m in lims if s["threads"] == th) for p in ("fp32", "bf16")}
        print(f"\n1000^3 matmul on {th or 'default'} thread(s), measured in the same processes: "
              f"fp32 {got['fp32']:.0f}, bf16 {got['bf16']:.0f} GFLOP per CPU-second")
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (1 min)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
