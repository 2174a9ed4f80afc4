"""How long a fold attempt may stay quiet before the driver calls it stalled.

Pure bookkeeping on the driver's monotonic clock (events from other hosts carry their own
wall clocks, and a wall clock may be stepped):
`Heartbeat.heard(event, now)` for every event of the attempt, `quiet_allowed()` for the
current allowance. Until the first step and during the attempt's first evaluation a
graph may be compiling (minutes on an NPU), so the allowance is
`scheduler.startup_timeout_s`. After that it is `scheduler.stall_timeout_s` when set,
else a few minutes past the slowest gap between two reports seen so far; during a later
evaluation, which reports nothing until it ends, at least that much past the time the
evaluations seen so far took per image, times the images this one reads (the test split
is about three times the validation split on Adience).
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
    slowest_gap_s: float = 0.0    # between reports while training
    stepped: bool = False         # a step finished: past the first graph compile
    evals_started: int = 0
    evaluating: bool = False
    eval_images: int = 0          # images the evaluation going on reads (0: not said)
    eval_began: float = 0.0
    # Seconds per image of the latest evaluation that was not the first (whose time holds a
    # compile); the first one's until a later one has been seen. None: none measured.
    eval_s_per_image: Optional[float] = None

    def heard(self, event, now):
        kind = event["event"]
        if self.last is not None and self.steady() and not self.evaluating:
            self.slowest_gap_s = max(self.slowest_gap_s, now - self.last)
        self.last = now
        if kind == ev.STEP_DONE:
            self.stepped = True
        elif kind == ev.EVAL_STARTED:
            self.evals_started += 1
            self.evaluating = True
            self.eval_images, self.eval_began = int(event.get("images") or 0), now
        elif kind == ev.EVAL_DONE and self.evaluating:
            self.evaluating = False
            if self.eval_images and (self.evals_started > 1 or self.eval_s_per_image is None):
                self.eval_s_per_image = (now - self.eval_began) / self.eval_images

    def steady(self):
        """Past the compiles: the first step has run and no first evaluation is going on."""
        return self.stepped and not (self.evaluating and self.evals_started == 1)

    def quiet_allowed(self):
        if not self.steady():
            return max(self.startup_timeout_s, self.stall_timeout_s)
        if self.stall_timeout_s > 0:
            return self.stall_timeout_s
        allowed = max(AUTO_FACTOR * self.slowest_gap_s, self.slowest_gap_s + AUTO_MARGIN_S)
        if self.evaluating and self.eval_images and self.eval_s_per_image is not None:
            expected = self.eval_s_per_image * self.eval_images
            allowed = max(allowed, AUTO_FACTOR * expected, expected + AUTO_MARGIN_S)
        return allowed

    def stalled(self, now):
        """Seconds of silence when they exceed the allowance, else None."""
        if self.last is None:
            return None  # queued, or not started yet: placement is watched separately
        quiet = now - self.last
        return quiet if quiet > self.quiet_allowed() else None
