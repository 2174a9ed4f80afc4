"""The run's result table: one row per fold, mean and spread, and the published rows.

Written as results.json, results.csv and results.md, and printed with rich. A fold that
did not finish shows its state (failed, stopped, ...), never a number. The published
Adience results (docs/REFERENCE.md) stand beside a run on real data only, with how
each side was scored (test-time batch norm, training augmentation).
"""

import csv
import io
import math

from rich.console import Group
from rich.table import Table
from rich.text import Text

from lmtcnn.files import write_json_atomic, write_text_atomic
from scheduler.widths import Fitted, add_column

METRIC_COLUMNS = (("age_top1", "age top-1"), ("age_top2", "age top-2"), ("age_one_off", "age 1-off"),
                  ("gender", "gender"))
REFERENCE_DOC = "docs/REFERENCE.md"
# The port's evaluation writes its result after ceil(N/128)-1 batches but divides by
# ceil(N/128)x128 images, so its numbers sit 3.3-4.5% below its accuracy on the images it
# did score.
_PORT_SCORING = ("hits in the first ceil(N/128)-1 test batches of 128 divided by ceil(N/128)x128 images: "
                 "3.3-4.5% (relative) under the accuracy on the images scored; test-batch batch norm")
# Published per-fold results, % (age top-1, age top-2, gender), and how each was scored,
# in a line printed beside them; sources: docs/REFERENCE.md.
REFERENCE_ROWS = (
    ("Ascend port, GPU", [(49.06, 73.42, 83.63), (37.08, 60.61, 80.89), (44.81, 70.06, 79.34),
                          (40.73, 65.35, 80.74), (38.92, 64.18, 77.60)], (42.12, 66.72, 80.44), _PORT_SCORING),
    ("Ascend port, NPU", [(45.11, 68.75, 80.95), (36.43, 58.50, 78.52), (41.09, 66.37, 77.25),
                          (41.68, 64.37, 80.64), (40.10, 65.25, 79.25)], (40.88, 64.65, 79.32), _PORT_SCORING),
    ("authors' repo, LMTCNN-2-1", [(50.15, 76.61, 87.85), (39.42, 63.67, 83.76), (49.56, 73.12, 85.81),
                                   (42.19, 69.84, 86.38), (42.82, 69.56, 83.48)], (44.83, 70.56, 85.46),
     "ceil(N/128) test batches of 128, the last wrapping to the start (up to 127 images counted twice); "
     "test-batch batch norm"),
    ("paper (as quoted by the Ascend port)", None, (40.84, 66.10, 82.04), "means only"),
)


def build_results(view):
    """Rows per fold (from a RunView), with mean and sample std over finished folds."""
    rows = []
    for k in sorted(view.folds):
        f = view.folds[k]
        row = {"fold": k, "state": f.state, "device": "%s:%s" % (f.host, f.device) if f.host else "",
               "attempts": f.attempt}
        if f.state == "done" and f.metrics:
            m = f.metrics
            row.update({key: round(100 * m[key], 2) for key, _ in METRIC_COLUMNS})
            row.update(steps=m.get("step"), wall_s=m.get("wall_s"), test_images=m.get("count"))
        else:
            row.update(reason=f.reason)
        rows.append(row)
    done = [r for r in rows if r["state"] == "done"]
    summary = {}
    for key, _ in METRIC_COLUMNS:
        values = [r[key] for r in done]
        if values:
            mean = sum(values) / len(values)
            # One fold has no spread to tell: None, shown as "-", never a reassuring 0.00.
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
            summary[key] = {"mean": round(mean, 2), "std": None if std is None else round(std, 2)}
    finished = [view.folds[k].metrics for k in sorted(view.folds) if view.folds[k].state == "done"]
    synthetic = bool(view.data.get("synthetic"))
    return {"name": view.name, "run_dir": view.run_dir, "folds": rows, "finished_folds": len(done),
            "summary": summary, "data": view.data,
            # How the finished folds were trained and scored (older folds did not record it).
            "batch_norm_at_test": _recipe(finished, "batch_norm", "moving averages"),
            "augment": _recipe(finished, "augment", "authors"),
            "reference": [] if synthetic else [{"source": s, "folds": f, "mean": m, "scored": how}
                                               for s, f, m, how in REFERENCE_ROWS]}


def _recipe(metrics, key, before_recorded):
    values = sorted({m.get(key, before_recorded) for m in metrics})
    return " and ".join(values) if values else ""


