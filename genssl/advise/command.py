"""`genssl advise DATA`: the steps, in order, each reusing a part of genssl.

1. Read the user's labels and unlabeled folder (genssl.advise.folder; a test folder is never read) and write the
   repeats' stratified train / held-out lists (genssl.advise.splits).
2. Pilot: each candidate's step cost on these images (genssl.advise.pilot).
3. Pool check: a small M1 run estimates the share of atypical unlabeled images (genssl.advise.pool_check).
4. Plan (genssl.advise.plan), printed and saved as DIR/plan.json; --dry-run stops here.
5. The grid: DIR/grid.yaml, every candidate x every repeat (the repeat is the grid's seed), run by
   genssl.compare.runner.run_grid with its executors, report and plots.
6. Evidence and recommendation (genssl.advise.evidence, with genssl.compare.stats).
7. The recommended candidate retrained on all the labels within the budget: DIR/final/<candidate>, a normal run.
8. DIR/advice.md and DIR/advice.json (genssl.advise.report).

The pilot, the pool check and the final run train in this process (one thread); the grid on the executor.

Resume: run the same command again. The plan is read back from DIR/plan.json (a second run with other arguments is
refused, naming them), finished runs are reused and interrupted ones resume from their last.pt (the runner's own
behaviour), and the time of every session is added up in DIR/sessions.json.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from genssl.advise import candidates as cands
from genssl.advise.evidence import candidate_rows, recommend
from genssl.advise.folder import AdviseError, UserData, read_user_data
from genssl.advise.pilot import measure_step_costs
from genssl.advise.plan import (EVAL_SHARE, FILTER_AT, REPORT_RESERVE_S, START_S, contention, make_plan, margin_s,
                                other_busy_cores, parse_budget, run_wall, schedule)
from genssl.advise.pool_check import check_pool, pool_check_run, train_run
from genssl.advise.report import advice_markdown, plan_text, table_markdown
from genssl.advise.splits import ALL_FILE, HELDOUT_FILE, TRAIN_FILE, heldout_counts, write_splits
from genssl.compare.executors import EXECUTORS, available_cpus
from genssl.compare.grid import GridRun, load_grid
from genssl.compare.report import fmt_duration
from genssl.compare.runner import GridFailed, finished_results, run_grid
from genssl.fileio import atomic_write_json, atomic_write_text
from genssl.registry import get_method_class

PLAN_FILE, SESSIONS_FILE, ADVICE_MD, ADVICE_JSON, GRID_FILE = (
    "plan.json", "sessions.json", "advice.md", "advice.json", "grid.yaml")
VAL_FRACTION = 0.2
"""Share of each run's training labels (at least 1 per class) it holds out to pick its weights."""
FILTERED_CHOICES = ("auto", "on", "off")
M1_EVALS = 3
"""Evaluations of the M1 runs (pool check, filters): each fits M1's readout, and only the model's scores matter."""
MAX_REPEATS = 10


def default_out(data: str | Path) -> Path:
    p = Path(data).expanduser()
    return Path("checkpoints") / "advise" / (p.stem if p.is_file() else p.resolve().name)


