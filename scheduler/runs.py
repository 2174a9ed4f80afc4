"""`python -m scheduler list [RUNS_DIR]`: the runs below a directory, newest first.

A run directory is one holding config.yaml and events.jsonl. Each is read as `status`
reads it (its events replayed, its driver looked up through driver.lock): running,
finished, failed (every fold ended, some failed) or interrupted (its driver is gone with
folds unfinished).
"""

import csv
import io
import json
import os
import time

from lmtcnn.errors import UserError
from scheduler import state as st
from scheduler.results import build_results
from scheduler.rundir import CONFIG, EVENTS, replay

MEANS = (("age_top1", "top-1"), ("age_top2", "top-2"), ("gender", "gender"))
STARTED = "%Y-%m-%d %H:%M"


def list_command(args, console):
    rows = list_runs(args.runs_dir)
    if args.format:
        console.file.write(RENDERERS[args.format](rows, args.runs_dir))
    elif rows:
        console.print(to_table(rows, args.runs_dir))
    else:
        console.print(nothing_found(args.runs_dir), highlight=False, soft_wrap=True)
    return 0


def list_runs(runs_dir):
    """One dict per run directory below `runs_dir`, newest first; UserError when
    `runs_dir` is no directory."""
    if not os.path.isdir(runs_dir):
        raise UserError("%s: no such directory; name the directory that holds the runs (scheduler.runs_root), "
                        "e.g. `python -m scheduler list runs`" % runs_dir)
    rows = [describe_run(path, runs_dir) for path in find_run_dirs(runs_dir)]
    # Newest first; a run that never started (no start event) last.
    return sorted(rows, key=lambda row: (row["started_at"] is not None, row["started_at"] or 0, row["run"]),
                  reverse=True)


def find_run_dirs(root):
    """Directories at or below `root` holding config.yaml and events.jsonl; nothing inside
    a run directory is searched (its fold directories are no runs)."""
    found = []
    for path, subdirs, files in os.walk(root):
        if CONFIG in files and EVENTS in files:
            found.append(path)
            subdirs[:] = []
        else:
            subdirs.sort()
    return found


def describe_run(path, root):
    try:
        view, alive = replay(path)
    except OSError as e:  # one run that cannot be read (permissions, I/O) leaves the others listed
        view, alive = st.RunView(), False
        unreadable = "unreadable: %s" % (e.strerror or type(e).__name__)
    else:
        unreadable = ""
    results = build_results(view)
    summary = results["summary"]
    states = [f.state for f in view.folds.values()]
    return {"run": _run_name(path, root), "path": os.path.abspath(path), "started_at": view.first_started_at,
            "started": _local_time(view.first_started_at, "%Y-%m-%dT%H:%M:%S%z"),
            "state": unreadable or run_state(states, alive),
            "folds_done": states.count("done"), "folds": len(states),
            "failed_folds": sorted(k for k, f in view.folds.items() if f.state == "failed"),
            "mean": {key: summary[key]["mean"] for key in summary}, "model": model_type(path)}


def _run_name(path, root):
    """Its path below `root`; its own name when `root` is the run directory itself."""
    relative = os.path.relpath(path, root)
    return os.path.basename(os.path.abspath(path)) if relative == os.curdir else relative


def run_state(fold_states, alive):
    """running (or "running?": a driver on another host holds it, as far as its lock
    tells), finished, failed (every fold ended, some failed), interrupted (the driver is
    gone with folds unfinished), or "not started" (no fold was ever queued)."""
    if alive:
        return "running"
    if alive is None:
        return "running?"
    if not fold_states:
        return "not started"
    if any(state not in ("done", "failed") for state in fold_states):
        return "interrupted"
    return "failed" if "failed" in fold_states else "finished"


def model_type(run_dir):
    """model.type of the run's config.yaml; "?" when it cannot be read."""
    import yaml

    try:
        with open(os.path.join(run_dir, CONFIG), "r", encoding="utf-8") as f:
            return str(yaml.safe_load(f)["model"]["type"])
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError):
        return "?"


def nothing_found(runs_dir):
    return "no run directories below %s (a run directory holds %s and %s)" % (runs_dir, CONFIG, EVENTS)


def _local_time(seconds, form):
    return time.strftime(form, time.localtime(seconds)) if seconds else "-"


def _cells(row, started_form=STARTED, model_prefix=""):
    return ([row["run"], _local_time(row["started_at"], started_form), row["state"],
             "%d/%d" % (row["folds_done"], row["folds"])]
            + ["%.2f" % row["mean"][key] if key in row["mean"] else "-" for key, _ in MEANS]
            + [row["model"][len(model_prefix):] if row["model"].startswith(model_prefix) else row["model"]])


HEADER = ["run", "started", "state", "folds"] + [label for _, label in MEANS] + ["model"]
MODEL_PREFIX = "LMTCNN-"


def to_table(rows, runs_dir):
    """Fits 80 columns with a run name of 24 characters (a longer one wraps): the start
    without its year, the model as LMTCNN's variant (1-1, 2-1). Narrower, the start and
    then the model column go, rather than a number being cut."""
    from scheduler.widths import Fitted

    title = "runs below %s, newest first: mean accuracy (%%) over finished folds" % runs_dir
    everything = list(range(len(HEADER)))
    without_start = [i for i in everything if HEADER[i] != "started"]
    return Fitted(*[[_table(rows, title, shown)] for shown in
                    (everything, without_start, [i for i in without_start if HEADER[i] != "model"])])


def _table(rows, title, shown):
    """The table with the columns of HEADER whose indices are `shown`."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    headers = HEADER[:-1] + [MODEL_PREFIX.rstrip("-")]
    for i in shown:
        table.add_column(headers[i], justify="right" if 3 <= i < 3 + len(MEANS) + 1 else "left", no_wrap=i > 0,
                         overflow="fold", min_width=12 if i == 0 else None)
    for row in rows:
        cells = _cells(row, "%m-%d %H:%M", MODEL_PREFIX)
        table.add_row(*[cells[i] for i in shown], style="red" if row["state"] in ("failed", "interrupted") else "")
    return table


def to_markdown(rows, runs_dir):
    if not rows:
        return nothing_found(runs_dir) + "\n"
    lines = ["| " + " | ".join(HEADER + ["path"]) + " |", "|" + "---|" * (len(HEADER) + 1)]
    lines += ["| " + " | ".join(_cells(row) + [row["path"]]) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows, runs_dir):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["run", "started", "state", "folds_done", "folds", "failed_folds"]
                    + ["mean_" + key for key, _ in MEANS] + ["model", "path"])
    for row in rows:
        writer.writerow([row["run"], _local_time(row["started_at"], STARTED), row["state"], row["folds_done"],
                         row["folds"], " ".join(str(k) for k in row["failed_folds"])]
                        + [row["mean"].get(key, "") for key, _ in MEANS] + [row["model"], row["path"]])
    return out.getvalue()


def to_json(rows, runs_dir):
    return json.dumps(rows, indent=2, sort_keys=True) + "\n"


RENDERERS = {"md": to_markdown, "csv": to_csv, "json": to_json}
