"""The live view of a sweep: one line per cell, then its folds in one table, grouped by cell.

A pure function of the cells' states (each built from its own events), as the run's view
is: the cells' folds are laid into one view, each row named "c2/3" (cell 2, fold 3) and
ordered by cell, and the run's dashboard draws it, so rows to watch, narrowing and
height limits behave as they do for a run.
"""

import dataclasses

from rich.text import Text

from scheduler import state as st
from scheduler.dashboard import LiveView, format_duration

ROW_STRIDE = 100  # merged row keys: cell index x ROW_STRIDE + fold, so rows sort by cell, then fold


def render_sweep(sweep, views, now, width=None, height=None):
    """`views`: each cell's RunView, in the order of sweep.cells."""
    merged = merge(sweep, views)
    return LiveView(merged, now, width, height, title=Text("\n".join(
        ["sweep %s  %s" % (sweep.name, sweep.sweep_dir)]
        + [cell_line(cell, view) for cell, view in zip(sweep.cells, views)])))


def merge(sweep, views):
    merged = st.RunView(name=sweep.name, run_dir=sweep.sweep_dir)
    starts = [v.started_at for v in views if v.started_at]
    merged.started_at = min(starts) if starts else None
    notices = []
    for cell, view in zip(sweep.cells, views):
        for fold in view.folds.values():
            key = cell.index * ROW_STRIDE + fold.fold
            merged.folds[key] = dataclasses.replace(fold, fold=key, label="%s/%d" % (cell.label, fold.fold))
        notices.append([(cell.label, text) for text in view.notices])
    # A notice every cell got (the driver's own: nodes, a stop) is told once, the others
    # with their cell.
    everywhere = set.intersection(*[{text for _, text in cell} for cell in notices]) if notices else set()
    told = set()
    for cell in notices:
        for label, text in cell:
            if text in everywhere:
                if text not in told:
                    told.add(text)
                    merged.notices.append(text)
            else:
                merged.notices.append("%s: %s" % (label, text))
    return merged


def cell_line(cell, view):
    """"c2 model.type=LMTCNN-2-1 train.learning_rate=0.003: 3/5 done, 1 running, age top-1 61.2"."""
    folds = list(view.folds.values())
    counts = [(sum(f.state == state for f in folds), state) for state in ("done", "running", "retrying", "failed")]
    parts = ["%d/%d done" % (counts[0][0], len(folds))] + ["%d %s" % (n, state) for n, state in counts[1:] if n]
    scores = [f.metrics["age_top1"] for f in folds if f.state == "done" and f.metrics]
    if scores:
        parts.append("age top-1 %.1f" % (100 * sum(scores) / len(scores)))
    eta = st.run_eta_s(view)
    if eta is not None:
        parts.append("ETA %s" % format_duration(eta))
    return "%s %s: %s" % (cell.label, cell.describe(), ", ".join(parts))
