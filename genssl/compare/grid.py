"""A grid of methods x label counts x seeds: its YAML, read and validated into ordered `GridRun`s (run by
genssl/compare/runner.py).

Grid YAML::

    out: checkpoints/compare-fmnist             # the report (tables, plots, tb/)
    runs: checkpoints/fmnist_runs               # the run folders (optional; default <out>/runs), so grids
                                                # that share runs (a baselines grid, the full table) reuse them
    overrides: {train: {steps: 2000}}          # applied to every run (optional)
    methods:                                    # display name -> one of four forms:
      supervised: fmnist_supervised.yaml        #   a config file (relative to this grid file)
      m1: {config: fmnist_vae_m1.yaml,          #   a config file plus overrides for this entry only
           overrides: {train: {steps: 500}}}
      pl: {method: {name: pseudo_label}, data: {dataset: fashion_mnist}}   # an inline run config
      m1+m2: {config: fmnist_vae_m1_m2.yaml,    #   {runs}, {n_labels}, {seed}, {out} in any string are
              overrides: {method: {encoder: "{runs}/m1-n{n_labels}-s{seed}"}}}  # filled in per run
      sgan+samples: {samples_from: sgan, classifier: {steps: 1000}}   # see genssl/compare/samples.py
      adgm: {config: fmnist_adgm.yaml,          #   an entry given with `config` may set its own
             seeds: [0], n_labels: [100]}       #   seeds / n_labels (a costly method, one seed)
    n_labels: [100, 1000]                       # optional: without it (or seeds), each entry keeps its
    seeds: [0, 1, 2]                            # own config's data.n_labels (train.seed)
    resources:                                  # optional: what one run asks a scheduler for (--executor
      cpus: 2                                   #   slurm / submitit-local; genssl/compare/executors.py):
      gpus: 0                                   #   CPU cores (also the run's torch threads unless train.threads
      mem_gb: 8                                 #   is set), GPUs, memory (default: the cluster's) and time
      time_min: 120                             #   limit in minutes; slurm: further submitit Slurm parameters
      slurm: {partition: cpu, account: myproj}  #   (partition, account, qos, constraint, setup, ...)
      methods:                                  #   per method entry, over the values above
        sgan: {gpus: 1, slurm: {partition: gpu}}

Any registered method is accepted: an entry is only a run config, so a method added later needs no change
here. Precedence, lowest first: the entry's config, the grid's `overrides`, the entry's `overrides`, the
command line (``--train.threads=1``), then the grid's label count and seed. On the command line,
``--resources.KEY=VALUE`` (``--resources.slurm.partition=gpu``) overrides the grid's `resources`. Runs land in
``<runs>/<name>-n<labels>-s<seed>``; a run whose config names another run's folder (M1+M2 naming its M1)
is ordered after it. Each run carries its `Resources` (the grid's `resources`, then its entry's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from genssl.compare import samples as compare_samples
from genssl.config import (
    ConfigError,
    DataConfig,
    TrainConfig,
    build_run_config,
    flatten,
    load_yaml,
    merge,
    parse_overrides,
    to_dict,
)

GRID_KEYS = ("out", "runs", "overrides", "methods", "n_labels", "seeds", "resources", "reference")
RESOURCE_KEYS = ("cpus", "gpus", "mem_gb", "time_min", "slurm")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class Resources:
    """What one run of a grid asks a scheduler for (genssl/compare/executors.py). The local executor ignores
    them: it splits this machine's cores between its --jobs."""
    cpus: int = 1                  # CPU cores; also the run's torch threads unless its train.threads is set
    gpus: int = 0
    mem_gb: float | None = None    # None: the cluster's default
    time_min: int = 120            # the job's time limit; a run past it is requeued and resumes from last.pt
    slurm: dict = field(default_factory=dict)   # further submitit Slurm parameters (partition, account, ...)


@dataclass
class GridRun:
    label: str       # display name of the method entry
    n_labels: int
    seed: int
    raw: dict        # resolved raw run config (for a samples entry: its source folder and classifier config)
    run_dir: Path
    samples: object = None                          # SampleClassifierConfig for a samples entry, else None
    deps: list[str] = field(default_factory=list)   # names of the grid runs this one needs finished first
    resources: Resources = field(default_factory=Resources)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def steps(self) -> int:
        return self.samples.steps if self.samples is not None else build_run_config(self.raw).train.steps


