"""Classify image files with a trained run: `genssl predict RUN_DIR PATH... --out preds.csv [--top-k 3]`.

The model is rebuilt from the run's best checkpoint alone (its resolved config and data spec; no dataset is
read). Every file is decoded as the run's training images were (genssl.data.folder.decode_image: the run's
channel count and image size), then classified in batches on the run's device. Each row names the file, the
predicted class, its probability, and the top-k classes with theirs, then the gate's three columns:

    path,class,probability,class_2,probability_2,class_3,probability_3,typicality,atypical,atypical_by
    shirts/0001.png,Shirt,0.8123,T-shirt/top,0.1022,Pullover,0.0511,-412.7,0,
    noise.png,Bag,0.9998,Sandal,0.0001,Shirt,0.0001,-1893.2,1,feature_density+bits

The gate (on by default; genssl.methods.detectors): `typicality` is the run's best detector's score of how typical
the image is of its training data (higher = more typical: the ELBO for an M1 with a Gaussian decoder, else the log
density of a class-conditional Gaussian on the classifier's features, fitted on the labeled and the confidently
pseudo-labeled unlabeled images; experiments/typicality.md), and `atypical` is 1
where that score is below the `--atypical-quantile` (0.01) conformal cut of the run's validation images' scores
(genssl.methods.typicality.conformal_threshold: it flags that share of in-distribution images in expectation, or
1 / (n_val + 1) where the validation images are fewer than 1 / 0.01 - 1; predict prints which), or
where the image's input statistics (pixel mean, pixel std, compressed size) fall outside the range of the
validation images' and the unlabeled pool's (genssl.methods.detectors.range_images); `atypical_by` names what
flagged it. The validation scores and statistics come from the run's gate.pt, written at the end of training, so
no dataset is read; a run trained before gates says so and predicts without the columns.

- `--flag-atypical[=KIND]` flags by one detector alone (columns `typicality` and `atypical`): `model` (the
  default: the method's own generative score, the ELBO for the VAE family, log D(x) for the SSL-GAN; methods
  without one refuse), `confidence` / `max_softmax`, `energy`, `feature_density`, `elbo_complexity`. A run without
  gate.pt reads its validation images from its dataset (split.pt names them), as `genssl eval` does.
- `--gate OTHER_RUN` scores the images with another run's detector (its default gate, or its KIND): e.g. a FixMatch
  run's predictions gated by an M1 run's complexity-corrected ELBO.
- `--no-gate` turns the gate off (no typicality columns).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from genssl.config import RunConfig, build_run_config
from genssl.data.batching import to_float
from genssl.data.datasets import ImageData
from genssl.data.folder import IMAGE_EXTENSIONS, decode_files, list_images
from genssl.data.source import BUILTIN_CLASS_NAMES, config_image_shape, load_train_test, task_data
from genssl.data.spec import DataSpec
from genssl.data.split import Split
from genssl.fileio import CheckpointError, atomic_write_text
from genssl.encoders.density import GATE_FILE, FeatureDensity, gate_density, read_gate
from genssl.methods.base import Method
from genssl.methods.detectors import (
    DETECTORS,
    InputRange,
    default_detector,
    detector_scores,
    fit_gate,
    gate_input_range,
    gate_cut,
    range_pool_draw,
    resolve_kind,
    score_name,
)
from genssl.methods.typicality import flag_atypical
from genssl.runs.run_dir import RunDir
from genssl.training.device import resolve_device
from genssl.training.monitor import progress

FORMATS = ("csv", "json")


@dataclass
class Predictor:
    """A trained run's model in eval mode, with what it needs to read and name images."""
    method: Method
    cfg: RunConfig
    spec: DataSpec
    class_names: list[str]
    device: torch.device
    step: int = -1  # the checkpoint's training step

    @torch.no_grad()
    def probabilities(self, images_u8: torch.Tensor, batch_size: int | None = None,
                      show_progress: bool = False) -> torch.Tensor:
        """(N, C, H, W) uint8 images of the run's shape -> (N, K) class probabilities (on the CPU)."""
        if tuple(images_u8.shape[1:]) != tuple(self.spec.image_shape):
            raise ValueError(f"images of shape {tuple(images_u8.shape[1:])}, but the run's model takes "
                             f"{tuple(self.spec.image_shape)}")
        batch_size = batch_size or self.cfg.train.eval_batch_size
        out = []
        bar = progress(images_u8.shape[0], 0, "predicting", show_progress)
        for xb in images_u8.split(batch_size):  # fp32 whatever the run trained in: exact, and fast enough here
            logits = self.method.predict(to_float(xb.to(self.device)))
            out.append(torch.softmax(logits.float(), dim=1).cpu())
            bar.update(xb.shape[0])
        bar.close()
        return torch.cat(out) if out else torch.zeros(0, self.spec.num_classes)


