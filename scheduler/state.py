"""What the driver knows of a run, derived only from progress events.

`apply(view, event)` is the single state machine: the live dashboard, the plain-line
output and `scheduler status` (replaying events.jsonl) all go through it.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from lmtcnn import events as ev

# Events the driver itself adds to the trainer's vocabulary.
RUN_STARTED = "run_started"          # run_dir, folds, placement, where, resumed, data, run_key
FOLD_QUEUED = "fold_queued"          # fold, attempt
FOLD_RETRYING = "fold_retrying"      # fold, attempt (the next one), reason
FOLD_STALLED = "fold_stalled"        # fold, attempt, step, quiet_s (cancelled; a retry or failure follows)
FOLD_SKIPPED = "fold_skipped"        # fold (finished in an earlier session), metrics
RUN_INTERRUPTED = "run_interrupted"  # resume command
RUN_FINISHED = "run_finished"
NOTICE = "notice"                    # text

FINAL_STATES = ("done", "failed")


@dataclass
class FoldView:
    fold: int
    state: str = "queued"  # queued, running, retrying, done, failed, stopped
    attempt: int = 0
    host: str = ""
    device: str = ""
    step: int = 0
    total_steps: int = 0
    loss: Optional[float] = None
    learning_rate: Optional[float] = None
    images_per_s: Optional[float] = None
    last_eval: Optional[dict] = None
    metrics: Optional[dict] = None
    reason: str = ""
    # Rate over the current attempt: first step event seen (time, step).
    rate_origin: Optional[tuple] = None
    steps_per_s: Optional[float] = None
    wall_s: Optional[float] = None
    label: str = ""  # how the live view names the row when not by its fold alone (a sweep's "c2/3")


@dataclass
class RunView:
    name: str = ""
    run_dir: str = ""
    started_at: Optional[float] = None
    first_started_at: Optional[float] = None  # the run's first session: when the run began
    ended: str = ""  # "", "finished", "interrupted"
    data: dict = field(default_factory=dict)  # dir, synthetic, split, test_fingerprints: what the folds train on
    run_key: Optional[str] = None  # the run's identity, from its first session ("": before keys)
    folds: Dict[int, FoldView] = field(default_factory=dict)
    notices: List[str] = field(default_factory=list)


def apply(view, event):
    """Fold one event into `view` (mutated and returned)."""
    kind = event["event"]
    if kind == RUN_STARTED:
        view.name, view.run_dir = event.get("name", view.name), event.get("run_dir", view.run_dir)
        view.started_at = event["time"]  # elapsed counts this session, not downtime between
        if view.first_started_at is None:
            view.first_started_at = event["time"]
        view.data = event.get("data", view.data)
        if view.run_key is None:
            view.run_key = event.get("run_key", "")
        view.ended = ""
        for k in event["folds"]:
            fold = view.folds.setdefault(k, FoldView(k))
            if fold.state not in FINAL_STATES:  # a resumed session starts them afresh
                fold.state = "queued"
        return view
    if kind == NOTICE:
        view.notices.append(event["text"])
        return view
    if kind in (RUN_FINISHED, RUN_INTERRUPTED):
        view.ended = "finished" if kind == RUN_FINISHED else "interrupted"
        return view
    fold = view.folds.setdefault(event["fold"], FoldView(event["fold"]))
    if "attempt" in event:
        if event["attempt"] < fold.attempt:
            return view  # a late event of an attempt that has been superseded
        if fold.state in FINAL_STATES and event["attempt"] == fold.attempt and kind not in (
                FOLD_QUEUED, FOLD_RETRYING):
            return view  # progress that arrived after the attempt's end
        fold.attempt = event["attempt"]
    if kind == FOLD_QUEUED:
        # "retrying" lasts from a lost attempt until the fold ends; a resumed fold is queued.
        fold.state = "retrying" if fold.state == "retrying" else "queued"
    elif kind == FOLD_RETRYING:
        fold.state, fold.reason = "retrying", event["reason"]
    elif kind == FOLD_STALLED:
        fold.reason = "stalled at step %s: no report for %.0f s" % (event.get("step"), event["quiet_s"])
    elif kind == ev.FOLD_STARTED:
        fold.state = "retrying" if fold.state == "retrying" else "running"
        fold.host, fold.device = event.get("host", ""), event.get("device_label", event["device"])
        fold.step, fold.total_steps = event["start_step"], event["total_steps"]
        fold.rate_origin, fold.steps_per_s = None, None
    elif kind == ev.STEP_DONE:
        fold.step, fold.loss = event["step"], event["loss"]
        fold.learning_rate, fold.images_per_s = event["learning_rate"], event["images_per_s"]
        if fold.rate_origin is None:
            fold.rate_origin = (event["time"], event["step"])
        elif event["time"] > fold.rate_origin[0]:
            fold.steps_per_s = (event["step"] - fold.rate_origin[1]) / (event["time"] - fold.rate_origin[0])
    elif kind == ev.EVAL_DONE:
        fold.last_eval = dict(event["metrics"], split=event["split"], step=event["step"])
    elif kind == ev.FOLD_STOPPED:
        fold.state = "stopped"
        if event["step"] is not None:  # None: stopped before training began
            fold.step = event["step"]
    elif kind in (ev.FOLD_FINISHED, FOLD_SKIPPED):
        fold.state, fold.metrics = "done", event["metrics"]
        fold.step = event["metrics"].get("step", fold.step)
        fold.wall_s = event["metrics"].get("wall_s")
        fold.images_per_s = None if kind == FOLD_SKIPPED else fold.images_per_s
    elif kind == ev.FOLD_FAILED:
        fold.state, fold.reason = "failed", event["reason"]
    return view


def mark_interrupted(view):
    """For a run whose driver is gone: unfinished folds are interrupted, not running."""
    for fold in view.folds.values():
        if fold.state in ("queued", "running", "retrying"):
            fold.state = "interrupted"
    return view


def fold_eta_s(fold):
    if fold.state not in ("running", "retrying") or not fold.steps_per_s:
        return None
    return max(fold.total_steps - fold.step, 0) / fold.steps_per_s


def run_eta_s(view):
    """Remaining steps of all unfinished folds over the steps/s of the running ones."""
    rates = [f.steps_per_s for f in view.folds.values() if f.state in ("running", "retrying") and f.steps_per_s]
    if not rates:
        return None
    total = max((f.total_steps for f in view.folds.values()), default=0)
    remaining = sum(max((f.total_steps or total) - f.step, 0)
                    for f in view.folds.values() if f.state not in FINAL_STATES)
    return remaining / sum(rates)
