"""A sweep's result table: one row per cell, as the run table has one row per fold.

Each cell's mean and sample std over its finished folds, the best cell by the sweep's
`rank_by` metric, and every other cell compared with the best fold by fold (the mean
difference, paired t-test and Wilcoxon of `scheduler compare`, on the folds both
finished and only on the same test sets). Written as results.{json,csv,md} in the sweep
directory and printed with rich.
"""

import csv
import io
import os

from rich.console import Group
from rich.table import Table
from rich.text import Text

from lmtcnn.errors import UserError
from lmtcnn.files import write_json_atomic, write_text_atomic
from scheduler.results import METRIC_COLUMNS, build_results
from scheduler.widths import Fitted, add_column

LABELS = dict(METRIC_COLUMNS)


def build_sweep_results(sweep, views):
    """`views`: {cell index: RunView} of every cell. A JSON-ready dict."""
    rows = []
    for cell in sweep.cells:
        results = build_results(views[cell.index])
        states = [row["state"] for row in results["folds"]]
        rows.append({"cell": cell.label, "dir": os.path.basename(cell.run_dir), "overrides": cell.overrides,
                     "folds": len(states), "finished_folds": results["finished_folds"],
                     "failed_folds": states.count("failed"), "summary": results["summary"]})
    best, note = _best(rows, sweep.rank_by)
    for row in rows:
        row["best"] = row["cell"] == best
        row["vs_best"] = None if best is None or row["best"] else _against(sweep, best, row, sweep.rank_by)
    notes = [note] if note else []
    if best is not None and len(rows) > 1:
        notes.append("vs best: the cell's %s minus the best cell's, in points, on the folds both finished, with the "
                     "paired t-test's p; `python -m scheduler compare BEST_CELL_DIR CELL_DIR` adds the 95%% interval "
                     "and Wilcoxon." % LABELS[sweep.rank_by])
    return {"name": sweep.name, "sweep_dir": sweep.sweep_dir, "rank_by": sweep.rank_by, "keys": sweep.keys,
            "cells": rows, "best": best, "notes": notes}


def _best(rows, metric):
    """(label of the best cell, a note or ""): the highest mean among cells that finished
    every fold; if none did, among those with any finished fold, and the note says so."""
    complete = [r for r in rows if r["finished_folds"] == r["folds"] and metric in r["summary"]]
    partial = [r for r in rows if metric in r["summary"]]
    pool = complete or partial
    if not pool:
        return None, "No cell has a finished fold yet: no best."
    best = max(pool, key=lambda r: r["summary"][metric]["mean"])
    if complete:
        return best["cell"], ""
    return best["cell"], "No cell finished every fold: the best is chosen among unfinished cells."


def _against(sweep, best_label, row, metric):
    """{mean_difference, ci95, t_test_p, wilcoxon_p, folds} of `row` minus the best cell, or
    {"note": why not}."""
    from scheduler.compare import compare_runs

    by_label = {c.label: c.run_dir for c in sweep.cells}
    try:
        report = compare_runs([by_label[best_label], by_label[row["cell"]]], metrics=[metric])
    except UserError as e:  # no finished fold in common, another test set: a note, not a failure
        return {"note": str(e)}
    stat = report["comparisons"][0]["metrics"][metric]
    return {key: stat[key] for key in ("mean_difference", "ci95", "t_test_p", "wilcoxon_p", "n", "sentence")}


def write_sweep_results(sweep_dir, results):
    write_json_atomic(os.path.join(sweep_dir, "results.json"), results)
    write_text_atomic(os.path.join(sweep_dir, "results.csv"), to_csv(results))
    write_text_atomic(os.path.join(sweep_dir, "results.md"), to_markdown(results))


def _mean_std(row, key, separator=" ± "):
    s = row["summary"].get(key)
    if s is None:
        return "-"
    return "%.2f" % s["mean"] + (separator + "%.2f" % s["std"] if s["std"] is not None else "")


def _folds_cell(row):
    text = "%d/%d" % (row["finished_folds"], row["folds"])
    return text + (" (%d failed)" % row["failed_folds"] if row["failed_folds"] else "")