def recipe_line(results):
    """One sentence on how this run trained and scored, for the tables."""
    parts = []
    if results.get("augment"):
        parts.append("training augmentation: %s" % results["augment"])
    if results.get("batch_norm_at_test"):
        parts.append("test-time batch norm: %s" % results["batch_norm_at_test"])
    return "; ".join(parts)


def reference_note(results):
    if results["reference"]:
        return ("Published results (age top-1 / age top-2 / gender, %%; sources and how each was scored: %s)"
                % REFERENCE_DOC)
    return "Synthetic data, not Adience: the published results (%s) are not comparable and not shown." % REFERENCE_DOC


def scoring_lines(results):
    """"source(s): how they were scored", sources scored alike on one line."""
    by_text = {}
    for ref in results["reference"]:
        if ref.get("scored"):
            by_text.setdefault(ref["scored"], []).append(ref["source"])
    return ["%s: %s" % (" and ".join(sources), text) for text, sources in by_text.items()]


def write_results(run_dir, results):
    import os

    write_json_atomic(os.path.join(run_dir, "results.json"), results)
    write_text_atomic(os.path.join(run_dir, "results.csv"), to_csv(results))
    write_text_atomic(os.path.join(run_dir, "results.md"), to_markdown(results))


def _cells(row):
    if row["state"] != "done":
        return [row["state"]] + [""] * (len(METRIC_COLUMNS) - 1) + ["", row["device"], ""]
    return (["%.2f" % row[key] for key, _ in METRIC_COLUMNS]
            + [str(row["steps"]), row["device"], "%.0f s" % row["wall_s"] if row["wall_s"] is not None else ""])


HEADER = ["fold"] + [label for _, label in METRIC_COLUMNS] + ["steps", "device", "wall time"]


def _summary_cells(results):
    s = results["summary"]
    mean = ["mean"] + ["%.2f" % s[k]["mean"] if k in s else "-" for k, _ in METRIC_COLUMNS]
    std = ["std"] + ["%.2f" % s[k]["std"] if k in s and s[k]["std"] is not None else "-" for k, _ in METRIC_COLUMNS]
    return mean + ["", "", ""], std + ["", "", ""]


def to_markdown(results):
    lines = ["# %s: age and gender accuracy per test fold" % results["name"], "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in results["folds"]:
        lines.append("| %d | %s |" % (row["fold"], " | ".join(_cells(row))))
    for cells in _summary_cells(results):
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Finished folds: %d of %d. Mean and sample std over finished folds. %s."
              % (results["finished_folds"], len(results["folds"]), recipe_line(results).capitalize() or "-"),
              "", reference_note(results) + ":" if results["reference"] else reference_note(results)]
    if results["reference"]:
        lines += ["", "| source | " + " | ".join("fold %d" % k for k in range(5)) + " | mean |", "|---" * 7 + "|"]
        for ref in results["reference"]:
            folds = ["%.2f/%.2f/%.2f" % tuple(f) for f in ref["folds"]] if ref["folds"] else [""] * 5
            lines.append("| %s | %s | %.2f/%.2f/%.2f |" % (ref["source"], " | ".join(folds), *ref["mean"]))
        lines += ["", "How each was scored (this run counts every test image once):", ""]
        lines += ["- " + line for line in scoring_lines(results)]
    return "\n".join(lines) + "\n"


def _blank_none(value):
    return "" if value is None else value


def to_csv(results):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["fold", "state"] + [key for key, _ in METRIC_COLUMNS] + ["steps", "device", "wall_s", "reason"])
    for row in results["folds"]:
        writer.writerow([row["fold"], row["state"]] + [row.get(key, "") for key, _ in METRIC_COLUMNS]
                        + [row.get("steps", ""), row["device"], row.get("wall_s", ""), row.get("reason", "")])
    for stat in ("mean", "std"):
        writer.writerow([stat, ""] + [_blank_none(results["summary"].get(k, {}).get(stat)) for k, _ in METRIC_COLUMNS]
                        + ["", "", "", ""])
    return out.getvalue()


# The per-fold table's header when the full one does not fit: "age" moves into the title.
SHORT_HEADER = ["fold"] + [label.replace("age ", "") for _, label in METRIC_COLUMNS] + ["steps", "device", "wall"]
# The numbers laid beside the published ones, which report these three.
BESIDE_METRICS = ("age_top1", "age_top2", "gender")
SOURCE_WIDTH = 14  # the source column of the published results with folds as columns; names wrap


