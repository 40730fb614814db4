"""The `genssl` command: every sub-command is declared here (train, eval, export, downstream, predict, compare,
demo, advise, methods); each parses its arguments and calls the layer that does the work."""

from __future__ import annotations

import argparse
import json
import sys
from importlib.resources import files
from pathlib import Path

from genssl.advise import advise
from genssl.advise.candidates import CANDIDATES
from genssl.advise.command import FILTERED_CHOICES
from genssl.compare.executors import EXECUTORS, available_cpus
from genssl.compare.runner import PACK_CHOICES, GridFailed, collect_grid, run_grid, size_grid
from genssl.compare.report import beside_reference
from genssl.config import ConfigError, load_run_config, load_yaml
from genssl.downstream.encoder_scores import run_downstream_command
from genssl.downstream.predict import FORMATS, run_predict_command
from genssl.encoders.density import DENSITY_FILE
from genssl.encoders.format import SPEC_FILE
from genssl.encoders.from_run import export_run
from genssl.methods.detectors import detector_kinds
from genssl.nn.probes import KINDS
from genssl.registry import list_methods
from genssl.training.distributed import env_from_torchrun, init_distributed, shutdown
from genssl.training.evaluate import evaluate_run
from genssl.training.seeds import STACK_CHOICES, parse_seeds, train_seeds
from genssl.training.trainer import Trainer


def _cmd_train(args, overrides: list[str]) -> int:
    cfg = load_run_config(args.config, overrides)
    env = env_from_torchrun()  # launched by `torchrun --nproc_per_node=N -m genssl train ...`
    if args.seeds:
        if env is not None:
            raise ConfigError("--seeds trains several seeds in one process; do not combine it with torchrun")
        results = train_seeds(cfg, parse_seeds(args.seeds), args.run_dir, args.resume, stack=args.stack)
        print(json.dumps(results, indent=2))
        return 0
    if env is None:
        results = Trainer(cfg, run_dir=args.run_dir, resume=args.resume).fit()
    else:
        init_distributed(env, cfg.train.device)
        try:
            results = Trainer(cfg, run_dir=args.run_dir, resume=args.resume, rank=env.rank,
                              world_size=env.world_size).fit()
        finally:
            shutdown()
    if env is None or env.rank == 0:
        print(json.dumps(results, indent=2))
    return 0


def _cmd_eval(args, overrides: list[str]) -> int:
    results = evaluate_run(args.run_dir, checkpoint=args.checkpoint, device=args.device)
    print(json.dumps(results, indent=2))
    return 0


def seed_list(text: str) -> list[int]:
    """parse_seeds for argparse: its message, not argparse's "invalid value"."""
    try:
        return parse_seeds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _cmd_compare(args, overrides: list[str]) -> int:
    if args.collect:
        collect_grid(args.grid, overrides=overrides, out=args.out, reference=args.reference)
        return 0
    if args.dry_run:
        print("\n".join(size_grid(args.grid, overrides=overrides, out=args.out, reference=args.reference,
                                   seeds=args.seeds)))
        return 0
    try:
        run_grid(args.grid, overrides=overrides, out=args.out, jobs=args.jobs, executor=args.executor,
                 pack_seeds=args.pack_seeds, reference=args.reference, max_in_flight=args.max_in_flight,
                 seeds=args.seeds)
    except GridFailed as e:  # the report of the other runs is written
        print(f"genssl compare: {len(e.failures)} of {e.total} runs failed; the report above shows the rest. "
              f"Fix the cause and run the same command again: finished runs are reused.", file=sys.stderr)
        for name, error in e.failures.items():
            where = f"\n      traceback: {e.errors[name]}" if name in e.errors else ""
            print(f"  {name}: {error}{where}", file=sys.stderr)
        return 1
    return 0


