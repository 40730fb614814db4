#!/usr/bin/env bash
# Accuracy runs that fit in one short GPU lease (run after benchmarks/gpu_check.sh): Fashion-MNIST, 100 labels,
# seeds 0-2, all in parallel on one GPU (each process is launch-bound, so they share it well):
#   sgan        experiments/fmnist_sgan.yaml, seeds stacked in one process, SGAN_STEPS steps
#   m2_levers   experiments/fmnist_vae_m2.yaml + classifier input noise 0.3, weight decay 1e-3, class-mixture
#               prior; seeds stacked, M2_STEPS steps
#   sdgm        experiments/fmnist_sdgm.yaml, one process per seed (grad_clip: no stacking), SDGM_STEPS steps
# Every process is cut at GPU_RUNS_LIMIT_S; a cut run keeps its TensorBoard curve (no test figure). At the end:
# a table of best validation / test accuracy per run (summary.md) and every run's validation curve and results.json
# in curves.json (the TensorBoard folders, with their sample grids, are too large to bring back from a lease).
#
#   SGAN_STEPS=40000 M2_STEPS=20000 SDGM_STEPS=12000 GPU_RUNS_LIMIT_S=270 bash experiments/gpu_runs.sh
#   bash experiments/gpu_runs.sh --dry-run     # print the training commands, one a line, and run nothing
set -u -o pipefail
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: bash experiments/gpu_runs.sh [--dry-run]" >&2; exit 2 ;;
esac
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT" PYTHONUNBUFFERED=1 GENSSL_DATA=${GENSSL_DATA:-$ROOT/.gpu_data}
OUTDIR=${GPU_RUNS_OUT:-${OUT:-/tmp}/gpu_runs}
LIMIT=${GPU_RUNS_LIMIT_S:-270}
R="$OUTDIR/runs"
[ "$DRY" = 1 ] || { rm -rf "$R"; mkdir -p "$R"; }
COMMON=(--train.device="${GPU_RUNS_DEVICE:-cuda}" --train.precision="${GPU_RUNS_PRECISION:-auto}" --train.progress=false --train.threads=1)

launch() {  # launch LOG ARGS...: `genssl ARGS` in the background, cut at LIMIT, into LOG; --dry-run prints ARGS
  local log=$1; shift
  if [ "$DRY" = 1 ]; then echo "$*"; else timeout "$LIMIT" "$PY" -m genssl "$@" > "$log" 2>&1 & fi
}

launch "$R/sgan.log" train experiments/fmnist_sgan.yaml --seeds 0-2 --stack on --run-dir "$R/sgan" \
  --train.steps="${SGAN_STEPS:-40000}" --train.ckpt_every=5000 "${COMMON[@]}"
launch "$R/m2_levers.log" train experiments/fmnist_vae_m2.yaml --seeds 0-2 --stack on --run-dir "$R/m2_levers" \
  --method.cls_input_noise=0.3 --method.cls_weight_decay=0.001 --method.prior=mixture \
  --train.steps="${M2_STEPS:-20000}" --train.eval_every=500 --train.ckpt_every=5000 "${COMMON[@]}"
for s in 0 1 2; do
  launch "$R/sdgm_s$s.log" train experiments/fmnist_sdgm.yaml --seed "$s" --run-dir "$R/sdgm" \
    --train.steps="${SDGM_STEPS:-12000}" --train.eval_every=500 --train.ckpt_every=5000 "${COMMON[@]}"
done
[ "$DRY" = 1 ] && exit 0
wait

"$PY" - "$R" <<'PY' | tee "$OUTDIR/summary.md"
import json, sys
from pathlib import Path
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
root = Path(sys.argv[1])
curves = {}
print("| run | steps done | best val % (step) | test % | wall s | precision |\n|---|---:|---:|---:|---:|---|")
for tb in sorted(root.glob("*/s*/tb")):
    run = tb.parent
    acc = EventAccumulator(str(tb)); acc.Reload()
    vals = acc.Scalars("val/acc") if "val/acc" in acc.Tags()["scalars"] else []
    best = max(vals, key=lambda e: e.value) if vals else None
    res = json.loads((run / "results.json").read_text()) if (run / "results.json").is_file() else {}
    best_text = f"{100 * best.value:.2f} ({best.step})" if best else "-"
    test_text = f"{100 * res['test_acc']:.2f}" if "test_acc" in res else "cut"
    curves[str(run.relative_to(root))] = {"val_acc": [[e.step, e.value] for e in vals], "results": res}
    print(f"| {run.relative_to(root)} | {vals[-1].step if vals else 0} | {best_text} | {test_text} | "
          f"{res.get('wall_time_s', float('nan')):.0f} | {res.get('precision', '-')} |")
(root.parent / "curves.json").write_text(json.dumps(curves, default=str))
PY