def _vs_best_cell(row):
    if row["best"]:
        return "best"
    against = row["vs_best"]
    if not against:
        return "-"
    if "note" in against:
        return "n/a"
    p = against["t_test_p"]
    return "%+.2f" % against["mean_difference"] + (" (p %s)" % ("< 0.001" if p < 0.001 else "%.3g" % p)
                                                     if p is not None else "")


def _key_cells(results, row):
    return [_text(row["overrides"].get(key)) for key in results["keys"]]


def _text(value):
    return value if isinstance(value, str) else "%g" % value if isinstance(value, float) else str(value)


def to_table(results, metrics=tuple(LABELS)):
    """Rich tables that fit the width they are drawn at: all metrics, then fewer (the
    ranking metric and gender stay), then the grid's keys as a legend under the table."""
    rank_by = results["rank_by"]
    fewer = [k for k in LABELS if k in (rank_by, "gender")]
    title = "%s: accuracy per cell, mean ± std over test folds (%%)" % results["name"]
    notes = [Text(note) for note in results["notes"]]
    return Group(Fitted([_table(results, metrics, title, keys=True)] + notes,
                        [_table(results, fewer, title, keys=True)] + notes,
                        [_table(results, fewer, title, keys=False)] + _legend(results) + notes))


def _table(results, metrics, title, keys):
    table = Table(title=title, title_justify="left")
    add_column(table, "cell")
    if keys:
        for key in results["keys"]:
            add_column(table, key)
    add_column(table, "folds", justify="right")
    for key in metrics:
        add_column(table, LABELS[key], justify="right")
    add_column(table, "vs best", justify="right")
    for row in results["cells"]:
        cells = [row["cell"]] + (_key_cells(results, row) if keys else []) + [_folds_cell(row)]
        cells += [_mean_std(row, key) for key in metrics] + [_vs_best_cell(row)]
        table.add_row(*cells, style="bold green" if row["best"] else "")
    return table


def _legend(results):
    return [Text("%s: %s" % (row["cell"], " ".join("%s=%s" % (k, _text(row["overrides"].get(k)))
                                                 for k in results["keys"])))
            for row in results["cells"]]


def to_markdown(results):
    header = ["cell"] + results["keys"] + ["folds"] + [label for _, label in METRIC_COLUMNS] + ["vs best"]
    lines = ["# %s: accuracy per cell, mean ± std over test folds (%%)" % results["name"], "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results["cells"]:
        cells = ([("**%s**" % row["cell"]) if row["best"] else row["cell"]] + _key_cells(results, row)
                 + [_folds_cell(row)] + [_mean_std(row, key) for key, _ in METRIC_COLUMNS] + [_vs_best_cell(row)])
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + ["%s" % note for note in results["notes"]]
    sentences = [(row["cell"], row["vs_best"]) for row in results["cells"] if row["vs_best"]]
    if sentences:
        lines += [""] + ["- %s: %s" % (label, against.get("sentence") or against.get("note"))
                         for label, against in sentences]
    lines += ["", "Each cell is a run directory (`python -m scheduler table|report %s/<dir>`): %s."
              % (results["sweep_dir"], ", ".join("%s %s" % (r["cell"], r["dir"]) for r in results["cells"]))]
    return "\n".join(lines) + "\n"


def to_csv(results):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["cell", "dir"] + results["keys"] + ["folds", "finished_folds", "failed_folds"]
                    + ["%s_%s" % (key, stat) for key, _ in METRIC_COLUMNS for stat in ("mean", "std")]
                    + ["best", "vs_best_difference", "vs_best_t_test_p", "vs_best_wilcoxon_p"])
    for row in results["cells"]:
        stats = []
        for key, _ in METRIC_COLUMNS:
            s = row["summary"].get(key) or {}
            stats += [_blank(s.get("mean")), _blank(s.get("std"))]
        against = row["vs_best"] or {}
        writer.writerow([row["cell"], row["dir"]] + [_text(row["overrides"].get(k)) for k in results["keys"]]
                        + [row["folds"], row["finished_folds"], row["failed_folds"]] + stats
                        + [int(row["best"]), _blank(against.get("mean_difference")),
                           _blank(against.get("t_test_p")), _blank(against.get("wilcoxon_p"))])
    return out.getvalue()


def _blank(value):
    return "" if value is None else value
