#!/usr/bin/env bash
# The GPU check of genssl in one script (about 8 minutes on one GPU), for issue 33's figures: eager vs captured
# (CUDA graph) ms/step for every method, the CUDA tests, one full-length sgan run and one fixmatch_conv run with
# their test accuracy, the time of experiments/table_fmnist.yaml extrapolated from every entry at one label count
# with its seeds, 10 stacked seeds vs 1, a 2-GPU torchrun smoke when there are 2 GPUs, and one table of it all for
# benchmarks/README.md at the end.
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine, from anywhere
#   bash benchmarks/gpu_check.sh --dry-run    # anywhere: print the plan, run only the CPU-safe parts (CI runs this)
#
# Environment: PYTHON (default: .venv/bin/python if it exists, else python3); GENSSL_DATA (a folder holding
# fashion-mnist/; else .gpu_data/, shared/data/ and ../shared/data/ in the checkout are tried; without data the
# Fashion-MNIST runs, the table and the torchrun smoke are skipped); GPU_CHECK_OUT (where JSON, logs and the
# curve's PNG go; default $OUT/gpu_check when $OUT is set, else /tmp/gpu_check); GPU_CHECK_BUDGET_S (default 420:
# a section that would start later is skipped, so the whole stays within ~8 minutes); TABLE_STEPS (default 150:
# steps of each run of the table subset); PACK_SEEDS (default auto: the table subset's --pack-seeds).
# Every section runs even when an earlier one fails; the exit status is 1 if any section failed.
set -u -o pipefail

DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUTDIR=${GPU_CHECK_OUT:-${OUT:+$OUT/gpu_check}}
OUTDIR=${OUTDIR:-/tmp/gpu_check}
BUDGET=${GPU_CHECK_BUDGET_S:-420}
mkdir -p "$OUTDIR"
STATUS="$OUTDIR/status.tsv"
: > "$STATUS"
FAILED=0

# run NAME CPU_SAFE TIMEOUT_S CMD...: run a section (or, in a dry run, print it and run it only if CPU_SAFE=1),
# logging to $OUTDIR/NAME.log and recording "name<TAB>status<TAB>seconds" in status.tsv.
run() {
  local name=$1 cpu_safe=$2 limit=$3; shift 3
  echo
  echo "== $name: $*"
  if [ "$DRY" = 1 ] && [ "$cpu_safe" != 1 ]; then
    printf '%s\tplanned\t-\n' "$name" >> "$STATUS"; return 0
  fi
  if [ "$DRY" = 0 ] && [ "$SECONDS" -ge "$BUDGET" ]; then
    echo "   skipped: ${SECONDS}s spent of the ${BUDGET}s budget"
    printf '%s\tskipped (budget)\t-\n' "$name" >> "$STATUS"; return 0
  fi
  local t0=$SECONDS rc left=$((BUDGET + 60 - SECONDS))
  if [ "$DRY" = 0 ] && [ "$limit" -gt "$left" ]; then limit=$(( left > 30 ? left : 30 )); fi  # end by ~budget+60s
  timeout "$limit" "$@" 2>&1 | tee "$OUTDIR/$name.log"
  rc=${PIPESTATUS[0]}
  local status=ok
  if [ "$rc" = 124 ]; then status="timed out (${limit}s)"; elif [ "$rc" != 0 ]; then status="failed (exit $rc)"; fi
  [ "$status" = ok ] || FAILED=1
  printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" >> "$STATUS"
}

skip() {  # skip NAME REASON
  echo; echo "== $1: skipped: $2"
  printf '%s\tskipped (%s)\t-\n' "$1" "$2" >> "$STATUS"
}

echo "# genssl GPU check ($([ "$DRY" = 1 ] && echo 'dry run: plan + CPU-safe parts' || echo full)), output in $OUTDIR"

run env 1 60 "$PYTHON" - <<'PY'
import os, platform, subprocess, torch
from genssl.training.device import resolve_precision
try:
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                            text=True, timeout=20).stdout.split("\n")[0].strip() or "unknown"
except (OSError, subprocess.SubprocessError):
    driver = "no nvidia-smi"
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), driver {driver}, "
      f"CUDA available: {torch.cuda.is_available()}, GPUs: {torch.cuda.device_count()}, CPU capability "
      f"{torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, sm {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB; auto precision:",
          resolve_precision("auto", torch.device("cuda", i)))
print("cpu auto precision:", resolve_precision("auto", torch.device("cpu")))
PY

N_GPU=0
if [ "$DRY" = 0 ]; then
  N_GPU=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
  if [ "$N_GPU" = 0 ]; then echo "no CUDA device: run with --dry-run on a machine without a GPU" >&2; exit 1; fi
