"""benchmarks/gpu_check.sh --dry-run: the GPU check's plan prints every section and its CPU-safe parts (the
environment report, collecting the CUDA tests, one throughput step and the summary table) run, on any machine."""

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
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_OUT=str(tmp_path), GENSSL_TEST_THREADS="1")
    env.pop("OUT", None)
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    for planned in ("pytest -q -rs -p no:cacheprovider -k cuda tests", "--devices cuda", "--compile on",
                    "--seeds 1 10", "-m genssl train experiments/fmnist_sgan.yaml", "time_to_accuracy.py",
                    "--nproc_per_node=2"):
        assert planned in text, f"the plan lacks {planned!r}"
    status = dict(line.split("\t")[:2] for line in (tmp_path / "status.tsv").read_text().splitlines())
    assert status["env"] == status["tests_cuda_collect"] == status["throughput_cpu_smoke"] == "ok", status
    assert status["tests_cuda"] == status["throughput_compiled"] == status["torchrun_2gpu"] == "planned", status
    assert "test_cuda_mixed_precision_trains_finite_and_resumes" in (tmp_path / "tests_cuda_collect.log").read_text() \
        or "tests/test_amp_compile.py" in (tmp_path / "tests_cuda_collect.log").read_text()
    assert "## Summary" in text and "| supervised | cpu | fp32 | off | 1 |" in text  # the table, from the smoke's JSON
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