def advise(data: str | Path, budget: str = "30m", out: str | Path | None = None, jobs: int | None = None,
           executor: str = "local", dry_run: bool = False, candidates: list[str] | None = None,
           repeats: int | None = None, min_steps: int = 200, image_size: int | None = None,
           filtered: str = "auto", run_budget_s: float | None = None, echo=print) -> dict:
    """Plan, run and write the advice for the image folder `data` (see the module docstring); returns advice.json's
    content (with --dry-run: the plan's state). `run_budget_s` fixes each run's budget (and the pool check's)
    instead of deriving it from `budget` (tests; reproducing an advice)."""
    start = time.perf_counter()
    phases: dict[str, float] = {}
    budget_s = parse_budget(budget)
    if executor not in EXECUTORS:
        raise AdviseError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if jobs is not None and jobs < 1:
        raise AdviseError(f"--jobs must be at least 1, got {jobs}")
    if repeats is not None and not 2 <= repeats <= MAX_REPEATS:
        raise AdviseError(f"--repeats must be between 2 and {MAX_REPEATS}, got {repeats}")
    if filtered not in FILTERED_CHOICES:
        raise AdviseError(f"--filtered must be one of {', '.join(FILTERED_CHOICES)}, got {filtered!r}")
    if min_steps < 1:
        raise AdviseError(f"--min-steps must be at least 1, got {min_steps}")
    user = read_user_data(data, image_size)
    out = Path(out) if out is not None else default_out(data)
    args = {"data": str(Path(data).expanduser().resolve()), "budget_s": budget_s, "jobs": jobs, "executor": executor,
            "candidates": sorted(candidates) if candidates else None, "repeats": repeats, "min_steps": min_steps,
            "image_size": image_size, "filtered": filtered, "run_budget_s": run_budget_s}
    state = _read_json(out / PLAN_FILE)
    if state is not None and state["args"] != args:
        changed = ", ".join(f"{k}: {state['args'].get(k)!r} then, {v!r} now" for k, v in args.items()
                            if state["args"].get(k) != v)
        raise AdviseError(f"{out} holds an advice planned with other arguments ({changed}). Run it with the same "
                          f"arguments to continue it, or give another --out (or delete {out} to start over)")
    if state is not None and state["data"]["per_class"] != user.per_class():
        raise AdviseError(f"the labeled images of {data} changed since {out} was planned ({state['data']['per_class']} "
                          f"then, {user.per_class()} now), so its held-out splits no longer match them; give another "
                          f"--out (or delete {out}) to advise on the labels as they are now")
    sessions = (_read_json(out / SESSIONS_FILE) or []) if state is not None else []  # the sessions of this plan
    before = sum(s["wall_s"] for s in sessions)
    session = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "dry_run": dry_run}
    out.mkdir(parents=True, exist_ok=True)
    try:
        if state is None:
            state = _plan(user, out, args, budget_s, phases, start, before, echo)
        else:
            echo(f"continuing the advice in {out} (planned {state['planned_at']}; {fmt_duration(before)} spent "
                 f"before this session)")
        echo(plan_text(state))
        if dry_run:
            echo(f"--dry-run: stopping after the plan (saved in {out / PLAN_FILE}; run without --dry-run to carry "
                 f"it out)")
            return state
        advice = _carry_out(state, user, out, phases, start, before, len(sessions) + 1, echo)
        session["finished"] = True
        return advice
    finally:
        session["wall_s"] = round(time.perf_counter() - start, 1)
        if out.is_dir():
            atomic_write_json([*sessions, session], out / SESSIONS_FILE)


# ---------------------------------------------------------------------------------------------- steps 1-4: the plan
def _data_section(user: UserData, labeled: str, test: str) -> dict:
    return {"dataset": "folder", "labeled": labeled, "test": test, "unlabeled": str(user.unlabeled.resolve()),
            "image_size": list(user.image_size), "channels": user.channels, "val_fraction": VAL_FRACTION}


def _repeat_data(user: UserData, out: Path, repeat: int | str) -> dict:
    base = (out / "splits").resolve()
    return _data_section(user, f"{base}/r{repeat}/{TRAIN_FILE}", f"{base}/r{repeat}/{HELDOUT_FILE}")


