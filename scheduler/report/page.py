"""report.html: one self-contained page (figures embedded as base64 PNG, inline style) that
opens offline, mailed or copied anywhere."""

import base64
import html

from scheduler.results import METRIC_COLUMNS, recipe_line, scoring_lines

STYLE = """
body { font-family: sans-serif; max-width: 1150px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.summary td { font-weight: bold; background: #f4f4f4; }
td.bad { color: #b00; text-align: left; }
.missing { background: #fff4e5; border-left: 4px solid #f0a030; padding: 0.5em 1em; }
img { max-width: 100%; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def page(title, facts, missing, results, per_group, figures, config_text):
    """`facts`: [(label, text)]; `missing`: sentences; `figures`: [(heading, png bytes)];
    `per_group`: [(group, n, accuracy %)] over all finished folds (empty: none)."""
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
             "<title>%s</title><style>%s</style></head><body>" % (html.escape(title), STYLE),
             "<h1>%s</h1>" % html.escape(title), _facts(facts)]
    if missing:
        parts.append("<div class='missing'><b>Not in this report:</b><ul>%s</ul></div>"
                     % "".join("<li>%s</li>" % html.escape(m) for m in missing))
    parts += ["<h2>Test accuracy per fold (%)</h2>", results_table(results)]
    if results.get("reference"):
        parts += ["<h3>Published results (age top-1 / age top-2 / gender, %)</h3>", published_table(results)]
    if per_group:
        parts += ["<h3>Age top-1 per true group, all finished folds</h3>", _per_group_table(per_group)]
    for heading, data in figures:
        parts.append("<h2>%s</h2><img alt='%s' src='data:image/png;base64,%s'>" % (
            html.escape(heading), html.escape(heading), base64.b64encode(data).decode("ascii")))
    parts += ["<h2>Configuration</h2><pre>%s</pre>" % html.escape(config_text), "</body></html>"]
    return "\n".join(parts) + "\n"


def _facts(facts):
    return "<table>%s</table>" % "".join("<tr><th>%s</th><td style='text-align:left'>%s</td></tr>" % (
        html.escape(label), html.escape(text)) for label, text in facts)


def results_table(results):
    head = ["fold"] + [label for _, label in METRIC_COLUMNS] + ["steps", "device", "tries", "wall time"]
    rows = ["<tr>%s</tr>" % "".join("<th>%s</th>" % html.escape(h) for h in head)]
    for row in results["folds"]:
        if row["state"] == "done":
            cells = ["%.2f" % row[key] for key, _ in METRIC_COLUMNS] + [
                str(row.get("steps", "")), row["device"], str(row["attempts"]),
                "%.0f s" % row["wall_s"] if row.get("wall_s") is not None else ""]
            rows.append("<tr><td>%d</td>%s</tr>" % (row["fold"], "".join("<td>%s</td>" % html.escape(c)
                                                                        for c in cells)))
        else:
            text = row["state"] + (": " + row["reason"] if row.get("reason") else "")
            rows.append("<tr><td>%d</td><td class='bad' colspan='%d'>%s</td></tr>" % (
                row["fold"], len(head) - 1, html.escape(text)))
    for stat in ("mean", "std"):
        cells = ["%.2f" % results["summary"][key][stat] if results["summary"].get(key, {}).get(stat) is not None
                 else "-" for key, _ in METRIC_COLUMNS]
        rows.append("<tr class='summary'><td>%s</td>%s<td colspan='4'></td></tr>" % (
            stat, "".join("<td>%s</td>" % c for c in cells)))
    note = "Finished folds: %d of %d; mean and sample std over finished folds. %s" % (
        results["finished_folds"], len(results["folds"]), recipe_line(results))
    return "<table>%s</table><p>%s</p>" % ("".join(rows), html.escape(note))


def published_table(results):
    rows = ["<tr><th>source</th>%s<th>mean</th></tr>" % "".join("<th>fold %d</th>" % k for k in range(5))]
    for ref in results["reference"]:
        folds = ["%.2f/%.2f/%.2f" % tuple(f) for f in ref["folds"]] if ref["folds"] else [""] * 5
        rows.append("<tr><td>%s</td>%s<td>%.2f/%.2f/%.2f</td></tr>" % (
            html.escape(ref["source"]), "".join("<td>%s</td>" % f for f in folds), *ref["mean"]))
    how = "".join("<li>%s</li>" % html.escape(line) for line in scoring_lines(results))
    return "<table>%s</table><p>How each was scored (this run counts every test image once):</p><ul>%s</ul>" % (
        "".join(rows), how)


def _per_group_table(per_group):
    head = "<tr><th>age group</th>%s</tr>" % "".join("<th>%s</th>" % html.escape(g) for g, _, _ in per_group)
    count = "<tr><td>test images</td>%s</tr>" % "".join("<td>%d</td>" % n for _, n, _ in per_group)
    share = "<tr><td>age top-1 %%</td>%s</tr>" % "".join(
        "<td>%s</td>" % ("%.1f" % a if n else "-") for _, n, a in per_group)
    return "<table>%s%s%s</table>" % (head, count, share)