def load_predictor(run_dir: str | Path, device: str | None = None, checkpoint: str = RunDir.BEST) -> Predictor:
    """The run's model from `checkpoint` alone, on `device` (default: the run's train.device; a CUDA run
    predicts on the CPU where CUDA is missing)."""
    run = RunDir(run_dir)
    if not run.has(checkpoint):
        raise FileNotFoundError(f"{run.path / checkpoint} not found: genssl predict needs a run folder with a "
                                f"{checkpoint} (written at the run's first evaluation)")
    ckpt = run.load_checkpoint(checkpoint)
    spec = None if "data_spec" in ckpt else _fallback_spec(run, ckpt)
    method, cfg, ckpt = run.load_method(checkpoint, device="cpu", spec=spec)
    spec = method.spec
    names = saved_class_names(ckpt, cfg, spec.num_classes)
    if device is None:
        device = cfg.train.device
        if device != "auto" and torch.device(device).type == "cuda" and not torch.cuda.is_available():
            device = "cpu"
    dev = resolve_device(device)
    return Predictor(method.to(dev).eval(), cfg, spec, names, dev, int(ckpt.get("step", -1)))


def saved_class_names(ckpt: dict, cfg: RunConfig, num_classes: int) -> list[str]:
    """The class names a checkpoint carries (`class_names`, or inside its data spec); else a built-in dataset's
    documented names; else the class indices as text."""
    for names in (ckpt.get("class_names"), (ckpt.get("data_spec") or {}).get("class_names"),
                  BUILTIN_CLASS_NAMES.get(cfg.data.dataset)):
        if names is not None and len(names) == num_classes:
            return [str(n) for n in names]
    return [str(k) for k in range(num_classes)]


def _fallback_spec(run: RunDir, ckpt: dict) -> DataSpec:
    """A data spec for a checkpoint written before checkpoints carried one: the image shape from the config,
    the class count from the saved class names or the built-in dataset, the pool sizes from split.pt."""
    data = (build_run_config(ckpt["config"]) if "config" in ckpt else run.read_config()).data
    shape = config_image_shape(data)
    names = ckpt.get("class_names") or BUILTIN_CLASS_NAMES.get(data.dataset)
    if shape is None or names is None:
        raise CheckpointError(f"{run.path / RunDir.BEST}: this checkpoint carries no data spec and its dataset "
                              f"{data.dataset!r} does not say the image shape and class count; retrain the run "
                              f"with this genssl (its checkpoints carry them)")
    n_lab = n_unl = 1
    if run.has(RunDir.SPLIT):
        split = Split.load(run / RunDir.SPLIT)
        n_lab, n_unl = len(split.labeled), len(split.unlabeled)
    return DataSpec(tuple(shape), len(names), n_lab, n_unl)