def _plan(user: UserData, out: Path, args: dict, budget_s: float, phases: dict, start: float, before: float,
          echo) -> dict:
    per_class = user.per_class()
    held = heldout_counts(per_class)
    n_heldout, n_labeled = sum(held.values()), len(user.paths)
    n_repeats = args["repeats"] or MAX_REPEATS
    write_splits(out / "splits", user.paths, user.labels, user.classes, n_repeats)
    available, cand_notes = cands.available(user.image_size, args["candidates"])
    executor, cores = args["executor"], available_cpus()
    slots = args["jobs"] or (available_cpus() if executor != "slurm" else 10**6)
    echo(f"genssl advise: measuring each candidate's step cost on {user.source} (pilot) ...")
    t = time.perf_counter()
    pilot_s = min(1.5, max(0.3, 0.005 * budget_s))
    data0 = _repeat_data(user, out, 0)
    pilot_train = {"threads": 1, "progress": False, "steps": 1000}
    raws = {c.name: cands.run_config(c, data0, pilot_train) for c in [*available, cands.POOL_M1]}
    pilot = measure_step_costs(raws, pilot_s)
    phases["pilot"] = time.perf_counter() - t
    pool_budget = args["run_budget_s"] or min(60.0, max(1.0, 0.02 * budget_s * min(slots, cores)))
    m1_cost = pilot[cands.POOL_M1.name]["s_per_step"]
    m1_cap = cands.template_steps(cands.POOL_M1)
    echo(f"genssl advise: pool check (an M1 run of {pool_budget:.3g} s of CPU) ...")
    t = time.perf_counter()
    run = pool_check_run(out / "pool_check", data0, user.n_unlabeled,
                         _train(pool_budget, max(1, min(m1_cap, int(pool_budget / m1_cost))), M1_EVALS))
    pool = check_pool(run)
    phases["pool check"] = time.perf_counter() - t
    want_filter = args["filtered"] == "on" or (args["filtered"] == "auto" and pool["atypical_share"] >= FILTER_AT)
    filtered_reason = (
        "added by --filtered on" if args["filtered"] == "on" else "not added (--filtered off)"
        if args["filtered"] == "off" else
        f"added: the estimate is at least {100 * FILTER_AT:.0f}%" if want_filter else
        f"not added: the estimate is below {100 * FILTER_AT:.0f}% (--filtered on adds them anyway)")
    names = [c.name for c in available]
    by_name = {c.name: c for c in available}
    base_of = {}
    if want_filter:
        for c in available:
            if get_method_class(cands.method_name(c)).uses_unlabeled:
                f = cands.filtered(c)
                by_name[f.name], base_of[f.name] = f, c.name
                names.append(f.name)
    costs = {n: pilot[base_of.get(n, n)]["s_per_step"] for n in names}
    caps = {n: cands.template_steps(by_name[n]) for n in names}
    measured = None if executor == "slurm" else other_busy_cores()
    if measured is not None:  # the other processes' load now, this process left out
        load_avg, own = measured, 0.0
    else:
        load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        own = min(1.0, (time.perf_counter() - start) / 60)  # this process, busy since it began, is in the load average
    elapsed = before + time.perf_counter() - start
    factor = 1.0 if executor == "slurm" else contention(load_avg, own, slots, cores)
    plan = make_plan(budget_s=budget_s, elapsed_s=elapsed, slots=slots, factor=factor, costs=costs, names=names,
                     caps=caps, reference=cands.REFERENCE, filter_budget_s=pool_budget, heldout=n_heldout,
                     repeats=args["repeats"], min_steps=args["min_steps"], base_of=base_of,
                     spawn=executor == "local" and slots > 1, run_budget_s=args["run_budget_s"])
    plan["filter_steps"] = max(1, min(m1_cap, int(pool_budget / m1_cost)))
    state = {
        "version": 1, "args": args, "planned_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "budget_s": budget_s, "executor": executor, "cores": cores, "load_avg": load_avg,
        "data": {"source": user.source, "read": user.read, "ignored": user.ignored, "classes": user.classes,
                 "per_class": per_class, "n_labeled": n_labeled, "n_unlabeled": user.n_unlabeled,
                 "unlabeled": str(user.unlabeled), "image_size": list(user.image_size), "channels": user.channels},
        "n_labeled": n_labeled, "n_heldout": n_heldout, "n_train": n_labeled - n_heldout,
        "val_fraction": VAL_FRACTION, "reference": cands.REFERENCE, "pilot": {n: pilot[n] for n in pilot},
        "pool_check": pool, "filtered_reason": filtered_reason, "candidate_notes": cand_notes,
        "base_of": base_of, "plan": plan, "phases_before_plan": dict(phases),
    }
    atomic_write_json(state, out / PLAN_FILE)
    return state


def _train(budget: float, steps: int, evals: int = 10) -> dict:
    return {"select": "within_se", "budgets_s": [round(budget, 3)], "stop_at_budget": True, "threads": 1,
            "progress": False, **schedule(steps, evals)}