fi

# 1. eager vs captured step of every method (the issue's targets: sgan <= 1.5 ms, vae_m2 <= 1.0 ms in fp32)
run captured_step 0 180 "$PYTHON" benchmarks/captured_step.py --device cuda --steps 200 --warmup 10 \
  --json "$OUTDIR/captured_step.json"
if [ "$DRY" = 1 ]; then  # the plumbing on the CPU: 2 eager steps of supervised, the captured column marked CUDA-only
  run captured_cpu_smoke 1 120 "$PYTHON" benchmarks/captured_step.py --dry-run --json "$OUTDIR/captured_step.json"
fi

# 2. the CUDA tests (test names containing "cuda": tests/test_captured.py's graph against the eager step over 100
#    steps and a captured run resumed, tests/test_amp_compile.py's, those fixed since the H200 run; the dry run
#    only collects them)
CUDA_TESTS=(tests/test_captured.py tests/test_amp_compile.py tests/test_precision.py)
if [ "$DRY" = 1 ]; then
  run tests_cuda_collect 1 90 "$PYTHON" -m pytest -q -p no:cacheprovider --collect-only -k cuda "${CUDA_TESTS[@]}"
fi
run tests_cuda 0 240 "$PYTHON" -m pytest -q -rs -p no:cacheprovider -k cuda tests

# 3. full-length runs with their test accuracy: sgan (20,000 steps, captured) and fixmatch_conv (its 1,200 steps)
DATA=""
for d in "${GENSSL_DATA:-}" "$ROOT/.gpu_data" "$ROOT/shared/data" "$ROOT/../shared/data"; do
  if [ -n "$d" ] && [ -e "$d/fashion-mnist/train-images-idx3-ubyte.gz" ]; then DATA=$d; break; fi
done
RUN="$OUTDIR/sgan_fmnist"
if [ -z "$DATA" ] && [ "$DRY" = 0 ]; then
  skip sgan_fmnist "no Fashion-MNIST: set GENSSL_DATA or carry it in .gpu_data/fashion-mnist"
  skip fixmatch_conv_fmnist "no Fashion-MNIST"
  skip table_fmnist_subset "no Fashion-MNIST"
else
  [ "$DRY" = 1 ] || rm -rf "$RUN" "$OUTDIR/fixmatch_conv_fmnist"
  run sgan_fmnist 0 240 env GENSSL_DATA="$DATA" "$PYTHON" -m genssl train experiments/fmnist_sgan.yaml --run-dir "$RUN" \
    --train.device=cuda --train.precision=fp32 --train.cuda_graph=auto --train.progress=false
  run sgan_curve 0 60 "$PYTHON" benchmarks/time_to_accuracy.py --runs "$RUN" --labels sgan-20000-steps --curve \
    --thresholds 0.7 0.75 0.8 --plot "$OUTDIR/sgan_curve.png"
  run fixmatch_conv_fmnist 0 150 env GENSSL_DATA="$DATA" "$PYTHON" -m genssl train experiments/fmnist_fixmatch_conv.yaml \
    --run-dir "$OUTDIR/fixmatch_conv_fmnist" --train.device=cuda --train.precision=fp32 --train.cuda_graph=auto \
    --train.progress=false
  # 4. the whole table's time: every entry at 100 labels with its 3 seeds, TABLE_STEPS steps each, extrapolated
  [ "$DRY" = 1 ] || rm -rf "$OUTDIR/table_subset"
  run table_fmnist_subset 0 240 env GENSSL_DATA="$DATA" "$PYTHON" benchmarks/table_time.py \
    --steps "${TABLE_STEPS:-150}" --pack-seeds "${PACK_SEEDS:-auto}" --out "$OUTDIR/table_subset" \
    --json "$OUTDIR/table_time.json"
fi
if [ "$DRY" = 1 ]; then  # the subset grid and the schedules it extrapolates to, on any machine
  run table_plan 1 120 "$PYTHON" benchmarks/table_time.py --dry-run --out "$OUTDIR/table_plan"
fi

# 5. 10 stacked seeds vs 1 (sgan, vae_m2; eager: the vmapped step is not captured)
TP=(benchmarks/throughput.py --devices cuda --steps 30 --warmup 5 --timeout 150)
run stacked_seeds 0 150 "$PYTHON" "${TP[@]}" --methods sgan vae_m2 --precisions fp32 --seeds 1 10 \
  --json "$OUTDIR/throughput_stacked.json"
if [ "$DRY" = 1 ]; then  # the plumbing of throughput.py and its ratio, on the CPU: one step of the smallest method
  run throughput_cpu_smoke 1 120 "$PYTHON" benchmarks/throughput.py --devices cpu --methods supervised \
    --precisions fp32 --threads 1 --steps 1 --warmup 1 --seeds 1 2 --json "$OUTDIR/throughput_stacked.json"
