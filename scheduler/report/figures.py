"""The report's figures, drawn with matplotlib's object API on the Agg canvas: no pyplot,
so no global figure state and no display is ever needed (a driver on a headless host,
a test). Each function takes plain data and returns a Figure; `png(figure)` renders it.
"""

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from lmtcnn.adience import AGE_GROUPS
from scheduler.results import BESIDE_METRICS, METRIC_COLUMNS

DPI = 100
# Ten colours that stay apart in print; fold k always has the same one.
FOLD_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf")
# How an attempt bar in the timeline shows its end: the hatch, in black, so that it never
# takes a fold's colour; an attempt still going or cut off is pale.
OUTCOME_STYLES = {
    "finished": dict(hatch=None, alpha=0.9),
    "retried": dict(hatch="//", alpha=0.9),
    "stalled": dict(hatch="xx", alpha=0.9),
    "failed": dict(hatch="..", alpha=0.9),
    "stopped": dict(hatch="\\\\", alpha=0.9),
    "lost": dict(hatch="--", alpha=0.4),
    "open": dict(hatch=None, alpha=0.4),
}
# A published row's columns: age top-1, age top-2, gender.
PUBLISHED_INDEX = {key: i for i, key in enumerate(BESIDE_METRICS)}
PUBLISHED_MARKERS = ("D", "^", "s", "v")


def color(fold):
    return FOLD_COLORS[fold % len(FOLD_COLORS)]


def png(figure):
    FigureCanvasAgg(figure)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=DPI, bbox_inches="tight")
    return out.getvalue()


def training_curves(h):
    """Loss, learning rate and validation accuracy against step, every fold overlaid. Each
    attempt is its own line, so a retry that resumed from an earlier checkpoint shows as a
    break and a new start (a circle)."""
    fig = Figure(figsize=(9, 9), constrained_layout=True)
    loss, lr, val = fig.subplots(3, 1, sharex=True)
    for a in h.attempts.values():
        c = color(a.fold)
        if a.steps:
            steps = [s[1] for s in a.steps]
            loss.plot(steps, [s[2] for s in a.steps], color=c, lw=1.2)
            lr.plot(steps, [s[3] for s in a.steps], color=c, lw=1.2)
            if a.number > 1:
                loss.plot(steps[:1], [a.steps[0][2]], "o", mfc="none", color=c, ms=7)
        if a.evals:
            steps = [step for step, _ in a.evals]
            val.plot(steps, [100 * m["age_top1"] for _, m in a.evals], "-o", color=c, ms=3)
            val.plot(steps, [100 * m["gender"] for _, m in a.evals], "--s", color=c, ms=3)
    loss.set_ylabel("training loss")
    lr.set_ylabel("learning rate")
    val.set_ylabel("validation accuracy (%)")
    val.set_xlabel("step")
    if not any(a.evals for a in h.attempts.values()):
        val.text(0.5, 0.5, "no validation results (train.eval_every_steps 0, or none reached yet)",
                 ha="center", va="center", transform=val.transAxes, color="grey")
    if all(s[3] > 0 for a in h.attempts.values() for s in a.steps):
        lr.set_yscale("log")  # a staircase decay is a factor at each step
    handles = [Line2D([], [], color=color(k), label="fold %d" % k) for k in h.folds]
    if any(a.number > 1 and a.steps for a in h.attempts.values()):
        handles.append(Line2D([], [], marker="o", mfc="none", ls="none", color="black", label="retry starts"))
    handles += [Line2D([], [], ls="-", marker="o", color="grey", ms=3, label="val age top-1"),
                Line2D([], [], ls="--", marker="s", color="grey", ms=3, label="val gender")]
    loss.legend(handles=handles, loc="upper right", fontsize=8, ncol=2)
    for ax in (loss, lr, val):
        ax.grid(alpha=0.3)
    fig.suptitle("Training, every fold overlaid")
    return fig


