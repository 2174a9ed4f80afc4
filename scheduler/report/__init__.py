"""A run's report: `RUN_DIR/report/` with PNG figures and one self-contained report.html.

Made at the end of every run (unless `--no-report`) and by `python -m scheduler report
RUN_DIR` at any time, from what the run directory holds: events.jsonl, the folds'
metrics (carried by their events; metrics.json for a fold whose event lacks them) and
config.yaml. A run that is still going, was interrupted or has failed folds gets a report
of what exists, and the page says what is missing and why.
"""

import os
import time

import yaml

from lmtcnn.adience import AGE_GROUPS
from lmtcnn.files import read_json, write_bytes_atomic, write_text_atomic
from scheduler import rundir
from scheduler.results import build_results
from scheduler.runs import run_state

REPORT_DIR = "report"
PAGE = "report.html"


def write_report(run_dir, view, alive, now=None):
    """Write RUN_DIR/report/ for the run `view` (a RunView replayed from its events) whose
    driver is `alive` (True, False, or None: unknown, on another host). Returns the page's
    path. Each file is replaced whole, so a reader never sees half a figure."""
    from scheduler.report import figures as fg
    from scheduler.report import page
    from scheduler.report.history import history

    now = time.time() if now is None else now
    h = history(rundir.read_events(run_dir))
    results = build_results(view)
    confusions = fold_confusions(run_dir, view)
    summed = sum_matrices(confusions.values())
    drawn = [("Training curves", "training.png", fg.training_curves(h)),
             ("Test accuracy per fold", "accuracy.png", fg.accuracy_bars(results))]
    if confusions:
        panels = [("fold %d" % k, confusions.get(k), "fold %d: %s" % (k, view.folds[k].state))
                  for k in sorted(view.folds)]
        if len(confusions) > 1:
            panels.append(("sum of folds %s" % ", ".join(map(str, sorted(confusions))), summed, ""))
        drawn += [("Age confusion", "confusion.png", fg.age_confusion(panels)),
                  ("Accuracy per age group", "per_group.png",
                   fg.per_group_accuracy(sorted(confusions.items()), summed))]
    drawn.append(("Timeline", "timeline.png", fg.timeline(h)))

    out = os.path.join(run_dir, REPORT_DIR)
    pictures = []
    for heading, name, figure in drawn:
        data = fg.png(figure)
        write_bytes_atomic(os.path.join(out, name), data)
        pictures.append((heading, data))
    config_text = read_config_text(run_dir)
    per_group = group_accuracy(summed) if confusions else []
    html = page.page("%s: cross-validation report" % (view.name or os.path.basename(run_dir)),
                     facts(run_dir, view, alive, h, config_text, now), missing(run_dir, view, alive, h, confusions),
                     results, per_group, pictures, config_text)
    path = os.path.join(out, PAGE)
    write_text_atomic(path, html)
    return path


def fold_confusions(run_dir, view):
    """{fold: 8x8 age confusion counts} of the finished folds that recorded one."""
    out = {}
    for k, fold in view.folds.items():
        if fold.state != "done":
            continue
        matrix = (fold.metrics or {}).get("age_confusion")
        if matrix is None:
            try:
                matrix = read_json(os.path.join(run_dir, "fold_%d" % k, "metrics.json")).get("age_confusion")
            except (OSError, ValueError):
                matrix = None
        if matrix is not None:
            out[k] = matrix
    return out


def sum_matrices(matrices):
    """Element-wise sum of 8x8 count matrices (None for none)."""
    total = None
    for m in matrices:
        total = [list(row) for row in m] if total is None else [
            [a + b for a, b in zip(r, s)] for r, s in zip(total, m)]
    return total


def group_accuracy(matrix):
    """[(age group, test images, age top-1 %)] from summed confusion counts."""
    rows = []
    for i, group in enumerate(AGE_GROUPS):
        n = sum(matrix[i])
        rows.append((group, n, 100.0 * matrix[i][i] / n if n else 0.0))
    return rows


def read_config_text(run_dir):
    try:
        with open(os.path.join(run_dir, rundir.CONFIG), "r", encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        return "(no readable %s: %s)" % (rundir.CONFIG, e)


def facts(run_dir, view, alive, h, config_text, now):
    try:
        config = yaml.safe_load(config_text) or {}
    except yaml.YAMLError:
        config = {}
    model, train = config.get("model") or {}, config.get("train") or {}
    done = sum(f.state == "done" for f in view.folds.values())
    data = view.data or {}
    return [
        ("run directory", os.path.abspath(run_dir)),
        ("state", "%s; %d of %d folds finished" % (run_state([f.state for f in view.folds.values()], alive), done,
                                                   len(view.folds))),
        ("first and last event", "%s, %s (%d session%s)" % (stamp(h.first), stamp(h.last), len(h.sessions),
                                                             "" if len(h.sessions) == 1 else "s")),
        ("model", "%s at %s px" % (model.get("type", "?"), model.get("image_size", "?"))),
        ("training", "batch %s, learning rate %s, %s steps, augmentation %s" % (
            train.get("batch_size", "?"), train.get("learning_rate", "?"), train.get("max_steps", "?"),
            train.get("augment", "?"))),
        ("data", "%s (%s split)%s" % (data.get("dir", "?"), data.get("split", "?"),
                                      "; synthetic faces: published results not shown" if data.get("synthetic")
                                      else "")),
        ("report made", stamp(now)),
    ]


def stamp(seconds):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "-"


def missing(run_dir, view, alive, h, confusions):
    """Sentences on what this report cannot show yet, and why."""
    notes = []
    run_dir = os.path.abspath(run_dir)  # the page is read elsewhere: no path relative to here
    if alive or alive is None:
        notes.append("The run is still going: this is what exists at the time above; run `python -m scheduler "
                     "report %s` again later." % run_dir)
    validated = {a.fold for a in h.attempts.values() if a.evals}
    for k in sorted(view.folds):
        f = view.folds[k]
        where = " at step %d of %d" % (f.step, f.total_steps) if f.total_steps else ""
        if f.state == "failed":
            notes.append("Fold %d failed%s (%s): no test results." % (k, where, f.reason or "no reason recorded"))
        elif f.state in ("stopped", "interrupted"):
            notes.append("Fold %d was interrupted%s: no test results yet." % (k, where))
        elif f.state == "queued":
            notes.append("Fold %d has not started: no curves or test results." % k)
        elif f.state in ("running", "retrying"):
            notes.append("Fold %d is still training%s: no test results yet." % (k, where))
        elif k not in confusions:
            notes.append("Fold %d recorded no age confusion matrix: it is left out of the confusion figures." % k)
        if validated and k not in validated and f.state != "queued":
            notes.append("Fold %d has no validation results yet." % k)
    if alive is False and any(f.state != "done" for f in view.folds.values()):
        notes.append("Resume the unfinished folds (failed ones are tried again) with: python -m scheduler run "
                     "--resume %s" % run_dir)
    if not validated:
        notes.append("No validation results: train.eval_every_steps is 0, or no fold reached an evaluation.")
    return notes
