"""The texts of `genssl advise`: the plan (printed before anything trains; --dry-run stops after it) and the advice
(printed, and written as DIR/advice.md beside DIR/advice.json)."""

from __future__ import annotations

from genssl.advise.plan import margin_s
from genssl.compare.report import fmt_duration

HELDOUT_NOTE = ("held-out accuracy: each run's accuracy on its repeat's held-out labeled images, scored once with "
                "the weights it picked on its own validation images (within_se), so the images that score a run never "
                "chose its weights")


def _pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def plan_text(state: dict) -> str:
    """The plan, as printed."""
    u, p, pilot, pool = state["data"], state["plan"], state["pilot"], state.get("pool_check")
    reads = ", ".join(f"{r}" for r in u["read"])
    lines = [f"genssl advise: {u['source']}",
             f"  read: {reads}: {u['n_labeled']} labeled images in {len(u['classes'])} classes "
             f"({', '.join(f'{c} {n}' for c, n in list(u['per_class'].items())[:12])}"
             f"{', ...' if len(u['per_class']) > 12 else ''}); {u['n_unlabeled']} unlabeled images in "
             f"{u['unlabeled']}",
             f"  never read: {', '.join(u['ignored'])} (advise assumes no test set)" if u["ignored"] else
             "  no test folder is read: every estimate comes from your labeled images",
             f"  images: {u['image_size'][0]}x{u['image_size'][1]}, {u['channels']} channel(s)",
             f"  evaluation: {p['repeats']} repeats, each a stratified split of your labels into {state['n_train']} to "
             f"train on (each run holds {int(100 * state['val_fraction'])}% of them out, at least 1 per class, to pick "
             f"its weights) and {state['n_heldout']} held out to score it; the same splits for every candidate, so "
             f"the repeats pair",
             f"  budget: {fmt_duration(state['budget_s'])} of wall time (the whole command stays within it plus a "
             f"margin of {fmt_duration(margin_s(state['budget_s']))}); {state['executor']}, "
             f"{p['slots'] if p['slots'] < 10**6 else 'every'} run(s) at once, "
             f"one thread each; CPU contention x{p['factor']:.2f} (wall seconds per CPU second, with other "
             f"processes keeping {state['load_avg']:.1f} of {state['cores']} cores busy)",
             "  pilot, one thread, seconds of the budget clock per training step: "
             + ", ".join(f"{n} {1000 * c['s_per_step']:.1f} ms" for n, c in pilot.items())]
    if pool is not None:
        lines.append(f"  pool check: ~{100 * pool['atypical_share']:.0f}% of the unlabeled images look unlike the "
                     f"labeled classes to M1 ({100 * pool['flagged_share']:.0f}% flagged at its "
                     f"{100 * pool['quantile']:.0f}% threshold, AUROC labeled vs pool "
                     f"{pool['auroc_labeled_vs_pool']:.2f}; "
                     f"{pool['pool_scored']} pool images scored). Caveat: {pool['caveat']}")
        lines.append(f"  filtered variants: {state['filtered_reason']}")
    lines.append(f"  per run: {p['run_budget_s']:.1f} s of the budget clock (train.budgets_s, stop_at_budget), "
                 f"schedules cut to fit:")
    for n in p["candidates"]:
        role = " (reference)" if n == state["reference"] else ""
        lines.append(f"    {n:<24} {p['steps'][n]:>7} steps{role}")
    for note in state.get("candidate_notes", []) + p["left_out"]:
        lines.append(f"    {note}")
    mde, compared = p["min_detectable_effect"], len(p["candidates"]) - 1
    needed = p.get("repeats_to_decide", 6)  # plans written before it was recorded: one candidate's 6
    family = f" across {compared} candidates" if compared > 1 else ""
    lines.append("  smallest detectable effect: " + (
        f"~{mde:.1f} accuracy points = (z + 0.84) * sqrt(2 * 0.8 * 0.2 / {p['heldout_per_repeat']} held-out images) "
        f"/ sqrt({p['repeats']} repeats) (5% two-sided{', Bonferroni' + family if family else ''}, 80% power, at "
        f"80% accuracy with independent errors)"
        if mde is not None else f"none: {p['repeats']} repeats cannot reach p < 0.05"
        f"{' (Holm' + family + ')' if family else ''} ({needed} are needed), so every difference will be "
        f"'undecided'"))
    runs = p["repeats"] * len(p["candidates"])
    lines.append(f"  runs: {runs} in the grid" + (f" (+{p['repeats']} M1 filter runs)" if p.get("filter_budget_s")
                                                  else "") + f", then the recommended candidate retrained on all "
                 f"{state['n_labeled']} labels; planned to end after ~{fmt_duration(p['planned_wall_s'])}")
    return "\n".join(lines)


