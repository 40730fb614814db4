"""Typed run configuration: dataclasses <-> YAML, with dotted command-line overrides.

A run config has four sections::

    name: fmnist100_supervised      # optional run name (folder under out_dir)
    out_dir: checkpoints
    method: {name: supervised, arch: mlp, lr: 0.001}   # `name` picks the registered method,
                                                         # the rest fills that method's Config
    data:   {dataset: fashion_mnist, n_labels: 100}
    train:  {steps: 3000, seed: 0}

Unknown keys are errors that list the valid ones; values are checked against the dataclass field types.
(Over 350 lines on purpose: the sections, their YAML round trip and their validation read best together.)
Overrides use the same dotted paths as the YAML: ``--train.lr=3e-4 --method.arch=conv``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from genssl.registry import detector_kinds, get_method_class, list_methods


class ConfigError(ValueError):
    """A config value or key that cannot be used; the message names it and the valid choices."""


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"
    """mnist | fashion_mnist | svhn | cifar10 | folder (your own images: see `labeled` below)."""
    root: str | None = None
    """Folder holding the dataset; None searches $GENSSL_DATA, the cache and /usr/share/datasets."""
    download: bool = True
    n_labels: int = 100
    """Labeled training images, drawn class-balanced."""
    n_val: int = 5000
    """Images held out of the training set for model selection (never the test set), stratified by class. A
    user with 100 labels rarely has 5,000 more: 10 per class (n_val: 100 for ten classes) is the realistic
    protocol of Oliver et al. 2018; pair it with a noise-aware train.select. 0 only with train.select: last."""
    n_unlabeled: int | None = None
    """Size of the unlabeled pool: a seeded random draw from the training images outside the labeled and
    validation sets (None: all of them). With labeled_in_unlabeled the labeled images are added on top."""
    classes: list[int] | None = None
    """Class indices the task is about (labeled, validation and test images come from these only, relabeled
    0..len-1 in this order); the other classes can only reach the unlabeled pool, through `mismatch`. None: all.
    Fashion-MNIST's six garments, as in Oliver et al.'s class-mismatch study: [0, 1, 2, 3, 4, 6]."""
    mismatch: float = 0.0
    """Share of the unlabeled pool drawn from the classes outside `classes` (0 to 1); how, says mismatch_mode."""
    mismatch_mode: str = "replace"
    """replace | add: what a mismatch level holds fixed. replace (Oliver et al.'s fig. 2): the pool stays at
    n_unlabeled images, round(mismatch * n_unlabeled) of them from the other classes in place of in-class ones, so
    a higher share also means fewer in-class images. add: the n_unlabeled in-class images stay (the very images
    mismatch 0 draws for that seed) and round(mismatch * n_unlabeled / (1 - mismatch)) out-of-class images are
    added, so the share is `mismatch` of a larger pool and only the strays change; mismatch < 1 (genssl.data.split)."""
    filter_run: str | None = None
    """A finished run trained on this same split (same data config and seed; a run on another split is refused):
    unlabeled images its `filter_score` detector scores as less typical than `filter_quantile` of the validation
    images (the labeled ones when n_val is 0) are dropped before training (genssl.training.pool_filter)."""
    filter_quantile: float = 0.05
    """The quantile of the validation images' scores below which an unlabeled image is dropped, in (0, 1)."""
    filter_score: str = "model"
    """The filter run's detector (genssl.methods.detectors; low = atypical): model (its generative score: ELBO,
    log D; methods that declare one) | max_softmax (its classifier's maximum softmax probability, any method;
    `confidence` is its older name) | energy (logsumexp of the logits, any method) | feature_density (the class-
    conditional Gaussian of its features, from its gate.pt or fitted on its labeled and validation images; needs
    n_val > 0) | elbo_complexity (the ELBO in bits plus the compressed bits, methods with an ELBO of the pixels) |
    two_sided (the model score's distance from the validation images' median: far on either side = atypical). A
    detector the filter run cannot have is refused, naming the run."""
    labeled_in_unlabeled: bool = True
    """Whether the labeled images are also part of the unlabeled pool (the papers' protocol)."""
    split_seed: int | None = None
    """Seed of the labeled/unlabeled/val split; None uses train.seed."""
    # ---- dataset: folder (your own images; genssl.data.folder). Relative paths are taken from `root` when set.
    labeled: str | None = None
    """Labeled images: a folder with one subfolder per class (the class names), or a CSV file of path,label rows."""
    unlabeled: str | None = None
    """Unlabeled images: a folder, searched recursively (files that are also labeled, val or test are left out)."""
    test: str | None = None
    """Test images, laid out like `labeled`; every class must also be a labeled class."""
    val: str | None = None
    """Validation images, laid out like `labeled`; None holds `val_fraction` of each labeled class out instead."""
    val_fraction: float = 0.2
    """Share of each labeled class held out for validation (at least one image per class) when `val` is None."""
    image_size: int | list[int] | None = None
    """[H, W] (or one number for square images) every image is resized to; required for dataset: folder."""
    channels: int = 3
    """1 (grey) or 3 (RGB): colour, grey, alpha and palette images are all converted to this."""
    skip_bad: bool = False
    """Leave out unreadable image files (with a warning that counts and names them) instead of stopping."""


@dataclass
class TrainConfig:
    steps: int = 3000
    batch_size: int = 100
    """Unlabeled images per step."""
    labeled_batch_size: int = 100
    seed: int = 0
    device: str = "auto"
    """auto (CUDA when available) | cpu | cuda | cuda:N."""
    precision: str = "auto"
    """auto | fp32 | bf16 | fp16 (autocast; fp16 adds loss scaling). auto: bf16 on a CPU with native bf16 (AMX-BF16 /
    AVX512-BF16), for the (method, architecture) pairs that Method.auto_bf16 names (sgan and vae_m2 with any
    architecture, the classifier methods with arch conv: each a bf16 step measured >= 1.3x faster, and an
    accuracy check against fp32, which for the conv classifiers is pending: experiments/README.md); fp32 for the
    others, on other CPUs and on GPUs, where genssl's steps are launch-bound and bf16 was measured no faster.
    results.json and the progress line record the choice and why (genssl.training.device.resolve_precision)."""
    compile: bool = False
    """torch.compile the method's networks."""
    channels_last: str | bool = "auto"
    """auto | on | off: the memory layout of the conv kernels (and so of the activations): auto is channels_last
    (NHWC, what oneDNN and cuDNN prefer) for a method with any convolution and leaves MLPs as they are; off keeps
    NCHW. Converted once in Method.setup (genssl.nn.layout); the numbers differ from NCHW's only by rounding.
    YAML reads a bare on / off as true / false: those mean the same."""
    cuda_graph: str | bool = "off"
    """auto | on | off: capture the training step in a CUDA graph and replay it (genssl.training.captured; a GPU step
    of these small models is launch-bound). auto: captured on CUDA where the method declares a capturable step and
    the run allows it (fp32, no compile, one process, one seed), eager otherwise; on: the same, but an error on a
    device that is not CUDA; off: eager. results.json records the choice and why (cuda_graph, cuda_graph_reason).
    off by default until a GPU lease has measured the capture (benchmarks/README.md, issue 33); then auto."""
    threads: int = 0
    """CPU threads for torch; 0 keeps torch's default."""
    eval_every: int = 500
    select: str = "within_se"
    """Which evaluated weights the run keeps (best.pt) and reports: within_se (the default: the latest whose
    validation accuracy is within one binomial standard error of the best so far; a small validation set cannot
    tell those apart, and later weights have trained longer) | best (highest validation accuracy) | last |
    smoothed (highest mean validation accuracy over the last 3 evaluations). genssl.training.selection. Chosen
    by the realistic-evaluation study (experiments/README.md): with 10 validation images per class it lost the
    least test accuracy against the oracle pick on average."""
    budgets_s: list[float] = field(default_factory=list)
    """Equal-cost budgets, in seconds of training: for each, the weights `select` picks among the evaluations
    reached within it are scored once on the test set (results.json "budgets"). The clock is the process's CPU
    time on a CPU (one thread: seconds of one core, unaffected by other jobs) and wall time on a GPU; it counts
    the training steps only (genssl.training.budget; budget_counts_validation adds validation)."""
    budget_counts_validation: bool = False
    """Put validation (and the readout fit before it) on the budget clock. Off by default, so the clock measures
    training steps only and a conv net's costlier evaluation is not charged to its training; a user who pays for
    validation on the same machine sets true (genssl.training.budget says what is on the clock)."""
    budget_counts_filter: bool = False
    """Charge the pool filter's cost (loading the data.filter_run model and scoring the pool, results.json
    filter_cost_s) to this run's budget clock, as if it were spent training. Training the filter's own model is
    that run's cost."""
    stop_at_budget: bool = False
    """Stop training once the largest of budgets_s is spent (the schedule still follows train.steps)."""
    oracle: bool = False
    """For studies only: score the test set at every evaluation and log it as oracle/test_acc (TensorBoard,
    results.json "curve"). Nothing that selects reads it; it shows what each selection policy loses."""
    log_every: int = 50
    ckpt_every: int = 1000
    eval_batch_size: int = 1000
    progress: bool = True


@dataclass
class RunConfig:
    method: Any
    """The method's own Config dataclass instance (its registry name is ``method_name``)."""
    method_name: str
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str | None = None
    out_dir: str = "checkpoints"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "out_dir": self.out_dir,
            "method": {"name": self.method_name, **to_dict(self.method)},
            "data": to_dict(self.data),
            "train": to_dict(self.train),
        }

    def digest(self) -> str:
        """Short hash of the resolved config, recorded with exported encoders. Keys that do not change what the
        run computes (REPORTING_KEYS: threads, device, logging, paths) are left out, so the same model trained
        with --train.threads=1 or on another machine's data folder has the same digest."""
        kept = {k: v for k, v in flatten(self.to_dict()).items() if k not in REPORTING_KEYS}
        blob = json.dumps(kept, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


CUDA_GRAPH_CHOICES = ("auto", "on", "off")
"""train.cuda_graph values (genssl.training.captured)."""
CHANNELS_LAST_CHOICES = ("auto", "on", "off")
"""train.channels_last values (genssl.nn.layout)."""

# Config keys that do not change what a finished run computed: a grid reuses a run that differs only in them,
# and RunConfig.digest leaves them out.
REPORTING_KEYS = frozenset({"name", "out_dir", "train.progress", "train.threads", "train.device",
                            "train.eval_batch_size", "train.log_every", "train.ckpt_every", "data.root",
                            "data.download", "train.cuda_graph", "train.channels_last"})


# Keys that may change on --resume without changing what the run computes up to the saved step.
RESUMABLE_OVERRIDES = frozenset(
    {"train.steps", "train.eval_every", "train.log_every", "train.ckpt_every", "train.progress",
     "train.eval_batch_size", "train.threads", "train.device", "data.root", "data.download", "out_dir",
     "train.oracle", "train.stop_at_budget", "train.cuda_graph", "train.channels_last"}
)


def to_dict(obj) -> dict:
    return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _plain(v):
    if dataclasses.is_dataclass(v):
        return to_dict(v)
    if isinstance(v, tuple):
        return list(v)
    return v


def from_dict(cls, values: dict | None, where: str = ""):
    """Build dataclass `cls` from a mapping, rejecting unknown keys and ill-typed values."""
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(map(str, set(values) - set(names)))  # YAML keys may be numbers, dates, ...
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(_dot(where, k) for k in unknown)}; "
            f"valid keys{' in ' + where if where else ''}: {', '.join(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], _dot(where, k)) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def _dot(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _coerce(value, tp, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {tp}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 2**1024 else None  # huge ints overflow float()
        elif isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None or math.isnan(number):  # inf may mean "no limit"; NaN is never a setting
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def parse_overrides(args: list[str]) -> dict:
    """``["--train.lr=3e-4", "--method.arch", "conv"]`` -> nested dict, values parsed as YAML scalars."""
    out: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"expected an override like --train.steps=100, got {arg!r}")
        key, eq, raw = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise ConfigError(f"override --{key} has no value")
            raw, i = args[i + 1], i + 1
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"malformed override key {key!r}")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override --{key}: cannot parse value {raw!r}: {e}") from e
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override --{key} conflicts with another override")
        node[leaf] = value
        i += 1
    return out


def merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = _dot(prefix, k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def build_run_config(raw: dict) -> RunConfig:
    """Resolve a raw mapping (YAML + overrides) into a RunConfig, looking the method up in the registry."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a run config must be a mapping, got {type(raw).__name__}")
    allowed = {"name", "out_dir", "method", "data", "train"}
    unknown = sorted(map(str, set(raw) - allowed))
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(allowed))}")
    method_raw = raw.get("method")
    if isinstance(method_raw, str):
        method_raw = {"name": method_raw}
    if not isinstance(method_raw, dict) or "name" not in method_raw:
        raise ConfigError("the config needs `method: {name: <method>, ...}`")
    method_raw = dict(method_raw)
    method_name = method_raw.pop("name")
    if not isinstance(method_name, str):
        raise ConfigError(f"method.name: expected a method name, got {method_name!r}; registered methods: "
                          f"{', '.join(list_methods())}")
    cls = get_method_class(method_name)
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"name: expected a string, got {name!r}")
    out_dir = raw.get("out_dir", "checkpoints")
    if not isinstance(out_dir, str):
        raise ConfigError(f"out_dir: expected a string, got {out_dir!r}")
    cfg = RunConfig(
        method=from_dict(cls.Config, method_raw, "method"),
        method_name=method_name,
        data=from_dict(DataConfig, raw.get("data"), "data"),
        train=from_dict(TrainConfig, raw.get("train"), "train"),
        name=name,
        out_dir=out_dir,
    )
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    t, d = cfg.train, cfg.data
    for key in ("steps", "batch_size", "labeled_batch_size", "eval_every", "log_every", "ckpt_every",
                "eval_batch_size"):
        if getattr(t, key) <= 0:
            raise ConfigError(f"train.{key} must be positive, got {getattr(t, key)}")
    if t.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"train.precision: {t.precision!r} is not one of fp32, bf16, fp16, auto")
    if not isinstance(t.channels_last, bool) and t.channels_last not in CHANNELS_LAST_CHOICES:
        raise ConfigError(f"train.channels_last: {t.channels_last!r} is not one of {', '.join(CHANNELS_LAST_CHOICES)} "
                          f"(auto: channels_last for a method with convolutions, NCHW otherwise)")
    if isinstance(t.cuda_graph, bool):  # YAML 1.1 reads a bare on / off (in a file or --train.cuda_graph=off) as a bool
        t.cuda_graph = "on" if t.cuda_graph else "off"
    if t.cuda_graph not in CUDA_GRAPH_CHOICES:
        raise ConfigError(f"train.cuda_graph: {t.cuda_graph!r} is not one of {', '.join(CUDA_GRAPH_CHOICES)} (auto: "
                          f"captured on CUDA where the method allows it, eager elsewhere)")
    for where, seed in (("train.seed", t.seed), ("data.split_seed", d.split_seed)):
        if seed is not None and not 0 <= seed < 2**62:  # torch generators take unsigned 64-bit seeds
            raise ConfigError(f"{where} must be in [0, 2**62), got {seed}")
    if t.select not in SELECT_POLICIES:
        raise ConfigError(f"train.select: {t.select!r} is not one of {', '.join(SELECT_POLICIES)}")
    if any(not (b > 0 and math.isfinite(b)) for b in t.budgets_s):
        raise ConfigError(f"train.budgets_s: every budget must be a positive number of seconds, got {t.budgets_s}")
    if t.stop_at_budget and not t.budgets_s:
        raise ConfigError("train.stop_at_budget needs train.budgets_s (the budget to stop at)")
    if d.n_val == 0 and t.select != "last":
        raise ConfigError(f"data.n_val is 0, so there is nothing to select on: set train.select: last "
                          f"(got {t.select!r}) or give a few validation images per class")
    if d.n_unlabeled is not None and d.n_unlabeled <= 0:
        raise ConfigError(f"data.n_unlabeled must be positive (or null for the whole pool), got {d.n_unlabeled}")
    if not 0.0 <= d.mismatch <= 1.0:
        raise ConfigError(f"data.mismatch is a share of the unlabeled pool in [0, 1], got {d.mismatch}")
    if d.mismatch_mode not in MISMATCH_MODES:
        raise ConfigError(f"data.mismatch_mode: {d.mismatch_mode!r} is not one of {', '.join(MISMATCH_MODES)}")
    if d.mismatch_mode == "add" and d.mismatch >= 1.0:
        raise ConfigError(f"data.mismatch={d.mismatch} with mismatch_mode: add would add infinitely many "
                          f"out-of-class images (mismatch * n_unlabeled / (1 - mismatch)); use a mismatch below 1, "
                          f"or mismatch_mode: replace for a pool of out-of-class images only")
    if d.classes is not None:
        if len(d.classes) < 2 or len(set(d.classes)) != len(d.classes) or min(d.classes) < 0:
            raise ConfigError(f"data.classes: need at least two distinct class indices >= 0, got {d.classes}")
    if d.filter_score not in filter_scores():
        raise ConfigError(f"data.filter_score: {d.filter_score!r} is not one of {', '.join(filter_scores())}")
    if not 0.0 < d.filter_quantile < 1.0:
        raise ConfigError(f"data.filter_quantile must be in (0, 1), the share of validation images whose scores fall "
                          f"below the threshold, got {d.filter_quantile}")
    if d.mismatch > 0 and (d.classes is None or d.n_unlabeled is None):
        raise ConfigError(f"data.mismatch={d.mismatch} draws unlabeled images from classes outside the task: set "
                          f"data.classes (the task's classes) and data.n_unlabeled (the pool size, or with "
                          f"mismatch_mode: add the in-class images kept)")
    if t.threads < 0:
        raise ConfigError(f"train.threads must be >= 0, got {t.threads}")
    if d.n_labels <= 0:
        raise ConfigError(f"data.n_labels must be positive, got {d.n_labels}")
    if d.n_val < 0:
        raise ConfigError(f"data.n_val must be >= 0, got {d.n_val}")
    validate_folder_data(d)


SELECT_POLICIES = ("best", "last", "within_se", "smoothed")
TWO_SIDED = "two_sided"
"""The one data.filter_score that is not a detector: the model score made two-sided (genssl.training.pool_filter)."""


def filter_scores() -> list[str]:
    """data.filter_score's values: every registered detector name (genssl.methods.detectors) and two_sided."""
    return detector_kinds() + [TWO_SIDED]

MISMATCH_MODES = ("replace", "add")
"""data.mismatch_mode values (DataConfig.mismatch_mode; genssl.data.split.make_split)."""

FOLDER_DATASET = "folder"
FOLDER_KEYS = ("labeled", "unlabeled", "test", "val", "image_size")
MAX_IMAGE_SIDE = 4096


def folder_image_size(d: DataConfig) -> tuple[int, int]:
    """data.image_size as (H, W)."""
    size = d.image_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def validate_folder_data(d: DataConfig) -> None:
    """The keys of `dataset: folder`: present when it is chosen, absent otherwise (they would be ignored). Paths
    are not checked here: a run's config is also read where its folders do not exist (genssl predict)."""
    if d.dataset != FOLDER_DATASET:
        given = [k for k in FOLDER_KEYS if getattr(d, k) is not None]
        if given:
            raise ConfigError(f"data.{given[0]} is a key of `dataset: {FOLDER_DATASET}` (your own images), but "
                              f"data.dataset is {d.dataset!r}; set dataset: {FOLDER_DATASET} or remove "
                              f"{', '.join('data.' + k for k in given)}")
        return
    missing = [k for k in ("labeled", "unlabeled", "test", "image_size") if getattr(d, k) is None]
    if missing:
        raise ConfigError(f"dataset: {FOLDER_DATASET} needs {', '.join('data.' + k for k in missing)}, e.g. "
                          f"data: {{dataset: folder, labeled: my/labeled, unlabeled: my/unlabeled, test: my/test, "
                          f"image_size: [64, 64], channels: 3}}")
    for key in ("labeled", "unlabeled", "test", "val"):
        if getattr(d, key) == "":
            raise ConfigError(f"data.{key}: an empty path; give a folder (or, for labeled/test/val, a CSV file)")
    size = d.image_size
    if isinstance(size, list) and len(size) != 2:
        raise ConfigError(f"data.image_size: expected [H, W] (or one number), got {size!r}")
    h, w = folder_image_size(d)
    if not (1 <= h <= MAX_IMAGE_SIDE and 1 <= w <= MAX_IMAGE_SIDE):
        raise ConfigError(f"data.image_size: each side must be in [1, {MAX_IMAGE_SIDE}] pixels, got {size!r}")
    if d.classes is not None or d.mismatch:
        raise ConfigError("data.classes / data.mismatch build a class mismatch from a labeled dataset; with "
                          "dataset: folder your unlabeled folder already holds what it holds. To measure the effect "
                          "of out-of-class images, train on a curated in-class unlabeled folder and on the full "
                          "one at the same data.n_unlabeled (README: unlabeled data that is not clean)")
    if d.channels not in (1, 3):
        raise ConfigError(f"data.channels: {d.channels!r} is not one of 1 (grey), 3 (RGB)")
    if not 0 < d.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {d.val_fraction}")


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    return {} if raw is None else raw


def load_run_config(path: str | Path, overrides: list[str] | dict | None = None) -> RunConfig:
    raw = load_yaml(path)
    if overrides:
        raw = merge(raw, parse_overrides(overrides) if isinstance(overrides, list) else overrides)
    return build_run_config(raw)


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def method_defaults(method_name: str) -> dict:
    """Every key's default for this method, flattened: what a run made before a key existed computed with."""
    return flatten(build_run_config({"method": {"name": method_name}}).to_dict())


def config_differences(saved: dict, now: dict, defaults: dict, ignore=frozenset()) -> tuple[list[str], list[str]]:
    """(differences, keys assumed at their default) between two flattened configs, `ignore`d keys aside.

    A key on both sides differs when its values do. A key on one side only (a field added or removed since the
    saved config was written) differs unless its value there is today's default: then the two are taken to compute
    the same thing, and the key is listed as assumed so that a report can say so."""
    changed, assumed = [], []
    for k in sorted(set(saved) | set(now)):
        if k in ignore:
            continue
        if k in saved and k in now:
            if saved[k] != now[k]:
                changed.append(f"{k}: {saved[k]!r} -> {now[k]!r}")
        elif k in defaults and defaults[k] == (now[k] if k in now else saved[k]):
            assumed.append(f"{k}={defaults[k]!r}")
        else:
            changed.append(f"{k}: {saved[k]!r} -> absent" if k in saved else f"{k}: absent -> {now[k]!r}")
    return changed, assumed