# ---------------------------------------------------------------------------------------------- the grid
def load_grid(path: str | Path, overrides: list[str] | None = None, out: str | None = None):
    """(out_dir, [GridRun]): runs under the grid's `runs` folder (else <out_dir>/runs), every run's config built
    and validated before any run starts, ordered so that a run comes after the runs it needs."""
    path = Path(path)
    grid = load_yaml(path)
    if not isinstance(grid, dict):
        raise ConfigError(f"{path}: a grid must be a mapping with keys {', '.join(GRID_KEYS)}")
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown grid key(s) {', '.join(unknown)}; valid keys: {', '.join(GRID_KEYS)}")
    if not isinstance(grid.get("methods"), dict) or not grid["methods"]:
        raise ConfigError(f"{path}: `methods` must map display names to run configs (a file, "
                          f"{{config: file, overrides: ...}}, an inline config, or {{samples_from: ...}})")
    shared = grid.get("overrides") or {}
    if not isinstance(shared, dict):
        raise ConfigError(f"{path}: `overrides` must be a mapping, got {shared!r}")
    cli = parse_overrides(overrides or [])
    cli_resources = cli.pop("resources", {})  # --resources.cpus=2: the grid's resources, not a run config key
    out_dir = Path(out or grid.get("out") or "checkpoints/compare")
    # --out moves everything, runs included; otherwise the grid may keep its runs in a shared folder.
    runs_dir = out_dir / "runs" if out or not grid.get("runs") else Path(grid["runs"])
    # Without `n_labels` / `seeds`, each entry keeps its own config's data.n_labels / train.seed.
    label_counts = _int_list(grid["n_labels"], "n_labels", path) if "n_labels" in grid else None
    seeds = _int_list(grid["seeds"], "seeds", path) if "seeds" in grid else None
    resources = grid.get("resources") or {}
    if cli_resources:
        if not isinstance(resources, dict) or not isinstance(cli_resources, dict):
            raise ConfigError(f"{path}: --resources.KEY=VALUE overrides need `resources` to be a mapping")
        resources = merge(resources, cli_resources)
    resources = _resources(resources, list(grid["methods"]), path)
    runs: list[GridRun] = []
    by_entry: dict[str, dict[tuple[int, int], GridRun]] = {}
    for label, entry in grid["methods"].items():
        if not isinstance(label, str) or not _NAME.match(label):
            raise ConfigError(f"{path}: method name {label!r} must be letters, digits, '_', '.', '+' or '-' "
                              f"(it names the run folders)")
        where = f"{path}: method entry {label!r}"
        by_entry[label] = {}
        if compare_samples.is_samples_entry(entry):
            source = entry["samples_from"]
            if source not in by_entry or any(r.samples is not None for r in by_entry[source].values()):
                raise ConfigError(f"{where}: samples_from={source!r} must name an earlier model entry; "
                                  f"earlier entries: {', '.join(by_entry) or 'none'}")
            pairs = list(by_entry[source])
        else:
            raw = merge(merge(_entry_config(entry, where, path), shared), _entry_overrides(entry, where))
            raw = merge(raw, cli)
            entry_counts = _entry_axis(entry, "n_labels", label_counts, label, path)
            entry_seeds = _entry_axis(entry, "seeds", seeds, label, path)
            pairs = [(n, seed) for n in entry_counts or [_get(raw, "data", "n_labels", DataConfig().n_labels)]
                     for seed in entry_seeds or [_get(raw, "train", "seed", TrainConfig().seed)]]
        for n, seed in pairs:
            run_dir = runs_dir / f"{label}-n{n}-s{seed}"
            if compare_samples.is_samples_entry(entry):
                src = by_entry[source][(n, seed)]
                scfg = compare_samples.samples_config(entry, where, seed)
                run = GridRun(label, n, seed, {"samples_from": str(src.run_dir), "classifier": to_dict(scfg)},
                              run_dir, samples=scfg, deps=[src.name], resources=resources[label])
            else:
                cfg = _fill(merge(raw, {"data": {"n_labels": n}, "train": {"seed": seed}}),
                            {"{out}": str(out_dir), "{runs}": str(runs_dir), "{n_labels}": str(n),
                             "{seed}": str(seed)})
                try:
                    build_run_config(cfg)  # fail on a bad entry before spending an hour on the good ones
                except (ConfigError, ValueError) as e:
                    raise ConfigError(f"{where}: {e}") from e
                run = GridRun(label, n, seed, cfg, run_dir, resources=resources[label])
            by_entry[label][(n, seed)] = run
            runs.append(run)
    _link_dependencies(runs)
    return out_dir, runs


def grid_reference(path: str | Path) -> str | None:
    """The grid's `reference:` entry, which the report's paired columns compare every entry against (None: the
    report's default, the first entry that uses no unlabeled data)."""
    ref = load_yaml(Path(path)).get("reference")
    if ref is not None and not isinstance(ref, str):
        raise ConfigError(f"{path}: `reference` must name a method entry, got {ref!r}")
    return ref


def _entry_config(entry, where: str, path: Path) -> dict:
    if isinstance(entry, str):
        return load_yaml(path.parent / entry)
    if isinstance(entry, dict) and "config" in entry:
        extra = sorted(set(entry) - {"config", "overrides", *ENTRY_AXES})
        if extra or not isinstance(entry["config"], str):
            raise ConfigError(f"{where}: with `config`, only `overrides`, `seeds` and `n_labels` may be given and "
                              f"`config` must be a file name; got keys {', '.join(sorted(entry))}")
        return load_yaml(path.parent / entry["config"])
    if isinstance(entry, dict):
        return dict(entry)
    raise ConfigError(f"{where} must be a config file name or a mapping, got {entry!r}")