# ---------------------------------------------------------------------------------------------- steps 5-8
def _candidate_config(state: dict, name: str, data: dict, budget: float, steps: int, filter_run: str | None) -> dict:
    c = _candidate(state, name)
    if c.filtered:
        data = {**data, **cands.FILTER_DATA, "filter_run": filter_run}
    return cands.run_config(c, data, _train(budget, steps))


def _candidate(state: dict, name: str) -> cands.Candidate:
    base = state["base_of"].get(name, name)
    c = next(c for c in cands.CANDIDATES if c.name == base)
    return cands.filtered(c) if name in state["base_of"] else c


def write_grid(state: dict, user: UserData, out: Path) -> Path:
    """DIR/grid.yaml: every kept candidate x every repeat (the grid's seeds), plus the M1 filter runs."""
    plan = state["plan"]
    data = _repeat_data(user, out, "{seed}")
    methods = {}
    if plan.get("filter_budget_s"):
        m1_train = _train(plan["filter_budget_s"], plan["filter_steps"], M1_EVALS)
        methods[cands.FILTER_ENTRY] = cands.run_config(cands.POOL_M1, data, m1_train)
    for name in plan["candidates"]:
        methods[name] = _candidate_config(state, name, data, plan["run_budget_s"], plan["steps"][name],
                                          f"{{runs}}/{cands.FILTER_ENTRY}-n{{n_labels}}-s{{seed}}")
    wall = run_wall(plan["run_budget_s"], plan["factor"])
    grid = {"out": str(out), "reference": cands.REFERENCE, "methods": methods,
            "seeds": list(range(plan["repeats"])), "n_labels": [state["n_train"]],
            "resources": {"cpus": 1, "time_min": max(10, math.ceil(2 * wall / 60) + 5)}}
    path = out / GRID_FILE
    atomic_write_text("# Written by `genssl advise` (DIR/advice.md): every candidate x every repeat; the seed is the "
                      "repeat (its\n# train / held-out lists under splits/r<seed>/).\n"
                      + yaml.safe_dump(grid, sort_keys=False, width=120), path)
    return path


def _carry_out(state: dict, user: UserData, out: Path, phases: dict, start: float, before: float, n_sessions: int,
               echo) -> dict:
    plan = state["plan"]
    grid_path = write_grid(state, user, out)
    t = time.perf_counter()
    slots = plan["slots"] if state["executor"] != "slurm" else state["args"]["jobs"]
    echo(f"\ngenssl advise: training {plan['repeats'] * len(plan['candidates'])} runs (grid {grid_path}; its report "
         f"below calls the held-out accuracy 'test')")
    failures = {}
    try:
        run_grid(grid_path, out=str(out), jobs=slots, executor=state["executor"], reference=cands.REFERENCE)
    except GridFailed as e:  # some runs failed: the advice is built from the others, and says which
        failures = dict(e.failures)
    phases["grid"] = time.perf_counter() - t
    _, runs = load_grid(grid_path, out=str(out))
    per_run: dict[str, dict[int, dict]] = {n: {} for n in plan["candidates"]}
    for run in runs:
        if run.label in per_run:
            res = finished_results(run)
            if res is not None:
                per_run[run.label][run.seed] = res
    rows = candidate_rows(per_run, cands.REFERENCE, state["n_heldout"], state["n_train"])
    rec = recommend(rows, cands.REFERENCE)
    t = time.perf_counter()
    final = _final_run(state, user, out, rec["choice"], start, before, echo)
    phases["final run"] = time.perf_counter() - t
    spent_now = time.perf_counter() - start
    advice = {
        "version": 1, "out": str(out), "data": state["data"], "reference": cands.REFERENCE,
        "n_labeled": state["n_labeled"], "n_train": state["n_train"], "n_heldout": state["n_heldout"],
        "val_fraction": state["val_fraction"], "heldout_accuracy": "accuracy on the repeat's held-out labeled images "
        "of the weights each run picked on its own validation images (within_se), scored once",
        "plan": plan, "left_out": state.get("candidate_notes", []) + plan["left_out"],
        "pool_check": state["pool_check"], "filtered_reason": state["filtered_reason"],
        "candidates": rows, "recommendation": rec, "final_run": final, "failures": failures,
        "time": {"budget_s": state["budget_s"], "margin_s": margin_s(state["budget_s"]),
                 "spent_s": round(before + spent_now, 1), "this_session_s": round(spent_now, 1),
                 "sessions": n_sessions,
                 "within_budget_and_margin": before + spent_now <= state["budget_s"] + margin_s(state["budget_s"]),
                 "phases": {k: round(v, 1) for k, v in phases.items()}},
    }
    atomic_write_json(advice, out / ADVICE_JSON)
    text = advice_markdown(advice)
    atomic_write_text(text, out / ADVICE_MD)
    echo("")
    echo(f"Advice ({out / ADVICE_MD}):\n")
    echo(f"  {rec['sentence']}.")
    echo(f"  {rec['more']}\n")
    echo(table_markdown(rows, cands.REFERENCE))
    for note in advice["left_out"]:
        echo(f"  {note}")
    if final.get("path"):
        echo(f"\nYour model: {final['path']}\n  {final['predict']}" + (f"\n  {final['export']}" if final.get("export")
                                                                      else ""))
    echo(f"\nTime: {fmt_duration(before + spent_now)} of the {fmt_duration(state['budget_s'])} budget "
         f"(+ {fmt_duration(margin_s(state['budget_s']))} margin)")
    return advice