def demo_grid() -> Path:
    """The demo grid: experiments/demo.yaml, which the package also ships (genssl/experiments is a link to
    the repo's experiments/ folder, packaged as data), so `genssl demo` works from any folder."""
    grid = Path(str(files("genssl").joinpath("experiments", "demo.yaml")))
    if not grid.is_file():
        raise FileNotFoundError(f"the demo grid is missing from the installed package (looked for {grid}); "
                                f"reinstall genssl, or run `genssl compare experiments/demo.yaml` in the repo")
    return grid


def demo_reference() -> dict[str, str]:
    """{demo entry: the full table's figure with 100 labels}: experiments/demo_reference.yaml, beside demo.yaml."""
    return load_yaml(demo_grid().with_name("demo_reference.yaml")).get("figures", {})


def _cmd_demo(args, overrides: list[str]) -> int:
    grid = demo_grid()
    jobs = args.jobs or available_cpus()  # one run per usable core; demo.yaml gives each run one thread
    print(f"genssl demo: every method on Fashion-MNIST with 100 labels, 1 seed, short schedules, {jobs} run(s) at "
          f"once ({grid})", flush=True)
    table = run_grid(grid, overrides=overrides, out=args.out, jobs=jobs)
    print("\nThe demo is a preview, not the answer: one seed and short schedules. Beside each row, the full table's "
          "figure (3 seeds, each method's full schedule; experiments/README.md):")
    print(beside_reference(table, demo_reference(), "full table, 100 labels"))
    return 0


def _cmd_advise(args, overrides: list[str]) -> int:
    if overrides:
        raise ValueError(f"genssl advise: unexpected arguments {' '.join(overrides)}")
    try:
        advise(args.data, budget=args.budget, out=args.out, jobs=args.jobs, executor=args.executor,
               dry_run=args.dry_run, candidates=args.candidates.split(",") if args.candidates else None,
               repeats=args.repeats, min_steps=args.min_steps, image_size=args.image_size, filtered=args.filtered)
    except KeyboardInterrupt:
        print("genssl advise: interrupted; run the same command again to continue (finished runs are reused, "
              "interrupted ones resume from their last checkpoint)", file=sys.stderr)
        return 130
    return 0