fi

# 6. two GPUs: a torchrun smoke (DDP over NCCL, 50 steps)
if [ "$DRY" = 1 ] || [ "$N_GPU" -ge 2 ]; then
  if [ -z "$DATA" ] && [ "$DRY" = 0 ]; then
    skip torchrun_2gpu "no Fashion-MNIST for the smoke run"
  else
    [ "$DRY" = 1 ] || rm -rf "$OUTDIR/ddp"
    run torchrun_2gpu 0 120 env GENSSL_DATA="$DATA" "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=2 \
      -m genssl train experiments/fmnist_sgan.yaml --run-dir "$OUTDIR/ddp" --train.device=cuda --train.steps=50 \
      --train.eval_every=50 --train.ckpt_every=50 --train.progress=false
  fi
else
  skip torchrun_2gpu "$N_GPU GPU(s)"
fi

# 7. the table for benchmarks/README.md
echo
"$PYTHON" - "$OUTDIR" <<'PY'
import json, os, re, sys
from pathlib import Path
out = Path(sys.argv[1])
print("## Summary\n")
print("| section | status | seconds |\n|---|---|---:|")
for line in (out / "status.tsv").read_text().splitlines():
    name, status, secs = line.split("\t")
    print(f"| {name} | {status} | {secs} |")

def load(name):
    f = out / name
    return json.loads(f.read_text()) if f.is_file() else None

env = (out / "env.log").read_text().strip().splitlines() if (out / "env.log").is_file() else []
print("\n## For benchmarks/README.md\n")
print("; ".join(env[:3]) + "\n")
rows = []  # (measurement, value, detail)
cap = load("captured_step.json")
for r in (cap or {}).get("rows", []):
    if "error" in r:
        rows.append((f"{r['method']} step", "error", r["error"]))
        continue
    if "captured_ms" in r:
        value = f"{r['eager_ms']:.2f} -> {r['captured_ms']:.2f} ms ({r['speedup']:.1f}x)"
        detail = f"eager -> captured, fp32, {r['device']}; max rel diff of the losses {r['max_rel_diff']:.1e} over {r['compared_steps']} steps"
    else:
        value, detail = f"{r['eager_ms']:.2f} ms eager", f"{r['device']}; {r.get('note', '')}"
    rows.append((f"{r['method']} step", value, detail))
st = load("throughput_stacked.json")
if st:
    one = {(r["method"], r["device"], r["precision"]): r["ms_per_step"] for r in st["rows"]
           if "ms_per_step" in r and r["seeds"] == 1}
    for r in st["rows"]:
        if r.get("seeds", 1) > 1 and "ms_per_step" in r:
            base = one.get((r["method"], r["device"], r["precision"]))
            ratio = f" ({r['ms_per_step'] / base:.2f}x one seed)" if base else ""
            rows.append((f"{r['method']} x{r['seeds']} stacked seeds", f"{r['ms_per_step']:.2f} ms{ratio}",
                         f"eager, {r['precision']}, {r['device']}"))
for name, label in (("sgan_fmnist", "sgan Fashion-MNIST run"), ("fixmatch_conv_fmnist", "fixmatch_conv Fashion-MNIST run")):
    res = load(f"{name}/results.json")
    if res:
        rows.append((f"{label}, {res['steps']} steps, 100 labels", f"test {100 * res['test_acc']:.2f}%",
                     f"best val {100 * res['best_val_acc']:.2f}% (step {res['best_step']}), {res['wall_time_s']:.0f} s, "
                     f"{res['precision']}, step {res.get('cuda_graph')} ({res.get('cuda_graph_reason')}), {res['device']}"))
tt = load("table_time.json")
if tt:
    rows.append(("experiments/table_fmnist.yaml, whole table", f"{tt['table_s'] / 60:.1f} min (extrapolated)",
                 f"from every entry at one label count, its seeds, {tt['steps']} steps each, measured in "
                 f"{tt['measured_s']:.0f} s, --pack-seeds {tt['pack_seeds']}; per-entry arithmetic in table_fmnist_subset.log"))
log = out / "tests_cuda.log"
if log.is_file():
    tail = [l for l in log.read_text().splitlines() if re.search(r"\d+ (passed|failed|skipped)", l)]
    if tail:
        rows.append(("CUDA tests (pytest -k cuda tests)", tail[-1].strip("= "), "tests_cuda.log"))
if rows:
    print("| measurement | value | detail |\n|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
print(f"\nload average: {os.getloadavg()[0]:.2f}; files in {out}")
PY
exit "$FAILED"
