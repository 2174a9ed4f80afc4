"""How long a fold attempt may stay quiet before the driver calls it stalled.

Pure bookkeeping on the driver's clock (events from other hosts carry their own clocks):
`Heartbeat.heard(event, now)` for every event of the attempt, `quiet_allowed()` for the
current allowance. Until the first step and during the attempt's first evaluation a
graph may be compiling (minutes on an NPU), so the allowance is
`scheduler.startup_timeout_s`. After that it is `scheduler.stall_timeout_s` when set,
else a few minutes past the slowest gap between two reports seen so far.
"""

from dataclasses import dataclass
from typing import Optional

from lmtcnn import events as ev

AUTO_MARGIN_S = 180.0  # what auto mode adds to the slowest gap seen
AUTO_FACTOR = 2.0      # ... or this multiple of it, whichever is longer


@dataclass
class Heartbeat:
    startup_timeout_s: float
    stall_timeout_s: float = 0.0  # 0: automatic
    last: Optional[float] = None  # driver time of the attempt's latest event; None: not heard from yet
    slowest_gap_s: float = 0.0
    stepped: bool = False         # a step finished: past the first graph compile
    evals_started: int = 0
    evaluating: bool = False

    def heard(self, event, now):
        kind = event["event"]
        if self.last is not None and self.steady():
            self.slowest_gap_s = max(self.slowest_gap_s, now - self.last)
        self.last = now
        if kind == ev.STEP_DONE:
            self.stepped = True
        elif kind == ev.EVAL_STARTED:
            self.evals_started += 1
            self.evaluating = True
        elif kind == ev.EVAL_DONE:
            self.evaluating = False

    def steady(self):
        """Past the compiles: the first step has run and no first evaluation is going on."""
        return self.stepped and not (self.evaluating and self.evals_started == 1)

    def quiet_allowed(self):
        if not self.steady():
            return max(self.startup_timeout_s, self.stall_timeout_s)
        if self.stall_timeout_s > 0:
            return self.stall_timeout_s
        return max(AUTO_FACTOR * self.slowest_gap_s, self.slowest_gap_s + AUTO_MARGIN_S)

    def stalled(self, now):
        """Seconds of silence when they exceed the allowance, else None."""
        if self.last is None:
            return None  # queued, or not started yet: placement is watched separately
        quiet = now - self.last
        return quiet if quiet > self.quiet_allowed() else None