def _cmd_methods(args, overrides: list[str]) -> int:
    print("\n".join(list_methods()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genssl", description="Generative semi-supervised learning.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one run from a YAML config; extra --a.b=value args override it")
    p.add_argument("config")
    p.add_argument("--resume", action="store_true", help="continue the run in its folder from last.pt")
    p.add_argument("--run-dir", default=None, help="run folder (default: <out_dir>/<name>)")
    p.add_argument("--seeds", default=None, help="train these seeds (0,1,2 or 0-4), each in its own folder; "
                   "together in one process with stacked parameters when the method supports it")
    p.add_argument("--stack", choices=STACK_CHOICES, default="auto",
                   help="with --seeds: stack them in one process (on), run them one after another (off), or auto: "
                        "stacked on CUDA, one after another on a CPU where stacking measured no faster")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a finished run's best checkpoint on the test set")
    p.add_argument("run_dir")
    p.add_argument("--checkpoint", default="best.pt")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("compare", help="run a grid of methods x label counts x seeds and tabulate")
    p.add_argument("grid", help="grid YAML (see experiments/)")
    p.add_argument("--out", default=None, help="output folder (default: the grid's `out`)")
    p.add_argument("--jobs", type=int, default=None, help="runs at once (default: 1 on this machine, in separate "
                   "processes when > 1; every run at once on Slurm)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="what runs the runs: local processes (default), slurm (submitit job arrays, one per set of "
                        "the grid's `resources`; run it on a login node), or submitit-local (the same jobs on this "
                        "machine)")
    p.add_argument("--max-in-flight", type=int, default=None, metavar="N",
                   help="--executor slurm: at most N tasks of each job array running at once (Slurm's %%N array "
                        "throttle; default: as many as the cluster allows)")
    p.add_argument("--pack-seeds", choices=PACK_CHOICES, default="auto",
                   help="train the seeds of an entry and label count in one process with stacked parameters, each "
                        "still in its own run folder (on), one process per run (off), or auto: packed where the runs "
                        "train on CUDA (a GPU step is launch-bound), not on a CPU; entries that cannot stack run "
                        "unpacked, with the reason printed")
    p.add_argument("--seeds", type=seed_list, default=None, metavar="SPEC",
                   help="run only these of the grid's seeds, e.g. 0-2 or 3,4,5 (a study run across sittings); the "
                        "report also holds the runs of other seeds that finished earlier")
    p.add_argument("--collect", action="store_true", help="run nothing: rewrite the report from the run folders")
    p.add_argument("--dry-run", action="store_true", help="run nothing: print the runs per entry, how many "
                   "finished, the budget-clock time the rest may take, and whether the tables can reach a verdict")
    p.add_argument("--reference", default=None, metavar="NAME",
                   help="the entry every other is compared with, paired by seed (default: the grid's `reference:`, "
                        "else the first entry that uses no unlabeled data)")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("demo", help="a short comparison on Fashion-MNIST with 100 labels")
    p.add_argument("--out", default=None, help="output folder (default: checkpoints/demo)")
    p.add_argument("--jobs", type=int, default=None, help="runs trained at once, in separate processes (default: "
                   "the usable cores, one thread each)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("advise", help="does semi-supervised learning help on your image folder? plans, runs and "
                       "compares the candidates within a budget, and trains the one to use")
    p.add_argument("data", help="a folder with labeled/<class>/ (and optional val/<class>/) and unlabeled/ (a test/ "
                   "folder is never read), or a run config with a `dataset: folder` data section")
    p.add_argument("--budget", default="30m", help="total wall time, e.g. 90s, 20m, 1.5h (default 30m); the command "
                   "stays within it plus a stated margin")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--jobs", type=int, default=None, help="runs at once on this machine, one thread each "
                       "(default: the usable cores)")
    where.add_argument("--executor", choices=EXECUTORS, default="local", help="what runs the grid: local processes "
                       "(default), slurm or submitit-local (genssl compare --executor)")
    p.add_argument("--out", default=None, help="output folder (default: checkpoints/advise/<DATA name>); run the "
                   "same command again to continue in it")
    p.add_argument("--dry-run", action="store_true", help="measure the step costs, check the pool, print the plan "
                   "and stop")
    p.add_argument("--candidates", default=None, metavar="A,B", help="compare only these, besides supervised "
                   f"(default: all the images allow: {', '.join(c.name for c in CANDIDATES)})")
    p.add_argument("--repeats", type=int, default=None, help="held-out repeats (default: 10, 8 or 6 as the budget "
                   "allows, never fewer than the candidates need to be decided: 6 for one, 7 for two or three, 8 for "
                   "four to six, Holm across them; with fewer no difference can be called)")
    p.add_argument("--min-steps", type=int, default=200, help="a candidate that cannot train this many steps within "
                   "its share of the budget is left out (default 200)")
    p.add_argument("--image-size", type=int, default=None, help="resize images to this square size (default: their "
                   "own size up to 32 px, else 32)")
    p.add_argument("--filtered", choices=FILTERED_CHOICES, default="auto", help="add the candidates with the "
                   "unlabeled pool filtered by M1: auto (when the pool check finds >= 25%% atypical images), on, off")
    p.set_defaults(func=_cmd_advise)

    p = sub.add_parser("methods", help="list the registered methods")
    p.set_defaults(func=_cmd_methods)

    p = sub.add_parser("downstream", help="fit classifiers on a frozen encoder's features of a few labels "
                                               "and report test accuracy")
    p.add_argument("source", nargs="?", default=None, help="a run folder (or any load_encoder source)")
    p.add_argument("--encoder", default=None, help="exported folder, run folder, released name or torchvision:<arch>")
    p.add_argument("--weights", default=None, help="local weights file for torchvision:<arch>")
    p.add_argument("--n-labels", type=int, nargs="+", default=[100])
    p.add_argument("--kind", nargs="+", choices=KINDS, default=["linear"])
    p.add_argument("--seed", type=int, nargs="+", default=[0], help="labeled-subset seeds (results are averaged)")
    p.add_argument("--dataset", default=None, help="default: the encoder's training dataset, else fashion_mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--n-val", type=int, default=5000, help="images held out as in training runs (default 5000)")
    p.add_argument("--device", default="auto")
    p.add_argument("--torch-threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.set_defaults(func=run_downstream_command)

    p = sub.add_parser("export", help="export a run's encoder (weights + encoder.yaml) for load_encoder, with the "
                                      "feature density of its labeled and validation images (feature_density.pt)")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/encoder)")
    p.add_argument("--checkpoint", default="best.pt", help="best.pt (chosen on validation) or last.pt")
    p.add_argument("--force", action="store_true", help="replace an existing export in the output folder")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("predict", help="classify image files or folders with a trained run's best checkpoint")
    p.add_argument("run_dir", help="a run folder (its best.pt alone is read; no dataset needed)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, or folders searched recursively")
    p.add_argument("--out", default=None, help="write the predictions here (default: standard output)")
    p.add_argument("--format", choices=FORMATS, default=None, help="csv or json (default: from --out's suffix, "
                   "else csv)")
    p.add_argument("--top-k", type=int, default=3, help="classes listed per image, most probable first (default 3)")
    p.add_argument("--device", default=None, help="default: the run's train.device (CPU where CUDA is missing)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the run's train.eval_batch_size")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable files (named on stderr) instead of "
                   "stopping")
    p.add_argument("--flag-atypical", nargs="?", const="model", default=None, metavar="KIND",
                   help="flag by one detector alone instead of the default gate: the columns typicality (its score, "
                        "higher = more typical of the training data) and atypical (1 below the --atypical-quantile "
                        "conformal cut of the run's validation images' scores). KIND model (the default: the method's own "
                        "generative score, the ELBO for the VAEs, log D(x) for sgan; methods without one refuse), "
                        f"or one of {', '.join(k for k in detector_kinds() if k != 'model')}; write it as "
                        "--flag-atypical=KIND")
    p.add_argument("--gate", default=None, metavar="RUN_DIR",
                   help="score the images with another run's detector (its default gate, or its --flag-atypical "
                        "KIND), e.g. a FixMatch run's predictions gated by an M1 run")
    p.add_argument("--no-gate", action="store_true",
                   help="no typicality columns (by default every row gets typicality, atypical and atypical_by: the "
                        "run's best detector, and input statistics outside the validation and unlabeled images' range)")
    p.add_argument("--atypical-quantile", type=float, default=0.01,
                   help="the share of in-distribution images the threshold is to flag (default 0.01): the conformal "
                        "cut of the validation images' scores, which with n of them cannot go below 1/(n+1) (predict "
                        "prints the expected rate)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_predict)
    return parser


def _cmd_predict(args, overrides) -> int:
    if overrides:
        raise ValueError(f"genssl predict: unexpected arguments {' '.join(overrides)}")
    return run_predict_command(args)


def _cmd_export(args, overrides) -> int:
    if overrides:
        raise ValueError(f"genssl export: unexpected arguments {' '.join(overrides)}")
    out = export_run(args.run_dir, args.out, args.checkpoint, overwrite=args.force)
    print(f"exported encoder to {out}")
    if (out / DENSITY_FILE).is_file():
        print(f"with its feature density ({DENSITY_FILE}: genssl.encoders.density.load_density)")
    else:
        print(f"without a feature density: the run has no gate.pt for {args.checkpoint} and its dataset or "
              f"validation images cannot be read", file=sys.stderr)
    print((out / SPEC_FILE).read_text(), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        return args.func(args, rest)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        print(f"genssl {args.command}: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, (ConfigError, FileNotFoundError, FileExistsError)) else 1
    except KeyboardInterrupt:
        print(f"genssl {args.command}: interrupted; the last checkpoint is intact, continue with --resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