@dataclass
class AtypicalFlag:
    """How predict flags an image: the score of detector `kind` (genssl.methods.detectors; named `score`) below
    `threshold`, the conformal cut of the scores of the gate run's `n_val` validation images at `quantile`, which
    flags an `expected_rate` share of in-distribution images (genssl.methods.typicality.conformal_threshold: at
    least 1 / (n_val + 1)); with `input_range` (the
    default gate) also an input statistic outside the validation and pool images' range. `gate` is the run whose detector
    scores, when it is not the predicting run (--gate; `source` its folder); `density` its feature density."""
    kind: str
    score: str
    threshold: float
    quantile: float
    n_val: int
    input_range: InputRange | None = None
    density: FeatureDensity | None = None
    gate: Predictor | None = None
    source: str | None = None
    expected_rate: float | None = None

    def describe(self) -> str:
        of = f"run {self.source}'s" if self.source else "the run's"
        text = (f"atypical = {self.score} below {self.threshold:.7g}, the conformal {self.quantile:g} cut of {of} "
                f"{self.n_val} validation images' scores")
        if self.expected_rate is not None:
            text += f" (expected to flag {100 * self.expected_rate:.1f}% of in-distribution images"
            if self.expected_rate > self.quantile * (1 + 1e-9):
                text += f": {self.n_val} images cannot cut lower than 1/{self.n_val + 1}"
            text += ")"
        if self.input_range is not None:
            text += f", or an input statistic outside its range ({self.input_range.describe()})"
        return text

    def check(self, images_u8: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
        """(typicality (N,), atypical (N,) bool, and with `input_range` what flagged each image: "" or names
        joined by "+") of images decoded for the gate run."""
        gate = self.gate
        scores = detector_scores(self.kind, gate.method, images_u8, self.density, batch_size)
        low = flag_atypical(scores, self.threshold)
        if self.input_range is None:
            return scores, low, None
        outside = self.input_range.outside(images_u8)
        atypical = low.clone()
        for flags in outside.values():
            atypical |= flags
        by = ["+".join(([self.kind] if low[i] else []) + [k for k, f in outside.items() if f[i]])
              for i in range(len(scores))]
        return scores, atypical, by


def run_images(run_dir: str | Path, cfg: RunConfig, data: tuple[ImageData, ImageData] | None = None
               ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """((labeled images, labels), (validation images, labels), the pool images the gate's input range reads
    (genssl.methods.detectors.range_pool_draw)) of a run, uint8 (N, C, H, W) and (N,): its dataset read as
    `genssl eval` reads it (genssl.training.evaluate.load_run), or `data` = (train, test) for runs trained on
    in-memory data, indexed by the run's split.pt."""
    run = RunDir(run_dir)
    if not run.has(RunDir.SPLIT):
        raise FileNotFoundError(f"{run.path / RunDir.SPLIT} not found: the atypical threshold is chosen on the "
                                f"run's validation images, which split.pt names")
    train, _ = task_data(*(data if data is not None else load_train_test(cfg.data, progress=False)), cfg.data)
    split = run.read_split()
    split.check_against(len(train), str(run / RunDir.SPLIT))
    if split.val.numel() == 0:
        raise ValueError(f"{run.path}: the run has no validation images to choose an atypical threshold on")
    lab, val = split.labeled.to(train.images.device), split.val.to(train.images.device)
    pool = split.unlabeled[range_pool_draw(len(split.unlabeled))].to(train.images.device)
    return (train.images[lab], train.labels[lab]), (train.images[val], train.labels[val]), train.images[pool]


def validation_images(run_dir: str | Path, cfg: RunConfig, data: tuple[ImageData, ImageData] | None = None
                      ) -> torch.Tensor:
    """The run's validation images (N_val, C, H, W) uint8 (run_images)."""
    return run_images(run_dir, cfg, data)[1][0]


def refuse_flag(predictor: Predictor, kind: str) -> None:
    """A ValueError naming why the run cannot flag with `kind`, before any dataset is read; nothing if it can."""
    try:
        name = resolve_kind(kind, predictor.method)
    except ValueError as e:
        raise ValueError(f"--flag-atypical: {e}") from None
    refusal = DETECTORS.get(name).method_refusal(predictor.method)
    if refusal is not None:
        raise ValueError(f"--flag-atypical: {refusal}; pass --flag-atypical=confidence to flag by it")


def gate_state(predictor: Predictor, run_dir: str | Path, data: tuple[ImageData, ImageData] | None = None,
               read_dataset: bool = True, batch_size: int | None = None) -> tuple[dict | None, str | None]:
    """(the run's gate, None) from its gate.pt (genssl.methods.detectors.fit_gate, written at the end of training)
    when it belongs to the predicting checkpoint; else, with `read_dataset` (or `data`), fitted now on the run's
    labeled and validation images; else (None, why not)."""
    state = read_gate(run_dir) if data is None else None
    why = None
    if state is not None and state.get("step", -1) != predictor.step:
        why = (f"{Path(run_dir) / GATE_FILE} is of step {state.get('step')}, not of the checkpoint's step "
               f"{predictor.step} (the run was trained on after its gate was written)")
        state = None
    elif state is None:
        why = (f"{Path(run_dir)} has no {GATE_FILE} (written at the end of training since genssl's gates; a run "
               f"without validation images has none)")
    if state is not None or not (read_dataset or data is not None):
        return state, why
    labeled, val, pool = run_images(run_dir, predictor.cfg, data)
    return fit_gate(predictor.method, labeled, val, batch_size or predictor.cfg.train.eval_batch_size,
                    predictor.step, pool), None


def atypical_flag(predictor: Predictor, run_dir: str | Path, kind: str = "model", quantile: float = 0.01,
                  batch_size: int | None = None, data: tuple[ImageData, ImageData] | None = None) -> AtypicalFlag:
    """--flag-atypical=KIND: detector `kind` alone, its threshold the conformal `quantile` cut of the run's
    validation images' scores (genssl.methods.typicality.conformal_threshold), from gate.pt or else the run's
    dataset."""
    refuse_flag(predictor, kind)
    _check_quantile(quantile)
    state, _ = gate_state(predictor, run_dir, data, True, batch_size)
    name = resolve_kind(kind, predictor.method)
    density = gate_density(state)
    refusal = DETECTORS.get(name).refusal(predictor.method, density)
    if refusal is not None:
        raise ValueError(f"--flag-atypical: {refusal}")
    threshold, rate = gate_cut(state, name, quantile)
    return AtypicalFlag(name, score_name(name, predictor.method), threshold, quantile, int(state["n_val"]), None,
                        density, predictor, expected_rate=rate)


def default_gate(predictor: Predictor, run_dir: str | Path, quantile: float = 0.01, batch_size: int | None = None,
                 read_dataset: bool = False, data: tuple[ImageData, ImageData] | None = None
                 ) -> tuple[AtypicalFlag | None, str | None]:
    """(the default gate: the run's best detector (genssl.methods.detectors.default_detector) at the `quantile` of
    its validation images' scores, and the validation and pool images' range of input statistics; None where the run has
    no gate.pt (and `read_dataset` is off), why)."""
    _check_quantile(quantile)
    state, why = gate_state(predictor, run_dir, data, read_dataset, batch_size)
    if state is None:
        return None, why
    density = gate_density(state)
    name = default_detector(predictor.method, density)
    threshold, rate = gate_cut(state, name, quantile)
    return AtypicalFlag(name, score_name(name, predictor.method), threshold, quantile, int(state["n_val"]),
                        gate_input_range(state), density, predictor, expected_rate=rate), None


def _check_quantile(quantile: float) -> None:
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"--atypical-quantile must be in (0, 1), got {quantile}")


def choose_flag(predictor: Predictor, run_dir: str | Path, kind: str | None = None, gate: str | Path | None = None,
                quantile: float = 0.01, batch_size: int | None = None, device: str | None = None
                ) -> tuple[AtypicalFlag | None, str | None]:
    """predict's flag: detector `kind` (--flag-atypical) or the default gate, of the run itself or of run `gate`
    (--gate). An explicit choice reads the gate run's dataset where it has no gate.pt; the default does not, and
    returns (None, why) instead."""
    gate_pred = predictor if gate is None else load_predictor(gate, device)
    gate_dir = run_dir if gate is None else gate
    if kind is not None:
        refuse_flag(gate_pred, kind)  # before reading a dataset
        flag, why = atypical_flag(gate_pred, gate_dir, kind, quantile, batch_size), None
    else:
        flag, why = default_gate(gate_pred, gate_dir, quantile, batch_size, read_dataset=gate is not None)
    if flag is not None and gate is not None:
        flag.source = str(gate)
    return flag, why


def collect_paths(inputs: list[str | Path]) -> list[Path]:
    """Files as given (in order), folders as their image files (recursively, sorted); a missing path is an
    error naming it."""
    paths, missing = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += list_images(item)
        elif item.is_file():
            paths.append(item)
        else:
            missing.append(str(item))
    if missing:
        raise FileNotFoundError(f"genssl predict: no such file or folder: {', '.join(missing)}")
    if not paths:
        raise ValueError(f"genssl predict: no image files in {', '.join(map(str, inputs))} (image files end in "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
    return paths


def predict_files(predictor: Predictor, paths: list[Path], top_k: int = 3, batch_size: int | None = None,
                  show_progress: bool = True, skip_bad: bool = False, flag: AtypicalFlag | None = None
                  ) -> tuple[list[dict], list[tuple[str, str]]]:
    """(one row per readable file: {"path", "class", "probability", "top_k": [{"class", "probability"}, ...]}
    and, with `flag`, "typicality" (the score) and "atypical" (below the flag's threshold),
    [(path, why)] of files that could not be read). Unreadable files are an error unless skip_bad."""
    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}")
    c, h, w = predictor.spec.image_shape
    images, bad = decode_files(paths, (h, w), c, show_progress, "decoding")
    if bad and not skip_bad:
        listing = "\n".join(f"  {p}: {why}" for p, why in bad[:20])
        raise ValueError(f"genssl predict: {len(bad)} of {len(paths)} file(s) cannot be read as images:\n{listing}"
                         f"{chr(10) + '  ...' if len(bad) > 20 else ''}\nRemove them or pass --skip-bad")
    bad_paths = {p for p, _ in bad}
    good = [p for p in paths if str(p) not in bad_paths]
    probs = predictor.probabilities(images, batch_size, show_progress)  # (N, K)
    typical = by = None
    if flag is not None:
        gate = flag.gate or predictor
        gate_images = images
        if tuple(gate.spec.image_shape) != tuple(predictor.spec.image_shape):  # --gate: a run of another shape
            gc, gh, gw = gate.spec.image_shape
            gate_images, _ = decode_files(good, (gh, gw), gc, show_progress, "decoding for the gate")
        flag.gate = gate
        typical, atypical, by = flag.check(gate_images, batch_size or gate.cfg.train.eval_batch_size)
    k = min(top_k, probs.shape[1])
    top_p, top_i = probs.topk(k, dim=1)
    names = predictor.class_names
    rows = []
    for n, (path, ps, idx) in enumerate(zip(good, top_p.tolist(), top_i.tolist())):
        ranked = [{"class": names[i], "probability": p} for p, i in zip(ps, idx)]
        rows.append({"path": str(path), "class": ranked[0]["class"], "probability": ranked[0]["probability"],
                     "top_k": ranked})
        if typical is not None:
            rows[-1] |= {"typicality": float(typical[n]), "atypical": bool(atypical[n])}
            if by is not None:
                rows[-1]["atypical_by"] = by[n]
    return rows, bad


def format_rows(rows: list[dict], fmt: str, top_k: int) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    k = max([len(r["top_k"]) for r in rows] + [min(top_k, 1)])
    flagged = bool(rows) and "typicality" in rows[0]
    reasons = bool(rows) and "atypical_by" in rows[0]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "class", "probability"] + [f"{col}_{i}" for i in range(2, k + 1)
                                                        for col in ("class", "probability")]
                    + (["typicality", "atypical"] if flagged else []) + (["atypical_by"] if reasons else []))
    for r in rows:
        rest = [v for t in r["top_k"][1:] for v in (t["class"], f"{t['probability']:.4f}")]
        rest += [""] * (2 * (k - len(r["top_k"])))
        if flagged:
            rest += [f"{r['typicality']:.7g}", str(int(r["atypical"]))]
        if reasons:
            rest.append(r["atypical_by"])
        writer.writerow([r["path"], r["class"], f"{r['probability']:.4f}"] + rest)
    return buf.getvalue()