def accuracy_bars(results):
    """Per-fold test accuracy, one panel per metric, with mean and sample std, and the
    published per-fold results as markers when the data is real Adience."""
    folds = results["folds"]
    labels = ["%d" % row["fold"] for row in folds] + ["mean"]
    fig = Figure(figsize=(11, 6.5), constrained_layout=True)
    axes = fig.subplots(2, 2).ravel()
    x = np.arange(len(labels))
    for ax, (key, title) in zip(axes, METRIC_COLUMNS):
        values = [row.get(key) for row in folds]
        for i, (row, v) in enumerate(zip(folds, values)):
            if v is None:
                ax.text(i, 1, row["state"], rotation=90, ha="center", va="bottom", color="red", fontsize=9)
            else:
                ax.bar(i, v, color=color(row["fold"]), width=0.7)
                ax.text(i, v, "%.1f" % v, ha="center", va="bottom", fontsize=7)
        summary = results["summary"].get(key)
        if summary:
            spread = summary["std"]  # None with one fold: no error bar, no "±0"
            ax.bar(len(folds), summary["mean"], yerr=spread, color="lightgrey", edgecolor="black", width=0.7,
                   capsize=4)
            ax.text(len(folds), summary["mean"] + (spread or 0) + 1,
                    "%.1f" % summary["mean"] + ("±%.1f" % spread if spread is not None else " (1 fold)"),
                    ha="center", va="bottom", fontsize=7)
        for j, ref in enumerate(results.get("reference") or []):
            if key not in PUBLISHED_INDEX:
                continue
            column = PUBLISHED_INDEX[key]
            xs, ys = [], []
            if ref["folds"]:
                for i, row in enumerate(folds):
                    if row["fold"] < len(ref["folds"]):
                        xs.append(i)
                        ys.append(ref["folds"][row["fold"]][column])
            xs.append(len(folds))
            ys.append(ref["mean"][column])
            ax.plot(xs, ys, PUBLISHED_MARKERS[j % len(PUBLISHED_MARKERS)], color="black", mfc="white", ms=6,
                    ls="none", label=ref["source"])
        ax.set_title(title)
        ax.set_xticks(x)
        ax.set_xticklabels(labels)
        ax.set_ylim(0, 105)
        ax.set_ylabel("%")
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xlabel("test fold")
    if results.get("reference"):
        axes[0].legend(loc="upper right", fontsize=7, title="published (docs/REFERENCE.md)", title_fontsize=7)
    fig.suptitle("Test accuracy per fold (bars), mean ± sample std over finished folds")
    return fig


def normalised(matrix):
    m = np.asarray(matrix, dtype=float)
    totals = m.sum(axis=1, keepdims=True)
    return np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)


