"""The two pictures of a comparison: test accuracy against the number of labels, and against wall-clock time.

Both read the summary rows of `genssl.compare.runner.summarize` (one per method and label count). We draw on a bare
`matplotlib.figure.Figure` with the Agg canvas instead of pyplot: no global backend state, no GUI, so it works
on headless machines and inside tests.
"""

from __future__ import annotations

import io
from pathlib import Path

from genssl.fileio import atomic_write_bytes


def _by_method(table: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped per method, in the table's order, each group sorted by label count."""
    groups: dict[str, list[dict]] = {}
    for row in table:
        groups.setdefault(row["method"], []).append(row)
    return {m: sorted(rows, key=lambda r: r["n_labels"]) for m, rows in groups.items()}


def _new_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(buf.getvalue(), path)


def accuracy_vs_labels(table: list[dict], path: str | Path, title: str = "") -> Path:
    """One line per method: mean test accuracy (%) at each label count, error bars = std over seeds."""
    fig, ax = _new_figure()
    counts = sorted({r["n_labels"] for r in table})
    groups = _by_method(table)
    spread = [i - (len(groups) - 1) / 2 for i in range(len(groups))]  # side by side, so error bars stay apart
    for (method, rows), k in zip(groups.items(), spread):
        if len(counts) > 1:  # log axis: multiplicative offsets
            xs = [r["n_labels"] * (1.0 + 0.04 * k) for r in rows]
        else:                # one label count: a categorical axis at 0
            xs = [0.05 * k for _ in rows]
        ax.errorbar(xs, [r["test_acc_mean"] for r in rows], yerr=[r["test_acc_std"] for r in rows], marker="o",
                    capsize=3, label=method)
    if len(counts) > 1:
        ax.set_xscale("log")
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.minorticks_off()
    else:
        ax.set_xticks([0], [str(counts[0])])
        ax.set_xlim(-0.5, 0.5)
    ax.set_xlabel("labeled examples")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "Accuracy against the number of labels")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, Path(path))
    return Path(path)


def accuracy_vs_time(table: list[dict], path: str | Path, title: str = "") -> Path:
    """Mean test accuracy (%) against mean wall time per run, one marker per (method, label count)."""
    fig, ax = _new_figure()
    for method, rows in _by_method(table).items():
        line = ax.errorbar([r["wall_time_s_mean"] for r in rows], [r["test_acc_mean"] for r in rows],
                           yerr=[r["test_acc_std"] for r in rows], marker="o", capsize=3, linewidth=0.8,
                           label=method)
        for r in rows:
            ax.annotate(f"{r['n_labels']}", (r["wall_time_s_mean"], r["test_acc_mean"]), fontsize="x-small",
                        xytext=(4, 4), textcoords="offset points", color=line[0].get_color())
    times = [r["wall_time_s_mean"] for r in table]
    if times and min(times) > 0 and max(times) / min(times) > 10:
        ax.set_xscale("log")
    ax.set_xlabel("wall time per run (s)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "Accuracy against training time (points labeled with the label count)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, Path(path))
    return Path(path)