def to_table(results):
    """Rich tables, numbers never cut, in the width they are printed at: one row per fold,
    mean and std; then, on real data, the published results fold by fold beside them.
    Narrower, the per-fold headers shorten, then device and wall time move under the
    table; the published results turn folds into columns, each cell's numbers stacked."""
    short_title = "%s: age (top-1, top-2, 1-off) and gender accuracy per test fold (%%)" % results["name"]
    per_fold = Fitted([_fold_table(results, HEADER, "%s: accuracy per test fold (%%)" % results["name"])],
                      [_fold_table(results, SHORT_HEADER, short_title)],
                      [_fold_table(results, SHORT_HEADER[:-2], short_title)] + _where_lines(results))
    if not results["reference"]:
        return Group(per_fold, Text(recipe_line(results)), Text(reference_note(results)))
    caption = "\n".join([recipe_line(results) + " (this run, every test image once)"] + scoring_lines(results))
    return Group(per_fold, Fitted([_beside_by_fold(results, caption)], [_beside_by_source(results, caption)]))


def _fold_table(results, header, title):
    """One row per fold, then mean and std, in the first len(header) columns of HEADER."""
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(header):
        add_column(table, name, justify="left" if i in (0, len(HEADER) - 2) else "right")
    n = len(header)
    for row in results["folds"]:
        table.add_row(*([str(row["fold"])] + _cells(row))[:n], style="" if row["state"] == "done" else "red")
    mean, std = _summary_cells(results)
    table.add_section()
    table.add_row(*mean[:n], style="bold")
    table.add_row(*std[:n])
    return table


def _where_lines(results):
    """The device and wall time columns as lines under a table without them:
    "fold 0: vm:NPU0, 1834 s"."""
    lines = []
    for row in results["folds"]:
        where = [cell for cell in _cells(row)[-2:] if cell]
        if where:
            lines.append(Text("fold %d: %s" % (row["fold"], ", ".join(where))))
    return lines


def _beside(results):
    """[(source, cells of folds 0-4, cells of the mean)] for this run and each published
    row; a fold's cells are its BESIDE_METRICS in %, or the state of a fold of this run
    that did not finish."""
    ours = {row["fold"]: row for row in results["folds"]}

    def our_fold(k):
        row = ours.get(k)
        if row is None:
            return []
        return ["%.2f" % row[key] for key in BESIDE_METRICS] if row["state"] == "done" else [row["state"]]

    summary = results["summary"]
    rows = [("this run", [our_fold(k) for k in range(5)],
             ["%.2f" % summary[key]["mean"] for key in BESIDE_METRICS] if summary else ["-"])]
    for ref in results["reference"]:
        folds = [["%.2f" % v for v in fold] for fold in ref["folds"]] if ref["folds"] else [[]] * 5
        rows.append((ref["source"], folds, ["%.2f" % v for v in ref["mean"]]))
    return rows


def _beside_by_fold(results, caption):
    """Folds as rows, one column per source, a cell "top-1/top-2/gender"."""
    table = Table(title="beside the published results (age top-1/top-2/gender %%, %s)" % REFERENCE_DOC,
                  title_justify="left", caption=caption, caption_justify="left")
    columns = [(source, ["/".join(cells) for cells in folds + [mean]]) for source, folds, mean in _beside(results)]
    add_column(table, "fold")
    for source, cells in columns:
        # A long source name wraps within the numbers' width rather than widening its column.
        add_column(table, source, justify="right", max_width=max(len(cell) for cell in cells))
    for k in range(5):
        table.add_row(str(k), *[cells[k] for _, cells in columns])
    table.add_section()
    table.add_row("mean", *[cells[5] for _, cells in columns], style="bold")
    return table


def _beside_by_source(results, caption):
    """Sources as rows, folds as columns, each cell's top-1, top-2 and gender stacked."""
    table = Table(title="beside the published results: each cell age top-1, age top-2, gender (%%, %s)"
                        % REFERENCE_DOC, title_justify="left", caption=caption, caption_justify="left",
                  show_lines=True)
    add_column(table, "source", max_width=SOURCE_WIDTH)
    for k in range(5):
        add_column(table, "fold %d" % k, justify="right")
    add_column(table, "mean", justify="right", style="bold")
    for source, folds, mean in _beside(results):
        table.add_row(source, *["\n".join(cells) for cells in folds + [mean]])
    return table