def age_confusion(panels):
    """Row-normalised age confusion matrices: `panels` is [(title, 8x8 counts or None,
    note)], e.g. one per fold and their sum; None draws the note instead."""
    columns = 3
    rows = (len(panels) + columns - 1) // columns
    fig = Figure(figsize=(4.3 * columns, 4.2 * rows), constrained_layout=True)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    image = None
    for ax, (title, matrix, note) in zip(axes, panels):
        ax.set_title(title, fontsize=10)
        if matrix is None:
            ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True, color="red", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        share = normalised(matrix)
        image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(share.shape[0]):
            for j in range(share.shape[1]):
                if share[i, j] >= 0.005:
                    ax.text(j, i, "%.0f" % (100 * share[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if share[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(AGE_GROUPS)))
        ax.set_yticks(range(len(AGE_GROUPS)))
        ax.set_xticklabels(AGE_GROUPS, rotation=60, fontsize=7)
        ax.set_yticklabels(AGE_GROUPS, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true (row %)", fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.6, label="share of the true group")
    fig.suptitle("Age confusion, row-normalised (% of each true group)")
    return fig


def per_group_accuracy(folds, summed):
    """Age top-1 accuracy per true group: bars for all folds together, a marker per fold.
    `folds` is [(fold, 8x8 counts)], `summed` their sum."""
    fig = Figure(figsize=(9, 4.2))
    ax = fig.subplots()
    x = np.arange(len(AGE_GROUPS))
    total = np.asarray(summed, dtype=float)
    ax.bar(x, 100 * np.diag(normalised(total)), color="lightgrey", edgecolor="black", label="all folds")
    for i, n in enumerate(total.sum(axis=1)):
        ax.text(i, 1, "n=%d" % n, ha="center", va="bottom", fontsize=7, rotation=90)
    for fold, matrix in folds:
        m = np.asarray(matrix, dtype=float)
        has = m.sum(axis=1) > 0
        ax.plot(x[has], 100 * np.diag(normalised(m))[has], "o", color=color(fold), label="fold %d" % fold, ms=5)
    ax.set_xticks(x)
    ax.set_xticklabels(AGE_GROUPS)
    ax.set_xlabel("true age group")
    ax.set_ylabel("age top-1 (%)")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=3)
    ax.set_title("Accuracy per age group")
    return fig


class TimeAxis:
    """Seconds since the run began, as x positions in a readable unit, with each long gap
    between driver sessions (a run resumed the next day) cut to a narrow band, so that
    the sessions, not the downtime, fill the figure."""

    def __init__(self, h):
        sessions = [(start, end) for start, end, _ in h.sessions] or [(h.first or 0.0, h.last or 0.0)]
        active = max(sum(end - start for start, end in sessions), 1.0)
        self.origin = sessions[0][0]
        self.band = 0.03 * active  # the width a cut gap keeps
        self.cuts = []  # (gap start, gap end, seconds removed before its end)
        removed = 0.0
        for (_, end), (start, _) in zip(sessions, sessions[1:]):
            if start - end > 2 * self.band:
                removed += (start - end) - self.band
                self.cuts.append((end, start, removed))
        span = max(((h.last or self.origin) - self.origin) - removed, 1.0)
        self.scale, self.unit = (3600.0, "hours") if span > 3 * 3600 else (
            (60.0, "minutes") if span > 180 else (1.0, "seconds"))

    def x(self, t):
        removed = 0.0  # seconds of cut gaps before t
        for gap_start, gap_end, removed_by_end in self.cuts:
            if t >= gap_end:
                removed = removed_by_end
            elif t > gap_start:  # inside a cut gap: squeezed linearly into its band
                before = removed_by_end - (gap_end - gap_start - self.band)
                share = (t - gap_start) / (gap_end - gap_start)
                return (gap_start - self.origin - before + share * self.band) / self.scale
        return (t - self.origin - removed) / self.scale

    def label(self):
        return "%s of the run%s" % (self.unit, " (gaps between sessions cut)" if self.cuts else "")


SESSION_ENDS = {"interrupted": dict(color="red", ls="--", label="interrupted (Ctrl-C, SIGTERM)"),
                "lost": dict(color="black", ls="-.", label="driver lost (killed)")}


def timeline(h):
    """Each attempt as a bar on its host:device lane (colour: fold; hatch: how it ended),
    folds that failed before any device took them as crosses, how each session ended and
    where the next began as vertical lines; below, images/s over time."""
    from scheduler.dashboard import format_duration
    from scheduler.report.history import total_rate

    axis = TimeAxis(h)
    rows, labels = timeline_rows(h)
    unplaced = [a for a in h.attempts.values() if a.started is None and a.outcome == "failed"]
    if unplaced:
        labels.append("never placed")
    fig = Figure(figsize=(11, 2.2 + 0.45 * max(len(labels), 1) + 2.6), constrained_layout=True)
    bars, rates = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [max(len(labels), 1), 3]})
    smallest = (axis.x(h.last or axis.origin) - axis.x(axis.origin)) / 400  # a bar stays visible
    for a, y in rows:
        start = axis.x(a.started)
        width = max(axis.x(a.ended or a.started) - start, smallest)
        bars.broken_barh([(start, width)], (y - 0.35, 0.7), facecolor=color(a.fold), edgecolor="black",
                         linewidth=0.8, **OUTCOME_STYLES[a.outcome])
        bars.text(start + width / 2, y, "f%d#%d" % (a.fold, a.number), ha="center", va="center", fontsize=7)
    for a in unplaced:
        bars.plot([axis.x(a.ended)], [len(labels) - 1], "x", color=color(a.fold), ms=9, mew=2)
        bars.text(axis.x(a.ended), len(labels) - 1.3, "f%d#%d" % (a.fold, a.number), ha="center", fontsize=7)
    for start, end, how in h.sessions:
        if how in SESSION_ENDS:
            style = dict(SESSION_ENDS[how])
            style.pop("label")
            bars.axvline(axis.x(end), lw=1, **style)
    for start, _, _ in h.sessions[1:]:
        bars.axvline(axis.x(start), color="green", ls=":", lw=1)
    for gap_start, gap_end, _ in axis.cuts:
        for ax in (bars, rates):
            ax.axvspan(axis.x(gap_start), axis.x(gap_end), color="lightgrey", alpha=0.6, lw=0)
        bars.text((axis.x(gap_start) + axis.x(gap_end)) / 2, -0.5, "away\n%s" % format_duration(gap_end - gap_start),
                  ha="center", va="top", fontsize=6)
    bars.set_yticks(range(len(labels)))
    bars.set_yticklabels(labels, fontsize=8)
    bars.set_ylim(-0.6, max(len(labels), 1) - 0.4)
    bars.invert_yaxis()
    handles = [Patch(facecolor="white", edgecolor="black", label=outcome, **OUTCOME_STYLES[outcome])
               for outcome in OUTCOME_STYLES if any(a.outcome == outcome for a in h.attempts.values())]
    handles += [Line2D([], [], lw=1, **SESSION_ENDS[how]) for how in SESSION_ENDS
                if any(session[2] == how for session in h.sessions)]
    if len(h.sessions) > 1:
        handles.append(Line2D([], [], color="green", ls=":", label="session resumed"))
    bars.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    bars.set_title("Attempts per device (f<fold>#<attempt>)")
    for a in h.attempts.values():
        if a.steps:
            rates.plot([axis.x(s[0]) for s in a.steps], [s[4] for s in a.steps], color=color(a.fold), lw=0.8,
                       alpha=0.7)
    total = total_rate(h)
    if total:
        rates.step([axis.x(t) for t, _ in total], [r for _, r in total], where="post", color="black", lw=1.5,
                   label="all folds")
        rates.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    rates.set_ylabel("images/s")
    rates.set_xlabel(axis.label())
    rates.grid(alpha=0.3)
    return fig


def timeline_rows(h):
    """[(attempt, row)] and the rows' labels: one row per host:device, and more when
    attempts overlap on it (CPU folds share the label "CPU" of their host), packed so
    that a bar never hides another."""
    placed, labels = [], []
    by_lane = {}
    for a in sorted((a for a in h.attempts.values() if a.started is not None), key=lambda a: a.started):
        by_lane.setdefault(a.lane, []).append(a)
    for lane in sorted(by_lane):
        rows = []  # this lane's rows: [row index, when its last bar ends]
        for a in by_lane[lane]:
            row = next((r for r in rows if r[1] <= a.started), None)
            if row is None:
                row = [len(labels), 0.0]
                labels.append(lane if not rows else "%s (%d)" % (lane, len(rows) + 1))
                rows.append(row)
            row[1] = a.ended or a.started
            placed.append((a, row[0]))
    return placed, labels
