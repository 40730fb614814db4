"""The pictures of a comparison: test accuracy against the number of labels, against wall-clock time, and against
the equal-cost budget. Error bars and bands are 95% t intervals of the mean over seeds (genssl.compare.stats);
which method beats which is read from the report's paired columns, not from overlapping bars.

Both read the summary rows of `genssl.compare.report.summarize` (one per method and label count). We draw on a bare
`matplotlib.figure.Figure` with the Agg canvas instead of pyplot: no global backend state, no GUI, so it works
on headless machines and inside tests.

Every method can be told apart: the colour says its family (baselines, VAE family, GAN), the marker the method
(`styles`), and the legend lists the families' colours above the methods.
"""

from __future__ import annotations

import io
from pathlib import Path

import genssl.methods  # noqa: F401  (registers the built-in methods, whose declared scores give the families)
from genssl.compare.stats import mean_halfwidth
from genssl.fileio import atomic_write_bytes
from genssl.registry import METHODS

# A method's family from what it declares: the score of its generative model (Method.typicality_score) is a
# variational bound for the VAE family and log D(x) for a GAN; a method without one is a baseline. A generated-
# samples classifier belongs to the family of the model that generated its samples. OpenMatch's one-vs-all score
# ("ova") is a classifier's, so it stays a baseline.
FAMILY_OF_SCORE = {None: "baselines", "ova": "baselines", "elbo": "VAE family", "log_d": "GAN"}
FAMILY_COLOURS = {"baselines": "tab:blue", "VAE family": "tab:green", "GAN": "tab:red", "other": "tab:gray"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "p", "h", "d", "8")


def family(row: dict) -> str:
    """'baselines', 'VAE family', 'GAN', or 'other' (a method this process has not registered, or a new kind
    of score) for a summary row (its method_name, and source_method for a samples classifier)."""
    name = row.get("source_method") or row.get("method_name", "")
    if name not in METHODS:
        return "other"
    return FAMILY_OF_SCORE.get(METHODS.get(name).typicality_score, "other")


def styles(table: list[dict]) -> dict[str, tuple[str, str]]:
    """{method: (colour, marker)}: the family's colour, and a marker no earlier method of the table has (while
    the markers last; then one that no earlier method of the same colour has), so no two methods share both."""
    out: dict[str, tuple[str, str]] = {}
    for row in table:
        if row["method"] in out:
            continue
        colour = FAMILY_COLOURS[family(row)]
        taken = {m for _, m in out.values()}
        same_colour = {m for c, m in out.values() if c == colour}
        free = [m for m in MARKERS if m not in same_colour] or list(MARKERS)
        out[row["method"]] = (colour, next((m for m in free if m not in taken), free[0]))
    return out


def _legend(ax, table: list[dict], style: dict[str, tuple[str, str]]) -> None:
    """The families' colours (bars), then each method's colour and marker (without error bars, which would hide
    the marker), outside the axes on the right."""
    from matplotlib.lines import Line2D

    families = [f for f in FAMILY_COLOURS if any(family(r) == f for r in table)]
    handles = [Line2D([], [], color=FAMILY_COLOURS[f], linewidth=4, label=f) for f in families]
    handles += [Line2D([], [], color=colour, marker=marker, markersize=7, linewidth=1, label=method)
                for method, (colour, marker) in style.items()]
    ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _by_method(table: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped per method, in the table's order, each group sorted by label count."""
    groups: dict[str, list[dict]] = {}
    for row in table:
        groups.setdefault(row["method"], []).append(row)
    return {m: sorted(rows, key=lambda r: r["n_labels"]) for m, rows in groups.items()}


def _halfwidth(row: dict) -> float:
    return mean_halfwidth(row["test_acc_std"], row["seeds"])


def _new_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.4, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _finish(fig, ax, table: list[dict], style: dict, path: str | Path, xlabel: str, title: str) -> Path:
    """Axis labels, title, grid and legend, then the PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend(ax, table, style)
    _save(fig, Path(path))
    return Path(path)


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(buf.getvalue(), path)


def accuracy_vs_labels(table: list[dict], path: str | Path, title: str = "") -> Path:
    """One line per method: mean test accuracy (%) at each label count, error bars = its 95% interval."""
    fig, ax = _new_figure()
    counts = sorted({r["n_labels"] for r in table})
    groups = _by_method(table)
    style = styles(table)
    spread = [i - (len(groups) - 1) / 2 for i in range(len(groups))]  # side by side, so error bars stay apart
    for (method, rows), k in zip(groups.items(), spread):
        if len(counts) > 1:  # log axis: multiplicative offsets
            xs = [r["n_labels"] * (1.0 + 0.04 * k) for r in rows]
        else:                # one label count: a categorical axis at 0
            xs = [0.05 * k for _ in rows]
        colour, marker = style[method]
        ax.errorbar(xs, [r["test_acc_mean"] for r in rows], yerr=[_halfwidth(r) for r in rows], marker=marker,
                    color=colour, markersize=7, capsize=3, label=method)
    if len(counts) > 1:
        ax.set_xscale("log")
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.minorticks_off()
    else:
        ax.set_xticks([0], [str(counts[0])])
        ax.set_xlim(-0.5, 0.5)
    return _finish(fig, ax, table, style, path, "labeled examples", title or "Accuracy against the number of labels")


def accuracy_vs_time(table: list[dict], path: str | Path, title: str = "") -> Path:
    """Mean test accuracy (%) against mean wall time per run, one marker per (method, label count)."""
    fig, ax = _new_figure()
    style = styles(table)
    for method, rows in _by_method(table).items():
        colour, marker = style[method]
        ax.errorbar([r["wall_time_s_mean"] for r in rows], [r["test_acc_mean"] for r in rows],
                    yerr=[_halfwidth(r) for r in rows], marker=marker, color=colour, markersize=7, capsize=3,
                    linewidth=0.8, label=method)
        for r in rows:
            ax.annotate(f"{r['n_labels']}", (r["wall_time_s_mean"], r["test_acc_mean"]), fontsize="x-small",
                        xytext=(4, 4), textcoords="offset points", color=colour)
    times = [r["wall_time_s_mean"] for r in table]
    if times and min(times) > 0 and max(times) / min(times) > 10:
        ax.set_xscale("log")
    return _finish(fig, ax, table, style, path, "wall time per run (s)",
                   title or "Accuracy against training time (points labeled with the label count)")


def accuracy_vs_budget(table: list[dict], path: str | Path, title: str = "") -> Path:
    """One line per (method, label count): mean test accuracy (%) of the picks within each budget, with a band of
    its 95% interval over seeds."""
    fig, ax = _new_figure()
    style = styles(table)
    for r in table:
        points = sorted((b, p) for b, p in r.get("budgets", {}).items() if p["seeds"])
        if not points:
            continue
        colour, marker = style[r["method"]]
        xs = [b for b, _ in points]
        means = [p["mean"] for _, p in points]
        half = [mean_halfwidth(p["std"], p["seeds"]) for _, p in points]
        label = r["method"] + (f" ({r['n_labels']})" if len({x["n_labels"] for x in table}) > 1 else "")
        ax.plot(xs, means, marker=marker, color=colour, markersize=6, label=label)
        ax.fill_between(xs, [m - h for m, h in zip(means, half)], [m + h for m, h in zip(means, half)],
                        color=colour, alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    return _finish(fig, ax, table, style, path, "budget (s of the budget clock)",
                   title or "Accuracy at equal cost (bands: 95% intervals over seeds)")
