#!/usr/bin/env bash
# The GPU check of genssl in one script (about 6-8 minutes on one GPU): the CUDA subset of the tests, training-step
# throughput of every method (fp32 vs bf16, eager), 10 stacked sgan seeds vs 1, a short Fashion-MNIST sgan run with
# its validation curve, a 2-GPU torchrun smoke when there are 2 GPUs, sgan and vae_m2 compiled (fp32 vs bf16), and
# a table of it all at the end.
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine, from anywhere
#   bash benchmarks/gpu_check.sh --dry-run    # anywhere: print the plan, run only the CPU-safe parts (CI runs this)
#
# Environment: PYTHON (default: .venv/bin/python if it exists, else python3); GENSSL_DATA (a folder holding
# fashion-mnist/; else .gpu_data/, shared/data/ and ../shared/data/ in the checkout are tried; without data the
# Fashion-MNIST run and the torchrun smoke are skipped); GPU_CHECK_OUT (where JSON, logs and the curve's PNG go;
# default $OUT/gpu_check when $OUT is set, else /tmp/gpu_check); GPU_CHECK_BUDGET_S (default 420: a section that
# would start later is skipped, so the whole stays within ~8 minutes).
# Every section runs even when an earlier one fails; the exit status is 1 if any section failed.
set -u -o pipefail

DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
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
import os, platform, torch
from genssl.training.device import resolve_precision
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, "
      f"GPUs: {torch.cuda.device_count()}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
      f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
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

# 1. the CUDA subset of the tests (test names containing "cuda"; the dry run only collects them)
CUDA_TESTS=(tests/test_amp_compile.py tests/test_precision.py)
if [ "$DRY" = 1 ]; then
  run tests_cuda_collect 1 60 "$PYTHON" -m pytest -q -p no:cacheprovider --collect-only -k cuda "${CUDA_TESTS[@]}"
  run tests_cuda 0 240 "$PYTHON" -m pytest -q -rs -p no:cacheprovider -k cuda tests
else
  run tests_cuda 0 240 "$PYTHON" -m pytest -q -rs -p no:cacheprovider -k cuda tests
fi

# 2. throughput of every method, fp32 vs bf16, eager (one child process per setting; compiled: section 6)
TP=(benchmarks/throughput.py --devices cuda --steps 30 --warmup 5 --timeout 150)
run throughput_eager 0 240 "$PYTHON" "${TP[@]}" --precisions fp32 bf16 --compile off --json "$OUTDIR/throughput_eager.json"
# 3. 10 stacked seeds vs 1 (sgan, vae_m2)
run stacked_seeds 0 150 "$PYTHON" "${TP[@]}" --methods sgan vae_m2 --precisions fp32 bf16 --seeds 1 10 \
  --json "$OUTDIR/throughput_stacked.json"
if [ "$DRY" = 1 ]; then  # the plumbing of throughput.py and the table, on the CPU: one step of the smallest method
  run throughput_cpu_smoke 1 90 "$PYTHON" benchmarks/throughput.py --devices cpu --methods supervised \
    --precisions fp32 --threads 1 --steps 1 --warmup 1 --json "$OUTDIR/throughput_eager.json"
fi

# 4. a short Fashion-MNIST sgan run (auto precision: bf16 on this GPU if it has it) and its validation curve
DATA=""
for d in "${GENSSL_DATA:-}" "$ROOT/.gpu_data" "$ROOT/shared/data" "$ROOT/../shared/data"; do
  if [ -n "$d" ] && [ -e "$d/fashion-mnist/train-images-idx3-ubyte.gz" ]; then DATA=$d; break; fi
done
RUN="$OUTDIR/sgan_fmnist"
if [ -z "$DATA" ] && [ "$DRY" = 0 ]; then
  skip sgan_fmnist "no Fashion-MNIST: set GENSSL_DATA or carry it in .gpu_data/fashion-mnist"
else
  [ "$DRY" = 1 ] || rm -rf "$RUN"
  run sgan_fmnist 0 180 env GENSSL_DATA="$DATA" "$PYTHON" -m genssl train experiments/fmnist_sgan.yaml --run-dir "$RUN" \
    --train.device=cuda --train.precision=auto --train.steps=2000 --train.eval_every=200 --train.ckpt_every=1000 \
    --train.progress=false
  run sgan_curve 0 60 "$PYTHON" benchmarks/time_to_accuracy.py --runs "$RUN" --labels sgan-2000-steps --curve \
    --thresholds 0.7 0.75 0.8 --plot "$OUTDIR/sgan_curve.png"
fi

# 5. two GPUs: a torchrun smoke (DDP over NCCL, 50 steps)
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

# 6. compiled steps (last: compiling costs the most time, and the budget may skip it)
run throughput_compiled 0 300 "$PYTHON" "${TP[@]}" --methods sgan vae_m2 --precisions fp32 bf16 --compile on \
  --json "$OUTDIR/throughput_compiled.json"

# 7. the table
echo
"$PYTHON" - "$OUTDIR" <<'PY'
import json, os, sys
from pathlib import Path
out = Path(sys.argv[1])
print("## Summary\n")
print("| section | status | seconds |\n|---|---|---:|")
for line in (out / "status.tsv").read_text().splitlines():
    name, status, secs = line.split("\t")
    print(f"| {name} | {status} | {secs} |")
rows = []
for name in ("throughput_eager", "throughput_compiled", "throughput_stacked"):
    f = out / f"{name}.json"
    if f.is_file():
        rows += json.loads(f.read_text())["rows"]
if rows:
    print("\n| method | device | precision | compile | seeds | ms/step | samples/s | peak MiB | x 1 seed | note |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---|")
    one = {(r["method"], r["device"], r["precision"], r["compile"]): r["ms_per_step"] for r in rows
           if "ms_per_step" in r and r["seeds"] == 1}
    for r in rows:
        if "ms_per_step" not in r:
            print(f"| {r['method']} | {r['device']} | {r['precision']} | {'on' if r['compile'] else 'off'} | "
                  f"{r['seeds']} | - | - | - | - | {r.get('error', '')} |")
            continue
        base = one.get((r["method"], r["device"], r["precision"], r["compile"]))
        ratio = f"{r['ms_per_step'] / base:.2f}" if base and r["seeds"] > 1 else "-"
        print(f"| {r['method']} | {r['device']} | {r['precision']} | {'on' if r['compile'] else 'off'} | {r['seeds']} | "
              f"{r['ms_per_step']:.2f} | {r['samples_per_s']:,.0f} | {r['peak_mib']:,.0f} | {ratio} | |")
res = out / "sgan_fmnist" / "results.json"
if res.is_file():
    r = json.loads(res.read_text())
    print(f"\nsgan Fashion-MNIST, {r['steps']} steps, {r['precision']}: best val {100 * r['best_val_acc']:.2f}% "
          f"(step {r['best_step']}), test {100 * r['test_acc']:.2f}%, {r['wall_time_s']:.0f} s on {r['device']}")
print(f"\nload average: {os.getloadavg()[0]:.2f}; files in {out}")
PY
exit "$FAILED"
