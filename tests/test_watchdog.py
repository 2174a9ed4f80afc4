"""The stall allowance (scheduler.watchdog), on an injected clock: no waiting, no races."""

from lmtcnn import events as ev
from scheduler.watchdog import AUTO_MARGIN_S, Heartbeat


def event(kind, **fields):
    return dict(fields, event=kind)


def test_compile_allowance_until_the_first_step():
    beat = Heartbeat(startup_timeout_s=1800.0, stall_timeout_s=30.0)
    assert beat.stalled(10_000.0) is None  # never heard from: queued, not stalled
    beat.heard(event(ev.MESSAGE), 0.0)
    beat.heard(event(ev.FOLD_STARTED), 5.0)
    assert beat.quiet_allowed() == 1800.0
    assert beat.stalled(1805.0) is None
    assert beat.stalled(1806.0) == 1801.0
    beat.heard(event(ev.STEP_DONE, step=100), 1000.0)  # the first step took 995 s: a compile, not a gap
    assert beat.slowest_gap_s == 0.0 and beat.quiet_allowed() == 30.0
    assert beat.stalled(1030.0) is None and beat.stalled(1031.0) == 31.0


def test_automatic_allowance_follows_the_slowest_gap():
    beat = Heartbeat(startup_timeout_s=1800.0)
    beat.heard(event(ev.FOLD_STARTED), 0.0)
    t = 600.0
    for gap in (40.0, 90.0, 60.0):
        t += gap
        beat.heard(event(ev.STEP_DONE), t)
    # The first step's 600 s is compile time; the gaps after it are 90 and 60 s.
    assert beat.slowest_gap_s == 90.0
    assert beat.quiet_allowed() == 90.0 + AUTO_MARGIN_S
    beat.slowest_gap_s = 400.0  # a slow CPU fold: twice the gap beats the margin
    assert beat.quiet_allowed() == 800.0


def test_the_first_evaluation_may_compile_later_ones_may_not():
    beat = Heartbeat(startup_timeout_s=1800.0, stall_timeout_s=20.0)
    beat.heard(event(ev.STEP_DONE), 0.0)
    beat.heard(event(ev.EVAL_STARTED, split="val"), 5.0)
    assert beat.quiet_allowed() == 1800.0 and beat.stalled(1000.0) is None
    beat.heard(event(ev.EVAL_DONE, split="val"), 900.0)
    assert beat.slowest_gap_s == 5.0  # the first evaluation's 895 s do not count as a gap
    beat.heard(event(ev.EVAL_STARTED, split="test"), 910.0)
    assert beat.quiet_allowed() == 20.0 and beat.stalled(931.0) == 21.0


def test_a_later_evaluation_is_allowed_what_earlier_ones_took_per_image():
    beat = Heartbeat(startup_timeout_s=1800.0)
    beat.heard(event(ev.STEP_DONE), 0.0)
    beat.heard(event(ev.STEP_DONE), 10.0)  # steps report every 10 s: 190 s allowed
    beat.heard(event(ev.EVAL_STARTED, split="val", images=1000), 20.0)
    beat.heard(event(ev.EVAL_DONE, split="val"), 620.0)  # first: compile and 1000 images, 0.6 s each
    assert beat.slowest_gap_s == 10.0 and beat.eval_s_per_image == 0.6
    beat.heard(event(ev.STEP_DONE), 630.0)
    assert beat.quiet_allowed() == 10.0 + AUTO_MARGIN_S
    beat.heard(event(ev.EVAL_STARTED, split="val", images=1000), 640.0)
    assert beat.quiet_allowed() == 2 * 600.0  # what the first took, twice over
    beat.heard(event(ev.EVAL_DONE, split="val"), 840.0)  # without a compile: 0.2 s per image
    assert beat.slowest_gap_s == 10.0  # an evaluation is not a gap between training reports
    assert beat.eval_s_per_image == 0.2
    # The test split, three times the validation split, may take three times as long.
    beat.heard(event(ev.EVAL_STARTED, split="test", images=3000), 850.0)
    assert beat.quiet_allowed() == 2 * 600.0
    assert beat.stalled(850.0 + 1199.0) is None and beat.stalled(850.0 + 1201.0) == 1201.0


def test_an_evaluation_that_says_no_image_count_keeps_the_training_allowance():
    beat = Heartbeat(startup_timeout_s=1800.0)
    beat.heard(event(ev.STEP_DONE), 0.0)
    beat.heard(event(ev.EVAL_STARTED, split="val"), 5.0)
    beat.heard(event(ev.EVAL_DONE, split="val"), 100.0)
    beat.heard(event(ev.EVAL_STARTED, split="val"), 105.0)
    assert beat.eval_s_per_image is None and beat.quiet_allowed() == 5.0 + AUTO_MARGIN_S


def test_time_the_driver_was_away_is_not_charged_to_the_folds(tmp_path):
    """A driver suspended for ten minutes (Ctrl-Z, a batch system, a sleeping laptop) comes
    back to folds whose reports wait undrained: none is called stalled for that silence,
    and the watchdog still fires once they really go quiet."""
    from conftest import quiet_console, run_config
    from scheduler.session import Attempt, Session

    config = run_config(str(tmp_path / "data"), tmp_path / "run", [0], scheduler={"stall_timeout_s": 60.0})
    (tmp_path / "run").mkdir()
    session = Session(config, str(tmp_path / "run"), quiet_console(), live_mode=False, resumed=False,
                      placement="cpu", request={"CPU": 1}, info={})
    beat = Heartbeat(startup_timeout_s=1800.0, stall_timeout_s=60.0)
    session.pending["a task"] = Attempt(0, 1, beat)
    beat.heard(event(ev.STEP_DONE), 1000.0)
    session.check(1001.0)
    session.check(1001.0 + 600.0)  # the driver's next turn, ten minutes on: the loop was suspended
    assert session.pending["a task"].ended_by_driver == "" and beat.last == 1600.0
    # The folds' own silence still counts from there, turn by turn.
    for now in range(1602, 1660, 2):
        session.check(float(now))
    assert beat.stalled(1661.0) == 61.0
    session.log.close()
