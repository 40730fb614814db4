"""Adding a method is one file, one import line and one YAML config (README, "Adding a method"): the
registry-parametrized tests derive what they need from the registry and the declared capabilities
(tests/method_recipes.py, tests/test_learning.py), so a new method is checked with no entry in them.

Shown with a toy method (tests/toy_method.py) that exists only here: a pytest run in a subprocess loads it as
a plugin, so it is registered before the test files are collected, as a new method's import line would
register it, and runs every registry-parametrized check on it. This process's registry stays as it was.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genssl import list_methods

TESTS = Path(__file__).parent
PARAMETRIZED = ["test_learning.py", "test_capabilities.py", "test_smoke.py", "test_exact_resume.py",
                "test_precision.py"]
"""The test files parametrized over list_methods() that train or build every method."""


def test_the_toy_method_is_not_registered_in_this_process():
    assert "toy_gmm" not in list_methods()


def test_a_new_method_is_picked_up_by_every_parametrized_check(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-rA", "-p", "toy_method", "-k", "toy_gmm", "-p", "no:cacheprovider",
           "--basetemp", str(tmp_path / "t"), *(str(TESTS / f) for f in PARAMETRIZED)]
    proc = subprocess.run(cmd, cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"the toy method failed a parametrized check:\n{out[-4000:]}"
    passed = {line.split("::")[1].split("[")[0] for line in out.splitlines()
              if line.startswith("PASSED") and "[toy_gmm]" in line}
    # every test parametrized over the registered methods (or over those with a declared capability)
    expected = {"test_every_method_learns_the_clusters", "test_the_unlabeled_images_lift_accuracy_above_supervised",
                "test_the_unlabeled_batch_changes_the_update", "test_declared_capabilities_work",
                "test_methods_that_claim_stacking_train_stacked", "test_every_method_trains_a_few_steps_and_reloads",
                "test_every_method_resumes_exactly", "test_auto_gives_bf16_only_to_methods_checked_in_bf16"}
    assert expected <= passed, f"not run on the toy method: {sorted(expected - passed)}\n{out[-3000:]}"


def _method_name(path: Path) -> str | None:
    method = (yaml.safe_load(path.read_text()) or {}).get("method")
    return method if isinstance(method, str) else (method or {}).get("name")


@pytest.mark.parametrize("name", list_methods())
def test_every_registered_method_has_a_config_in_experiments(name):
    """The one YAML config a new method brings: a run config of it in experiments/."""
    configs = [p.name for p in (TESTS.parent / "experiments").glob("*.yaml") if _method_name(p) == name]
    assert configs, f"add a config of {name!r} to experiments/ (e.g. experiments/fmnist_{name}.yaml)"