ENTRY_AXES = ("n_labels", "seeds")
"""Keys an entry given with `config` may set for itself, over the grid's lists of the same name."""


def _entry_axis(entry, key: str, grid_values: list[int] | None, label: str, path: Path) -> list[int] | None:
    """An entry's own `seeds` / `n_labels` (a list of ints), else the grid's."""
    if isinstance(entry, dict) and "config" in entry and key in entry:
        return _int_list(entry[key], f"methods.{label}.{key}", path)
    return grid_values


def _entry_overrides(entry, where: str) -> dict:
    if isinstance(entry, dict) and "config" in entry:
        extra = entry.get("overrides") or {}
        if not isinstance(extra, dict):
            raise ConfigError(f"{where}: `overrides` must be a mapping, got {extra!r}")
        return extra
    return {}


def _fill(value, table: dict[str, str]):
    """Replace the grid placeholders in every string of a nested config (plain replace: other braces stay)."""
    if isinstance(value, dict):
        return {k: _fill(v, table) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, table) for v in value]
    if isinstance(value, str):
        for key, sub in table.items():
            value = value.replace(key, sub)
    return value


def _link_dependencies(runs: list[GridRun]) -> None:
    """A run that names another grid run's folder in its config needs it; order runs so it comes after."""
    folders = {str(r.run_dir): r for r in runs}
    for run in runs:
        if run.samples is None:
            for v in flatten(run.raw).values():
                if isinstance(v, str) and v.rstrip("/") in folders and folders[v.rstrip("/")] is not run:
                    run.deps.append(folders[v.rstrip("/")].name)
    order, placed = [], set()

    def place(run, stack=()):
        if run.name in placed:
            return
        if run.name in stack:
            raise ConfigError(f"grid runs depend on each other in a cycle: {' -> '.join([*stack, run.name])}")
        for dep in run.deps:
            place(by_name[dep], (*stack, run.name))
        placed.add(run.name)
        order.append(run)

    by_name = {r.name: r for r in runs}
    for run in runs:
        place(run)
    runs[:] = order


def _resources(spec, labels: list[str], path: Path) -> dict[str, Resources]:
    """{method entry: its Resources}: the grid's `resources`, then `resources.methods.<entry>` over them."""
    spec = {} if spec is None else spec
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: `resources` must be a mapping with keys {', '.join(RESOURCE_KEYS)}, methods; "
                          f"got {spec!r}")
    per_entry = spec.get("methods") or {}
    if not isinstance(per_entry, dict):
        raise ConfigError(f"{path}: resources.methods must map method entries to resources, got {per_entry!r}")
    unknown = sorted(set(per_entry) - set(labels), key=str)
    if unknown:
        raise ConfigError(f"{path}: resources.methods names {', '.join(map(str, unknown))}, which are not method "
                          f"entries of this grid; its entries: {', '.join(labels)}")
    shared = {k: v for k, v in spec.items() if k != "methods"}
    _check_resources(shared, "resources", path)
    out = {}
    for label in labels:
        own = per_entry.get(label) or {}
        if not isinstance(own, dict):
            raise ConfigError(f"{path}: resources.methods.{label} must be a mapping, got {own!r}")
        _check_resources(own, f"resources.methods.{label}", path)
        out[label] = Resources(**{**shared, **own, "slurm": {**shared.get("slurm", {}), **own.get("slurm", {})}})
    return out


def _check_resources(spec: dict, where: str, path: Path) -> None:
    unknown = sorted(set(spec) - set(RESOURCE_KEYS), key=str)
    if unknown:
        valid = ", ".join(RESOURCE_KEYS) + (", methods" if where == "resources" else "")
        raise ConfigError(f"{path}: unknown key(s) {', '.join(map(str, unknown))} in {where}; valid keys: {valid}")

    def whole(v, low):
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    checks = {"cpus": (lambda v: whole(v, 1), "an integer >= 1"), "gpus": (lambda v: whole(v, 0), "an integer >= 0"),
              "time_min": (lambda v: whole(v, 1), "a whole number of minutes >= 1"),
              "mem_gb": (lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0),
                         "a number of GB > 0"),
              "slurm": (lambda v: isinstance(v, dict), "a mapping of submitit Slurm parameters")}
    for key, value in spec.items():
        ok, what = checks[key]
        if not ok(value):
            raise ConfigError(f"{path}: {where}.{key} must be {what}, got {value!r}")


def _get(raw: dict, section: str, key: str, default):
    """raw[section][key], or the default when either is missing (a malformed section fails later, named)."""
    part = raw.get(section)
    return part.get(key, default) if isinstance(part, dict) else default


def _int_list(v, key, path) -> list[int]:
    v = [v] if isinstance(v, int) and not isinstance(v, bool) else v
    if not isinstance(v, list) or not v or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise ConfigError(f"{path}: `{key}` must be an integer or a list of integers, got {v!r}")
    return v
