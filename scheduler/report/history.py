"""What happened in a run, as series a figure can draw, read from its events alone.

`history(events)` walks events.jsonl once and returns, per fold attempt, its training
curve, validation results, where and when it ran and how it ended, plus the run's
sessions (a resumed run has several) and its interruptions. Pure: no disk, no plotting.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from lmtcnn import events as ev
from scheduler import state as st

# How an attempt ended: "lost" when its session ended without word of it (the driver was
# killed), "open" while its events have not ended (the run is still going).
OUTCOMES = ("finished", "failed", "retried", "stalled", "stopped", "lost", "open")


@dataclass
class Attempt:
    fold: int
    number: int
    host: str = ""
    device: str = ""
    start_step: int = 0
    started: Optional[float] = None  # time of fold_started
    ended: Optional[float] = None    # time of its last event
    outcome: str = "open"
    reason: str = ""
    # (time, step, loss, learning rate, images/s) per step_done event.
    steps: List[Tuple[float, int, float, float, float]] = field(default_factory=list)
    # (step, metrics) per validation eval_done event.
    evals: List[Tuple[int, dict]] = field(default_factory=list)

    @property
    def lane(self):
        return "%s:%s" % (self.host, self.device) if self.host else "?"


@dataclass
class History:
    attempts: Dict[Tuple[int, int], Attempt] = field(default_factory=dict)
    # One per driver session: [start, end, how it ended] (finished, interrupted, lost: its
    # events just stop, the driver was killed; open: the last one, still going).
    sessions: List[list] = field(default_factory=list)
    first: Optional[float] = None
    last: Optional[float] = None

    def of_fold(self, fold):
        return [a for (k, _), a in sorted(self.attempts.items()) if k == fold]

    @property
    def folds(self):
        return sorted({k for k, _ in self.attempts})


def history(events):
    h = History()
    for e in events:
        t = e.get("time")
        if t is not None:
            h.first = t if h.first is None else min(h.first, t)
            h.last = t if h.last is None else max(h.last, t)
        kind = e["event"]
        if kind == st.RUN_STARTED:
            _close_session(h, "lost")
            h.sessions.append([t, t, "open"])
            continue
        if h.sessions and t is not None:
            h.sessions[-1][1] = max(h.sessions[-1][1], t)
        if kind in (st.RUN_INTERRUPTED, st.RUN_FINISHED):
            _close_session(h, "interrupted" if kind == st.RUN_INTERRUPTED else "finished")
            continue
        if "fold" not in e or "attempt" not in e:
            continue
        if kind == st.FOLD_RETRYING:
            # Tagged with the attempt that follows; it ends the one before.
            _end(h, e["fold"], e["attempt"] - 1, t, "retried", e.get("reason", ""))
            continue
        if kind == st.FOLD_QUEUED:
            continue
        a = h.attempts.setdefault((e["fold"], e["attempt"]), Attempt(e["fold"], e["attempt"]))
        if t is not None and a.outcome == "open":
            a.ended = t if a.ended is None else max(a.ended, t)
        if kind == ev.FOLD_STARTED:
            a.started, a.start_step = t, e["start_step"]
            a.host, a.device = e.get("host", ""), e.get("device_label", e.get("device", ""))
        elif kind == ev.STEP_DONE:
            a.steps.append((t, e["step"], e["loss"], e["learning_rate"], e["images_per_s"]))
        elif kind == ev.EVAL_DONE and e.get("split") == "val":
            a.evals.append((e["step"], e["metrics"]))
        elif kind == st.FOLD_STALLED:
            _end(h, e["fold"], e["attempt"], t, "stalled", "no report for %.0f s" % e["quiet_s"])
        elif kind == ev.FOLD_FINISHED:
            _end(h, e["fold"], e["attempt"], t, "finished")
        elif kind == ev.FOLD_FAILED:
            _end(h, e["fold"], e["attempt"], t, "failed", e.get("reason", ""))
        elif kind == ev.FOLD_STOPPED:
            _end(h, e["fold"], e["attempt"], t, "stopped")
    return h


def _close_session(h, how):
    """End the current session (if one is open) and every attempt still open in it: a
    driver that was killed left them running, as far as the events tell."""
    if not h.sessions or h.sessions[-1][2] != "open":
        return
    h.sessions[-1][2] = how
    for a in h.attempts.values():
        if a.outcome == "open":
            a.outcome = "lost"
            a.reason = a.reason or "the driver's session ended without word of this attempt"


def _end(h, fold, number, t, outcome, reason=""):
    a = h.attempts.get((fold, number))
    if a is None or a.outcome in ("finished", "failed"):
        return  # an attempt that never started, or a late event after its end
    if a.outcome == "stalled" and outcome == "retried":
        return  # the stall is the story; the retry that follows it is the next attempt
    a.outcome, a.reason = outcome, reason or a.reason
    if t is not None:
        a.ended = t if a.ended is None else max(a.ended, t)


def total_rate(h):
    """[(time, images/s summed over the attempts running then)]: each attempt counts with
    its latest reported rate from its first step until it ends."""
    changes = []
    for a in h.attempts.values():
        for t, _, _, _, rate in a.steps:
            changes.append((t, (a.fold, a.number), rate))
        if a.steps and a.ended is not None and a.outcome != "open":
            changes.append((max(a.ended, a.steps[-1][0]), (a.fold, a.number), 0.0))
    current, series = {}, []
    for t, key, rate in sorted(changes, key=lambda c: c[0]):
        current[key] = rate
        series.append((t, sum(current.values())))
    return series
