"""The run's result table: one row per fold, mean and spread, and the published rows.

Written as results.json, results.csv and results.md, and printed with rich. A fold that
did not finish shows its state (failed, stopped, ...), never a number. The published
Adience results (docs/REFERENCE.md) stand beside a run on real data only, with how
each side was scored (test-time batch norm, training augmentation).
"""

import csv
import io
import math

from rich.table import Table

from lmtcnn.files import write_json_atomic, write_text_atomic

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
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            summary[key] = {"mean": round(mean, 2), "std": round(std, 2)}
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
    std = ["std"] + ["%.2f" % s[k]["std"] if k in s else "-" for k, _ in METRIC_COLUMNS]
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


def to_csv(results):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["fold", "state"] + [key for key, _ in METRIC_COLUMNS] + ["steps", "device", "wall_s", "reason"])
    for row in results["folds"]:
        writer.writerow([row["fold"], row["state"]] + [row.get(key, "") for key, _ in METRIC_COLUMNS]
                        + [row.get("steps", ""), row["device"], row.get("wall_s", ""), row.get("reason", "")])
    for stat in ("mean", "std"):
        writer.writerow([stat, ""] + [results["summary"].get(k, {}).get(stat, "") for k, _ in METRIC_COLUMNS]
                        + ["", "", "", ""])
    return out.getvalue()


def _triple(row):
    return "%.2f/%.2f/%.2f" % (row["age_top1"], row["age_top2"], row["gender"])


def to_table(results):
    """Rich tables: one row per fold, mean and std; then, on real data, the published
    results fold by fold beside them."""
    from rich.console import Group
    from rich.text import Text

    table = Table(title="%s: accuracy per test fold (%%)" % results["name"], title_justify="left")
    for i, name in enumerate(HEADER):
        table.add_column(name, justify="left" if i in (0, len(HEADER) - 2) else "right", no_wrap=True)
    for row in results["folds"]:
        table.add_row(str(row["fold"]), *_cells(row), style="" if row["state"] == "done" else "red")
    mean, std = _summary_cells(results)
    table.add_section()
    table.add_row(*mean, style="bold")
    table.add_row(*std)
    if not results["reference"]:
        return Group(table, Text(recipe_line(results)), Text(reference_note(results)))
    # Fold by fold beside the published runs: age top-1 / age top-2 / gender, %.
    caption = "\n".join([recipe_line(results) + " (this run, every test image once)"] + scoring_lines(results))
    published = Table(title="beside the published results (age top-1/top-2/gender %%, %s)" % REFERENCE_DOC,
                      title_justify="left", caption=caption, caption_justify="left")
    sources = [("this run", None)] + [(source, folds) for source, folds, _, _ in REFERENCE_ROWS]
    published.add_column("fold", no_wrap=True)
    for source, _ in sources:
        published.add_column(source, justify="right")
    ours = {row["fold"]: row for row in results["folds"]}
    for k in range(5):
        mine = ours.get(k)
        cells = [_triple(mine) if mine and mine["state"] == "done" else (mine["state"] if mine else "")]
        cells += ["%.2f/%.2f/%.2f" % folds[k] if folds else "" for _, folds in sources[1:]]
        published.add_row(str(k), *cells)
    summary = results["summary"]
    mean = "/".join("%.2f" % summary[k]["mean"] for k in ("age_top1", "age_top2", "gender")) if summary else "-"
    published.add_section()
    published.add_row("mean", mean, *("%.2f/%.2f/%.2f" % m for _, _, m, _ in REFERENCE_ROWS), style="bold")
    return Group(table, published)
