"""The live view: a pure function of the run's state (built from events) and the clock.

`render(view, now)` returns a rich renderable; it calls no Ray, TensorFlow or disk.
`format_event(event)` is the same information as one plain line, for output that is not a
terminal (`ray job submit`, CI, a pipe) or `--no-dashboard`.
"""

from rich.console import Group
from rich.table import Table
from rich.text import Text

from lmtcnn import events as ev
from scheduler import state as st

STATE_STYLES = {"queued": "dim", "running": "cyan", "retrying": "yellow", "done": "green",
                "failed": "bold red", "stopped": "magenta", "interrupted": "magenta"}
BAR_WIDTH = 16


def render(view, now):
    table = Table(title="%s  %s" % (view.name, view.run_dir), title_justify="left", expand=False)
    for name, justify in (("fold", "right"), ("state", "left"), ("host:device", "left"),
                          ("progress", "left"), ("loss", "right"), ("lr", "right"), ("img/s", "right"),
                          ("ETA", "right"), ("eval % (top-1/top-2/gender)", "left"), ("try", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    for k in sorted(view.folds):
        f = view.folds[k]
        table.add_row(
            str(k),
            Text(f.state, style=STATE_STYLES.get(f.state, "")),
            "%s:%s" % (f.host, f.device) if f.host else "-",
            progress_cell(f),
            "%.4f" % f.loss if f.loss is not None and f.state != "done" else "-",
            "%.2g" % f.learning_rate if f.learning_rate is not None and f.state != "done" else "-",
            "%.0f" % f.images_per_s if f.images_per_s and f.state in ("running", "retrying") else "-",
            format_duration(st.fold_eta_s(f)),
            eval_cell(f),
            str(f.attempt or "-"),
        )
    parts = [table, Text(summary_line(view, now))]
    for fold in sorted(view.folds.values(), key=lambda f: f.fold):
        if fold.state in ("failed", "retrying") and fold.reason:
            parts.append(Text("fold %d: %s" % (fold.fold, fold.reason), style=STATE_STYLES[fold.state]))
    parts.extend(Text(n, style="yellow") for n in view.notices[-3:])
    return Group(*parts)


def progress_cell(f):
    if not f.total_steps:
        return "-"
    filled = int(BAR_WIDTH * min(f.step, f.total_steps) / f.total_steps)
    return "%s %d/%d" % ("█" * filled + "░" * (BAR_WIDTH - filled), f.step, f.total_steps)


def eval_cell(f):
    if f.state == "done" and f.metrics:
        m = f.metrics
        return "test %.1f/%.1f/%.1f" % (100 * m["age_top1"], 100 * m["age_top2"], 100 * m["gender"])
    if f.last_eval:
        e = f.last_eval
        return "%s@%d %.1f/%.1f/%.1f" % (e["split"], e["step"], 100 * e["age_top1"], 100 * e["age_top2"],
                                         100 * e["gender"])
    return "-"


def summary_line(view, now):
    folds = list(view.folds.values())
    done = sum(f.state == "done" for f in folds)
    failed = sum(f.state == "failed" for f in folds)
    rate = sum(f.images_per_s or 0 for f in folds if f.state in ("running", "retrying"))
    elapsed = now - view.started_at if view.started_at else None
    text = "folds done %d/%d" % (done, len(folds))
    if failed:
        text += ", failed %d" % failed
    text += "  |  %.0f images/s  |  elapsed %s  |  ETA %s" % (rate, format_duration(elapsed),
                                                              format_duration(st.run_eta_s(view)))
    return text


def format_duration(seconds):
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return "%d:%02d:%02d" % (h, m, s) if h else "%d:%02d" % (m, s)


def format_event(event):
    """One plain line per event, e.g. 'fold 2 try 1 vm:NPU1  step 100/150 loss 0.5321 ...'."""
    kind = event["event"]
    if "fold" not in event:
        if kind == st.RUN_STARTED:
            return "run %s: folds %s on %s -> %s" % (event["name"], ",".join(map(str, event["folds"])),
                                                   event["placement"], event["run_dir"])
        if kind == st.NOTICE:
            return "note: %s" % event["text"]
        if kind == st.RUN_INTERRUPTED:
            return "interrupted; resume with: %s" % event["resume"]
        return kind.replace("_", " ")
    where = "fold %d try %d" % (event["fold"], event.get("attempt", 0))
    if event.get("host"):
        where += " %s" % event["host"] + (":%s" % event["device_label"] if event.get("device_label") else "")
    if kind == ev.STEP_DONE:
        what = "step %d/%s loss %.4f lr %.2g %.0f images/s" % (event["step"], event.get("total_steps", "?"),
                                                               event["loss"], event["learning_rate"],
                                                               event["images_per_s"])
    elif kind == ev.FOLD_STARTED:
        what = "started on %s at step %d of %d" % (event["device"], event["start_step"], event["total_steps"])
    elif kind in (ev.EVAL_DONE, ev.FOLD_FINISHED, st.FOLD_SKIPPED):
        m = event["metrics"]
        label = {ev.EVAL_DONE: "%s eval" % event.get("split"), ev.FOLD_FINISHED: "finished, test",
                 st.FOLD_SKIPPED: "already finished, test"}[kind]
        what = "%s: age top-1 %.2f%% top-2 %.2f%% gender %.2f%% (%d images)" % (
            label, 100 * m["age_top1"], 100 * m["age_top2"], 100 * m["gender"], m["count"])
    elif kind == ev.CHECKPOINT_SAVED:
        what = "checkpoint at step %d" % event["step"]
    elif kind == ev.EVAL_STARTED:
        what = "evaluating the %s split at step %d" % (event["split"], event["step"])
    elif kind == st.FOLD_STALLED:
        what = "stalled at step %s: no report for %.0f s; cancelled" % (event.get("step"), event["quiet_s"])
    elif kind in (ev.FOLD_FAILED, st.FOLD_RETRYING):
        what = "%s: %s" % ("failed" if kind == ev.FOLD_FAILED else "retrying", event["reason"])
    elif kind == ev.FOLD_STOPPED:
        what = ("stopped at step %d (checkpoint saved)" % event["step"] if event["step"] is not None
                else "stopped before training started")
    elif kind == ev.MESSAGE:
        what = event["text"]
    else:
        what = kind.replace("_", " ")
    return "%s  %s" % (where, what)