def run_predict_command(args) -> int:
    """`genssl predict RUN_DIR PATH... [--out FILE] [--format csv|json] [--top-k K] [--flag-atypical[=KIND]]
    [--gate RUN] [--no-gate] [--atypical-quantile Q]`."""
    fmt = args.format or ("json" if args.out and args.out.lower().endswith(".json") else "csv")
    if fmt not in FORMATS:
        raise ValueError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if args.no_gate and (args.flag_atypical is not None or args.gate is not None):
        raise ValueError("--no-gate turns the typicality columns off; drop it to pass --flag-atypical or --gate")
    paths = collect_paths(args.paths)
    predictor = load_predictor(args.run_dir, args.device)
    flag = None
    if not args.no_gate:
        flag, why = choose_flag(predictor, args.run_dir, args.flag_atypical, args.gate, args.atypical_quantile,
                                args.batch_size, args.device)
        if flag is None:
            print(f"genssl predict: no gate: {why}; the predictions carry no typicality columns "
                  f"(--flag-atypical=KIND reads the run's dataset to flag by one detector; --no-gate silences this)",
                  file=sys.stderr)
        else:
            print(f"genssl predict: {flag.describe()}", file=sys.stderr)
    rows, bad = predict_files(predictor, paths, args.top_k, args.batch_size, not args.no_progress, args.skip_bad,
                              flag)
    for p, why in bad:
        print(f"genssl predict: skipped {p}: {why}", file=sys.stderr)
    text = format_rows(rows, fmt, args.top_k)
    if args.out in (None, "-"):
        sys.stdout.write(text)
    else:
        atomic_write_text(text, args.out)
        print(f"genssl predict: {len(rows)} image(s) -> {args.out}"
              + (f" ({len(bad)} unreadable skipped)" if bad else ""), file=sys.stderr)
    return 0