def table_markdown(rows: list[dict], reference: str) -> str:
    head = ("| candidate | held-out acc. % (mean ± sd) | vs " + reference + ": Δ points [95% interval], p (Holm) | "
            "verdict | corrected interval | steps | CPU s / run | cost × " + reference + " |")
    lines = [head, "|---|---:|---|---|---|---:|---:|---:|"]
    for r in rows:
        acc = (f"{r['heldout_acc_mean']:.1f} ± {r['heldout_acc_sd']:.1f}" if r.get("heldout_acc_sd") is not None
               else _pct(r.get("heldout_acc_mean")))
        if r["candidate"] == reference:
            diff, verdict, nb = "(reference)", "", ""
        elif "diff_mean" in r:
            diff = (f"{r['diff_mean']:+.1f} [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}], p={r['p']:.2g} "
                    f"({r['p_holm']:.2g})")
            verdict = r["verdict"]
            nb = f"[{r['corrected_ci'][0]:+.1f}, {r['corrected_ci'][1]:+.1f}]" if r.get("corrected_ci") else "—"
        else:
            diff, verdict, nb = "—", "no runs", "—"
        cost = f"{r['cost_vs_reference']:.1f}" if r.get("cost_vs_reference") else "—"
        lines.append(f"| {r['candidate']} | {acc} | {diff} | {verdict} | {nb} | {_pct(r.get('steps_mean'), 0)} | "
                     f"{_pct(r.get('cpu_s_mean'))} | {cost} |")
    return "\n".join(lines)


def advice_markdown(advice: dict) -> str:
    rec, final, t, pool = advice["recommendation"], advice["final_run"], advice["time"], advice.get("pool_check")
    plan = advice["plan"]
    lines = [f"# Does semi-supervised learning help on {advice['data']['source']}?", "",
             f"**{rec['sentence'][0].upper() + rec['sentence'][1:]}.**", "", rec["more"], "",
             "## Every candidate", "", table_markdown(advice["candidates"], advice["reference"]), "",
             f"{plan['repeats']} repeats: stratified splits of your {advice['n_labeled']} labels into "
             f"{advice['n_train']} to train on and {advice['n_heldout']} held out, the same for every candidate. "
             f"{HELDOUT_NOTE[0].upper() + HELDOUT_NOTE[1:]}. Δ: the mean per-repeat difference from "
             f"{advice['reference']}, its 95% BCa bootstrap interval and exact sign-flip p (Holm-adjusted across "
             f"candidates); a verdict is 'better' or 'worse' only when the Holm p < 0.05 and the interval excludes 0. "
             f"Corrected interval: the t interval of Nadeau & Bengio (2003), which allows for repeats sharing images. "
             f"Each run had {plan['run_budget_s']:.1f} s of the budget clock (CPU seconds of one thread); cost: its "
             f"mean CPU seconds over {advice['reference']}'s."]
    for note in advice.get("left_out", []):
        lines.append(f"- {note}")
    if advice.get("failures"):
        lines += ["", "Failed runs (left out of the table):", *(f"- {k}: {v}" for k, v in advice["failures"].items())]
    if pool is not None:
        lines += ["", "## The unlabeled pool", "",
                  f"About {100 * pool['atypical_share']:.0f}% of your unlabeled images look unlike the labeled classes "
                  f"to a Gaussian M1 ({100 * pool['flagged_share']:.0f}% of {pool['pool_scored']} scored images fall "
                  f"outside the band that holds {100 - 100 * pool['quantile']:.0f}% of {pool['labeled_scored']} "
                  f"held-out labeled images; score: {pool['score']}; AUROC labeled vs unlabeled "
                  f"{pool['auroc_labeled_vs_pool']:.2f}, 0.5 = alike). Filtered variants: "
                  f"{advice['filtered_reason']}.", "",
                  f"Caveat: {pool['caveat']}."]
    lines += ["", "## Your model", ""]
    if final.get("path"):
        lines += [f"{final['candidate']} retrained on all your labels ({int(100 * advice['val_fraction'])}% of each "
                  f"class held out to pick its weights, as in every run) within {final['budget_s']:.1f} s of the "
                  f"budget clock ({final.get('steps_done', '?')} steps): `{final['path']}`, a normal run folder.", "",
                  "```bash", final["predict"]]
        lines += [final["export"], "```"] if final.get("export") else \
            ["```", "", f"({final['method']} has no encoder to export: `genssl export` refuses it; predict works.)"]
        lines += ["", "Its results.json's `test_acc` is measured on your own labeled images, which it trained on: "
                  "advise never reads a test folder. The figure to quote is the held-out accuracy above."]
    else:
        lines.append(final.get("note", "No final run."))
    lines += ["", "## Time", "",
              f"Budget {fmt_duration(t['budget_s'])} (+ margin {fmt_duration(t['margin_s'])}); spent "
              f"{fmt_duration(t['spent_s'])} over {t['sessions']} session(s)" +
              (f"; this session {fmt_duration(t['this_session_s'])}" if t["sessions"] > 1 else "") +
              ". Phases of this session: " + ", ".join(f"{k} {fmt_duration(v)}" for k, v in t["phases"].items()) + ".",
              "", "## Files", "",
              "- `plan.json`, `grid.yaml`: the plan and the grid it ran (`genssl compare grid.yaml` runs it again)",
              "- `results.md`, `paired.csv`, `runs.csv`, the plots: the grid's report (it calls the held-out accuracy "
              "'test')",
              "- `splits/`: the repeats' train and held-out lists",
              f"- TensorBoard of every run: `tensorboard --logdir {advice['out']}`"]
    return "\n".join(lines) + "\n"
