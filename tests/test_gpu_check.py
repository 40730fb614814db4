"""benchmarks/gpu_check.sh --dry-run: the GPU check's plan prints every section and its CPU-safe parts (the
environment report, collecting the CUDA tests, the eager column of the captured-step benchmark, one stacked-seeds
throughput step, the table-time plan, and the table for benchmarks/README.md) run, on any machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_check_dry_run(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_OUT=str(tmp_path), GENSSL_TEST_THREADS="1",
               OMP_NUM_THREADS="1")
    env.pop("OUT", None)
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    for planned in ("pytest -q -rs -p no:cacheprovider -k cuda tests", "benchmarks/captured_step.py --device cuda",
                    "--devices cuda", "--seeds 1 10", "-m genssl train experiments/fmnist_sgan.yaml",
                    "--train.cuda_graph=auto", "-m genssl train experiments/fmnist_fixmatch_conv.yaml",
                    "benchmarks/table_time.py --steps", "time_to_accuracy.py", "--nproc_per_node=2"):
        assert planned in text, f"the plan lacks {planned!r}"
    status = dict(line.split("\t")[:2] for line in (tmp_path / "status.tsv").read_text().splitlines())
    cpu_safe = ("env", "captured_cpu_smoke", "tests_cuda_collect", "table_plan", "throughput_cpu_smoke")
    assert all(status[k] == "ok" for k in cpu_safe), status
    gpu_only = ("captured_step", "tests_cuda", "sgan_fmnist", "fixmatch_conv_fmnist", "table_fmnist_subset",
                "stacked_seeds", "torchrun_2gpu")
    assert all(status[k] == "planned" for k in gpu_only), status
    collected = (tmp_path / "tests_cuda_collect.log").read_text()
    assert "test_cuda_captured_step_follows_the_eager_step" in collected or "tests/test_captured.py" in collected
    assert "a captured step needs CUDA" in (tmp_path / "captured_cpu_smoke.log").read_text()
    assert "fixmatch_conv: 100 labels: 3 runs x 1200 steps" in (tmp_path / "table_plan.log").read_text()
    # the table for benchmarks/README.md, from the smokes' JSON
    assert "## Summary" in text and "## For benchmarks/README.md" in text
    assert "| supervised step | " in text and "captured needs CUDA" in text
    assert "| supervised x2 stacked seeds | " in text and "x one seed) |" in text  # both throughput.py children ran
    assert not (tmp_path / "sgan_fmnist").exists()  # nothing trained in a dry run


def test_gpu_check_rejects_unknown_arguments():
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--bogus"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2 and "usage" in out.stderr


def test_gpu_runs_script_parses_and_names_existing_configs():
    script = ROOT / "experiments" / "gpu_runs.sh"
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    configs = [w for w in script.read_text().split() if w.startswith("experiments/") and w.endswith(".yaml")]
    assert configs, "gpu_runs.sh trains no config"
    missing = [c for c in configs if not (ROOT / c).is_file()]
    assert not missing, f"gpu_runs.sh names configs that do not exist: {missing}"