def _final_run(state: dict, user: UserData, out: Path, choice: str, start: float, before: float, echo) -> dict:
    """Train (or reuse) the recommended candidate on all the labels, within what is left of the budget."""
    plan = state["plan"]
    saved = state.get("final")
    cost = plan["s_per_step"][state["base_of"].get(choice, choice)]
    if saved is None or saved["candidate"] != choice:
        left = state["budget_s"] - before - (time.perf_counter() - start) - REPORT_RESERVE_S
        filt = run_wall(plan["filter_budget_s"], plan["factor"]) if choice in state["base_of"] else 0.0
        fits = ((left - filt) / plan["factor"] - START_S) / (1 + EVAL_SHARE)
        budget = max(min(plan["run_budget_s"], fits), min(plan["run_budget_s"], cost * plan["min_steps"]))
        steps = max(1, min(cands.template_steps(_candidate(state, choice)), int(budget / cost)))
        saved = state["final"] = {"candidate": choice, "budget_s": round(budget, 2), "steps": steps,
                                  "shortened": budget < plan["run_budget_s"]}
        atomic_write_json(state, out / PLAN_FILE)
    data = _data_section(user, str((out / "splits" / ALL_FILE).resolve()), str((out / "splits" / ALL_FILE).resolve()))
    folder = out / "final"
    filter_run = None
    if choice in state["base_of"]:
        m1_train = _train(plan["filter_budget_s"], plan["filter_steps"], M1_EVALS)
        m1 = GridRun(cands.FILTER_ENTRY, state["n_labeled"], 0, cands.run_config(cands.POOL_M1, data, m1_train),
                     folder / cands.FILTER_ENTRY)
        train_run(m1)
        filter_run = str(m1.run_dir)
    raw = _candidate_config(state, choice, data, saved["budget_s"], saved["steps"], filter_run)
    run = GridRun(choice, state["n_labeled"], 0, raw, folder / choice)
    echo(f"\ngenssl advise: retraining {choice} on all {state['n_labeled']} labels ({saved['budget_s']:.1f} s of CPU, "
         f"{saved['steps']} steps) -> {run.run_dir}")
    results, _ = train_run(run)
    method = results["method"]
    path = shlex.quote(str(run.run_dir))
    return {"candidate": choice, "method": method, "path": str(run.run_dir), "budget_s": saved["budget_s"],
            "steps": saved["steps"], "steps_done": results["steps"], "shortened": saved["shortened"],
            "budget_clock_s": results["budget_clock_s"], "wall_time_s": results["wall_time_s"],
            "predict": f"genssl predict {path} path/to/new/images --out predictions.csv",
            "export": f"genssl export {path}" if get_method_class(method).has_encoder else None}


# ---------------------------------------------------------------------------------------------- small helpers
def _read_json(path: Path):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AdviseError(f"{path} is damaged ({e}); delete it (or the whole folder) and run advise again") from e

