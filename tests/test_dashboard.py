"""The dashboard is a pure function of the events received so far, the clock and the
size it is drawn at.

A scripted run of five folds (one finished, one failed, one retried on another device,
one queued, one running) goes through `state.apply`, then `dashboard.render` draws it
into a plain-text console of a fixed size with a fixed `now`; no Ray, TensorFlow or disk
is involved. At every width from 60 columns up no cell is cut, and a run with more folds
than rows keeps to the console's height.
"""

import io
import itertools
import subprocess
import sys
from collections import Counter

import pytest
from rich.cells import cell_len
from rich.console import Console
from rich.live import Live

from conftest import ROOT
from lmtcnn import events as ev
from scheduler import dashboard
from scheduler import state as st

T0 = 1700000000.0  # the run's first event, seconds since the epoch
NOW = T0 + 3725.0  # the dashboard's clock: 1 h 2 min 5 s into the run
TOTAL = 1000  # training steps per fold


def metrics(top1, top2, one_off, gender, count, **extra):
    """A metrics dict shaped like lmtcnn.metrics.compute_metrics's (fractions in [0, 1])."""
    m = {"count": count, "age_top1": top1, "age_top2": top2, "age_one_off": one_off, "gender": gender,
         "age_confusion": [[0] * 8 for _ in range(8)]}
    m.update(extra)
    return m


FINISHED_METRICS = metrics(0.523, 0.75, 0.9, 0.812, 117, step=TOTAL, wall_s=1834.2, device="npu")


def trainer(kind, fold, attempt, host, label, t, **fields):
    """A trainer event as fold_task.run_fold forwards it: tagged with fold, attempt, host, device."""
    return ev.make(kind, time=T0 + t, fold=fold, attempt=attempt, host=host, node_id="n" * 56,
                   device_label=label, pid=4242, **fields)


def started(fold, attempt, host, label, t, start_step=0):
    return trainer(ev.FOLD_STARTED, fold, attempt, host, label, t, device="npu", start_step=start_step,
                   total_steps=TOTAL, train_images=391)


def step(fold, attempt, host, label, t, n, loss, images_per_s, lr=0.01):
    return trainer(ev.STEP_DONE, fold, attempt, host, label, t, step=n, total_steps=TOTAL, loss=loss,
                   learning_rate=lr, images_per_s=images_per_s)


def script():
    """The events of a run, in the order the driver records them."""
    events = [ev.make(st.RUN_STARTED, time=T0, name="cv5", run_dir="/runs/cv5-20250101-120000",
                      folds=[0, 1, 2, 3, 4], placement="npu {CPU: 1, NPU: 1}", where="10.0.0.1:6379",
                      resumed=False)]
    events += [ev.make(st.FOLD_QUEUED, time=T0, fold=k, attempt=1) for k in range(5)]
    events += [
        # Fold 0 trains to the end on vm:NPU0.
        started(0, 1, "vm", "NPU0", 1),
        trainer(ev.MESSAGE, 0, 1, "vm", "NPU0", 1, text="warm start from /ckpt: restored 12 variables"),
        step(0, 1, "vm", "NPU0", 10, 10, 2.5, 300.0),
        step(0, 1, "vm", "NPU0", 20, 20, 2.25, 310.0),
        trainer(ev.CHECKPOINT_SAVED, 0, 1, "vm", "NPU0", 30, step=500, path="/runs/x/fold_0/checkpoints/m-500"),
        trainer(ev.EVAL_DONE, 0, 1, "vm", "NPU0", 31, step=500, split="val",
                metrics=metrics(0.40, 0.60, 0.8, 0.75, 58)),
        trainer(ev.FOLD_FINISHED, 0, 1, "vm", "NPU0", 40, step=TOTAL, metrics=FINISHED_METRICS, wall_s=1834.2),
        # Fold 1 fails with a Python error (not retried).
        started(1, 1, "vm", "NPU1", 2),
        step(1, 1, "vm", "NPU1", 12, 300, 2.0, 305.0),
        ev.make(ev.FOLD_FAILED, time=T0 + 50, fold=1, attempt=1,
                reason="DataLossError: corrupted record at 1234"),
        # Fold 2 loses its worker at step 400 and resumes on worker-2:NPU3 as attempt 2.
        started(2, 1, "vm", "NPU2", 3),
        step(2, 1, "vm", "NPU2", 100, 400, 1.9, 300.0),
        ev.make(st.FOLD_RETRYING, time=T0 + 120, fold=2, attempt=2, reason="WorkerCrashedError (attempt 1)"),
        ev.make(st.FOLD_QUEUED, time=T0 + 120, fold=2, attempt=2),
        started(2, 2, "worker-2", "NPU3", 130, start_step=400),
        step(2, 2, "worker-2", "NPU3", 500, 450, 1.75, 300.0),
        step(2, 2, "worker-2", "NPU3", 550, 500, 1.5, 320.0),
        # Fold 3 stays queued. Fold 4 runs on vm:NPU1 at 1 step/s.
        started(4, 1, "vm", "NPU1", 60),
        step(4, 1, "vm", "NPU1", 100, 100, 1.5, 300.0),
        trainer(ev.EVAL_DONE, 4, 1, "vm", "NPU1", 150, step=200, split="val",
                metrics=metrics(0.311, 0.502, 0.7, 0.687, 55)),
        step(4, 1, "vm", "NPU1", 200, 200, 1.2345, 310.0),
    ]
    return events


def build_view(events):
    view = st.RunView()
    for event in events:
        st.apply(view, event)
    return view


def draw(view, now=NOW, width=140, height=40):
    """The view as a console of `width` x `height` cells shows it, as plain text."""
    console = Console(file=io.StringIO(), width=width, height=height, color_system=None, force_terminal=False)
    console.print(dashboard.render(view, now))
    return console.file.getvalue()


def split_cells(line, rule):
    return [c.strip() for c in line.strip().strip(rule).split(rule)]


def rows(text):
    """{fold: {column header: cell}} from the drawn table's header and body rows."""
    out, header = {}, None
    for line in text.splitlines():
        if line.startswith("┃"):
            header = split_cells(line, "┃")
        elif line.startswith("│"):
            cells = split_cells(line, "│")
            assert len(cells) == len(header), text
            out[int(cells[0])] = dict(zip(header, cells))
    return out


EVAL = "eval % (top-1/top-2/gender)"
COLUMNS = ["fold", "state", "host:device", "progress", "loss", "lr", "img/s", "ETA", EVAL, "try"]


@pytest.fixture
def text():
    return draw(build_view(script()))


def test_one_row_per_fold_with_state_device_progress_and_attempt(text):
    table = rows(text)
    assert sorted(table) == [0, 1, 2, 3, 4]
    assert all(list(r) == COLUMNS for r in table.values()), text
    expected = {  # fold: (state, host:device, step/total, try)
        0: ("done", "vm:NPU0", "1000/1000", "1"),
        1: ("failed", "vm:NPU1", "300/1000", "1"),
        2: ("retrying", "worker-2:NPU3", "500/1000", "2"),
        3: ("queued", "-", "-", "1"),
        4: ("running", "vm:NPU1", "200/1000", "1"),
    }
    for fold, (state, where, progress, attempt) in expected.items():
        row = table[fold]
        assert row["state"] == state, (fold, row)
        assert row["host:device"] == where, (fold, row)
        assert row["progress"].endswith(progress), (fold, row)
        assert row["try"] == attempt, (fold, row)
    # The bar is 16 cells wide: full when done, 3/16 at step 200 of 1000.
    assert table[0]["progress"] == "█" * 16 + " 1000/1000"
    assert table[4]["progress"] == "█" * 3 + "░" * 13 + " 200/1000"


def test_running_rows_show_loss_rate_and_eta_finished_row_shows_test_metrics(text):
    table = rows(text)
    assert table[4]["loss"] == "1.2345"
    assert table[4]["lr"] == "0.01"
    assert table[4]["img/s"] == "310"
    # Fold 4: steps 100 -> 200 in 100 s is 1 step/s, 800 steps left.
    assert table[4]["ETA"] == "13:20"
    assert table[4][EVAL] == "val@200 31.1/50.2/68.7"
    # Fold 2's rate restarts with attempt 2: 450 -> 500 in 50 s, 500 steps left.
    assert table[2]["loss"] == "1.5000"
    assert table[2]["ETA"] == "8:20"
    # A finished fold shows its test metrics (age top-1/top-2/gender %), not its last loss.
    assert table[0][EVAL] == "test 52.3/75.0/81.2"
    assert table[0]["loss"] == "-" and table[0]["ETA"] == "-"
    assert table[3]["loss"] == "-" and table[3][EVAL] == "-"
    assert table[1]["ETA"] == "-"


def test_summary_line_and_reason_lines(text):
    lines = text.splitlines()
    assert lines[0].strip() == "cv5  /runs/cv5-20250101-120000"
    (summary,) = [line for line in lines if line.startswith("folds done")]
    assert summary.startswith("folds done 1/5, failed 1  |  ")
    # Images/s of the two running folds (2 and 4): 320 + 310.
    assert "  |  630 images/s  |  " in summary
    assert "elapsed 1:02:05" in summary
    # Run ETA: remaining steps of folds 2, 3, 4 (500 + 1000 + 800) over 1 + 1 steps/s.
    assert "ETA 19:10" in summary
    assert "fold 1: DataLossError: corrupted record at 1234" in lines
    assert "fold 2: WorkerCrashedError (attempt 1)" in lines
    # Only failed and retrying folds get a reason line.
    assert not [line for line in lines if line.startswith(("fold 0:", "fold 3:", "fold 4:"))]


def test_render_is_deterministic():
    events = script()
    assert draw(build_view(events)) == draw(build_view(events))
    view = build_view(events)
    assert draw(view) == draw(view)


def test_elapsed_follows_the_injected_clock():
    view = build_view(script())
    assert "elapsed 0:00" in draw(view, now=T0)
    assert "elapsed 10:00" in draw(view, now=T0 + 600)


def test_a_late_event_of_a_superseded_attempt_changes_nothing():
    events = script()
    before_view = build_view(events)
    before = draw(before_view)
    late = [step(2, 1, "vm", "NPU2", 560, 420, 9.99, 1.0),
            trainer(ev.FOLD_STOPPED, 2, 1, "vm", "NPU2", 561, step=420),
            ev.make(ev.FOLD_FAILED, time=T0 + 562, fold=2, attempt=1, reason="late failure of attempt 1")]
    after_view = build_view(events + late)
    assert draw(after_view) == before
    fold = after_view.folds[2]
    assert (fold.state, fold.attempt, fold.step, fold.loss) == ("retrying", 2, 500, 1.5)
    assert fold.host == "worker-2" and fold.device == "NPU3"
    assert fold.__dict__ == before_view.folds[2].__dict__


def test_a_newer_attempt_resets_the_rate():
    view = build_view(script())
    fold = view.folds[2]
    assert fold.rate_origin == (T0 + 500, 450)
    assert fold.steps_per_s == pytest.approx(1.0)
    assert st.fold_eta_s(fold) == pytest.approx(500.0)


def test_fold_stopped():
    events = script() + [trainer(ev.FOLD_STOPPED, 4, 1, "vm", "NPU1", 300, step=240),
                         ev.make(st.NOTICE, time=T0 + 300, text="stopping: each running fold saves a checkpoint"),
                         ev.make(st.RUN_INTERRUPTED, time=T0 + 301,
                                 resume="python -m scheduler run --resume /runs/cv5-20250101-120000")]
    view = build_view(events)
    fold = view.folds[4]
    assert (fold.state, fold.step, fold.attempt) == ("stopped", 240, 1)
    assert st.fold_eta_s(fold) is None
    assert view.ended == "interrupted"
    text = draw(view)
    row = rows(text)[4]
    assert row["state"] == "stopped"
    assert row["progress"].endswith(" 240/1000")
    assert row["ETA"] == "-" and row["img/s"] == "-"
    assert "stopping: each running fold saves a checkpoint" in text.splitlines()


def test_fold_stopped_before_training_keeps_the_restored_step():
    # A stop before the first step reports step None (lmtcnn/events.py): the fold keeps the
    # step it was started from, and the plain line says training had not started.
    stop = trainer(ev.FOLD_STOPPED, 2, 2, "worker-2", "NPU3", 600, step=None)
    no_steps = [e for e in script() if (e.get("fold"), e.get("attempt"), e["event"]) != (2, 2, ev.STEP_DONE)]
    view = build_view(no_steps + [stop])
    fold = view.folds[2]
    assert (fold.state, fold.step, fold.attempt) == ("stopped", 400, 2)
    assert rows(draw(view))[2]["progress"].endswith(" 400/1000")
    assert dashboard.format_event(stop) == "fold 2 try 2 worker-2:NPU3  stopped before training started"


def test_fold_skipped_marks_a_fold_finished_in_an_earlier_session():
    earlier = metrics(0.45, 0.7, 0.88, 0.8, 114, step=TOTAL, wall_s=900.0)
    view = build_view([ev.make(st.RUN_STARTED, time=T0, name="cv5", run_dir="/r", folds=[0, 1],
                               placement="cpu {CPU: 1}", where="a local Ray instance", resumed=True),
                       ev.make(st.FOLD_SKIPPED, time=T0, fold=1, metrics=earlier)])
    fold = view.folds[1]
    assert (fold.state, fold.step, fold.wall_s, fold.metrics) == ("done", TOTAL, 900.0, earlier)
    assert fold.images_per_s is None
    assert view.folds[0].state == "queued"
    row = rows(draw(view))[1]
    assert row["state"] == "done"
    assert row[EVAL] == "test 45.0/70.0/80.0"
    assert "folds done 1/2" in draw(view)


def test_fold_skipped_after_replayed_events_keeps_host_and_attempt():
    events = [ev.make(st.RUN_STARTED, time=T0, name="cv5", run_dir="/r", folds=[0],
                      placement="npu {NPU: 1}", where="x", resumed=False),
              started(0, 1, "vm", "NPU0", 1),
              step(0, 1, "vm", "NPU0", 10, 999, 0.5, 300.0),
              ev.make(st.FOLD_SKIPPED, time=T0 + 20, fold=0, metrics=FINISHED_METRICS)]
    fold = build_view(events).folds[0]
    assert (fold.state, fold.attempt, fold.host, fold.device, fold.step) == ("done", 1, "vm", "NPU0", TOTAL)
    assert fold.images_per_s is None


def test_queued_again_after_a_retry_is_retrying():
    view = build_view([ev.make(st.FOLD_QUEUED, time=T0, fold=3, attempt=1),
                       ev.make(st.FOLD_RETRYING, time=T0 + 1, fold=3, attempt=2, reason="NodeDiedError (attempt 1)"),
                       ev.make(st.FOLD_QUEUED, time=T0 + 1, fold=3, attempt=2)])
    fold = view.folds[3]
    assert (fold.state, fold.attempt, fold.reason) == ("retrying", 2, "NodeDiedError (attempt 1)")


def test_run_eta_is_unknown_without_a_rate():
    view = build_view(script()[:6])  # run_started and the five fold_queued events
    assert st.run_eta_s(view) is None
    summary = [line for line in draw(view).splitlines() if line.startswith("folds done")][0]
    assert summary.startswith("folds done 0/5  |  0 images/s  |  elapsed 1:02:05  |  ETA -")


EXPECTED_LINES = {
    st.RUN_STARTED: "run cv5: folds 0,1,2,3,4 on npu {CPU: 1, NPU: 1} -> /runs/cv5-20250101-120000",
    st.FOLD_QUEUED: "fold 0 try 1  fold queued",
    ev.FOLD_STARTED: "fold 0 try 1 vm:NPU0  started on npu at step 0 of 1000",
    ev.MESSAGE: "fold 0 try 1 vm:NPU0  warm start from /ckpt: restored 12 variables",
    ev.STEP_DONE: "fold 0 try 1 vm:NPU0  step 10/1000 loss 2.5000 lr 0.01 300 images/s",
    ev.CHECKPOINT_SAVED: "fold 0 try 1 vm:NPU0  checkpoint at step 500",
    ev.EVAL_DONE: "fold 0 try 1 vm:NPU0  val eval: age top-1 40.00% top-2 60.00% gender 75.00% (58 images)",
    ev.FOLD_FINISHED: "fold 0 try 1 vm:NPU0  finished, test: age top-1 52.30% top-2 75.00% gender 81.20% "
                      "(117 images)",
    ev.FOLD_FAILED: "fold 1 try 1  failed: DataLossError: corrupted record at 1234",
    st.FOLD_RETRYING: "fold 2 try 2  retrying: WorkerCrashedError (attempt 1)",
}


def test_format_event_gives_one_line_per_event():
    extra = [trainer(ev.FOLD_STOPPED, 4, 1, "vm", "NPU1", 300, step=240),
             ev.make(st.FOLD_SKIPPED, time=T0, fold=3, metrics=FINISHED_METRICS),
             ev.make(st.NOTICE, time=T0, text="2 nodes: keep the run directory on a shared filesystem"),
             ev.make(st.RUN_INTERRUPTED, time=T0, resume="python -m scheduler run --resume /r"),
             ev.make(st.RUN_FINISHED, time=T0),
             trainer(ev.EVAL_STARTED, 4, 1, "vm", "NPU1", 300, step=250, split="val"),
             ev.make(st.FOLD_STALLED, time=T0, fold=4, attempt=1, step=250, quiet_s=912.4)]
    events = script() + extra
    vocabulary = {getattr(ev, n) for n in ("FOLD_STARTED", "STEP_DONE", "EVAL_STARTED", "EVAL_DONE",
                                           "CHECKPOINT_SAVED", "FOLD_STOPPED", "FOLD_FINISHED", "FOLD_FAILED",
                                           "MESSAGE")}
    vocabulary |= {st.RUN_STARTED, st.FOLD_QUEUED, st.FOLD_RETRYING, st.FOLD_STALLED, st.FOLD_SKIPPED,
                   st.RUN_INTERRUPTED, st.RUN_FINISHED, st.NOTICE}
    assert {e["event"] for e in events} == vocabulary
    firsts = {}
    for event in events:
        line = dashboard.format_event(event)
        assert isinstance(line, str) and line.strip(), event
        assert "\n" not in line and "\r" not in line, line
        firsts.setdefault(event["event"], line)
    for kind, line in EXPECTED_LINES.items():
        assert firsts[kind] == line
    lines = [dashboard.format_event(e) for e in extra]
    assert lines[0] == "fold 4 try 1 vm:NPU1  stopped at step 240 (checkpoint saved)"
    assert lines[1].startswith("fold 3 ") and lines[1].endswith(
        "already finished, test: age top-1 52.30% top-2 75.00% gender 81.20% (117 images)")
    assert lines[2] == "note: 2 nodes: keep the run directory on a shared filesystem"
    assert lines[3] == "interrupted; resume with: python -m scheduler run --resume /r"
    assert lines[4] == "run finished"
    assert lines[5] == "fold 4 try 1 vm:NPU1  evaluating the val split at step 250"
    assert lines[6] == "fold 4 try 1  stalled at step 250: no report for 912 s; cancelled"


def test_format_event_does_not_change_the_event():
    events = script()
    copies = [dict(e) for e in events]
    for event in events:
        dashboard.format_event(event)
    assert events == copies


@pytest.mark.parametrize("seconds, text", [(None, "-"), (0, "0:00"), (59.6, "1:00"), (3599, "59:59"),
                                           (3600, "1:00:00"), (90061, "25:01:01")])
def test_format_duration(seconds, text):
    assert dashboard.format_duration(seconds) == text


def test_the_view_imports_neither_ray_nor_tensorflow():
    code = ("import sys; import scheduler.dashboard, scheduler.state, scheduler.results; "
            "print(sorted(m for m in ('ray', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, check=True,
                         universal_newlines=True).stdout
    assert out.strip() == "[]"


# -- fitting the terminal ----------------------------------------------------------------

# What each fold of script() shows: state, host:device, step/total, loss, ETA.
EXPECTED_ROWS = {0: ("done", "vm:NPU0", "1000/1000", "-", "-"),
                 1: ("failed", "vm:NPU1", "300/1000", "2.0000", "-"),
                 2: ("retrying", "worker-2:NPU3", "500/1000", "1.5000", "8:20"),
                 3: ("queued", "-", "-", "-", "-"),
                 4: ("running", "vm:NPU1", "200/1000", "1.2345", "13:20")}


def assert_fits(text, width, height=None):
    lines = text.splitlines()
    assert max(cell_len(line) for line in lines) <= width, text
    assert "…" not in text, text
    if height is not None:
        assert len(lines) <= height, text


def steps_of(progress):
    """The step count of a progress cell, without the bar before it."""
    return progress.split(" ")[-1]


@pytest.mark.parametrize("width", [60, 80, 120, 200])
def test_every_width_shows_each_fold_without_cutting_a_cell(width):
    text = draw(build_view(script()), width=width, height=24)
    assert_fits(text, width, 24)
    table = rows(text)
    assert sorted(table) == [0, 1, 2, 3, 4]
    for fold, (state, where, steps, loss, eta) in EXPECTED_ROWS.items():
        row = table[fold]
        assert (row["state"], steps_of(row["progress"]), row["ETA"]) == (state, steps, eta), (width, row)
        if width >= 80:
            assert (row["host:device"], row["loss"]) == (where, loss), (width, row)
    if width == 60:  # a host name shortens to its end; worker-2 is short enough
        assert table[2]["host:device"] == "worker-2:NPU3"
    assert "folds done 1/5, failed 1" in text and "ETA 19:10" in text
    assert "fold 1: DataLossError: corrupted record at 1234" in text.splitlines()


def test_columns_narrow_in_priority_order_and_come_back():
    view = build_view(script())
    assert list(rows(draw(view, width=200))[4]) == COLUMNS
    assert rows(draw(view, width=200))[4]["progress"] == "█" * 3 + "░" * 13 + " 200/1000"
    assert list(rows(draw(view, width=80))[4]) == ["fold", "state", "host:device", "progress", "loss", "ETA"]
    assert list(rows(draw(view, width=60))[4]) == ["fold", "state", "host:device", "progress", "ETA"]
    # Back at 200 columns, the dropped columns and the full bar return.
    assert draw(view, width=200) == draw(build_view(script()), width=200)
    # From wide to narrow: the bar shrinks first, then one layout after the other, each
    # step of NARROWING in turn, and a column never goes while the bar still has cells.
    layouts, bar_before = [], None
    for width in range(160, 54, -1):
        row = rows(draw(view, width=width))[4]
        bar = len(row["progress"]) - len(" 200/1000") if row["progress"] != "200/1000" else 0
        assert bar == 0 or dashboard.MIN_BAR_WIDTH <= bar <= dashboard.BAR_WIDTH, (width, row)
        if layouts and list(row) != layouts[-1]:
            assert bar_before == 0, (width, row)
        layouts.append(list(row))
        bar_before = bar
    distinct = [layout for layout, _ in itertools.groupby(layouts)]
    assert distinct == [COLUMNS,
                        ["fold", "state", "host:device", "progress", "loss", "img/s", "ETA", EVAL],
                        ["fold", "state", "host:device", "progress", "loss", "ETA", EVAL],
                        ["fold", "state", "host:device", "progress", "loss", "ETA", "eval %"],
                        ["fold", "state", "host:device", "progress", "loss", "ETA"],
                        ["fold", "state", "host:device", "progress", "ETA"]]


def test_render_takes_the_size_it_is_given():
    view = build_view(script())
    text = draw(view, width=200, height=60)
    console = Console(file=io.StringIO(), width=200, height=60, color_system=None)
    console.print(dashboard.render(view, NOW, width=80, height=24))
    narrow = console.file.getvalue()
    assert_fits(narrow, 80, 24)
    assert list(rows(narrow)[4]) != list(rows(text)[4])


def test_a_long_host_name_keeps_its_device_label_and_its_end():
    view = build_view(script())
    view.folds[2].host = "gpu-worker-node-12.cluster.example.com"
    assert rows(draw(view, width=200))[2]["host:device"] == "gpu-worker-node-12.cluster.example.com:NPU3"
    text = draw(view, width=80, height=24)
    assert_fits(text, 80, 24)
    row = rows(text)[2]
    assert row["host:device"] == "~node-12:NPU3"
    assert (row["loss"], row["ETA"], steps_of(row["progress"])) == ("1.5000", "8:20", "500/1000")


@pytest.mark.parametrize("host, short", [("vm", "vm"), ("worker-2", "worker-2"), ("ascend-node-07", "~node-07"),
                                         ("node12.example.org", "node12"),
                                         ("gpu-worker-node-12.cluster.example.com", "~node-12"),
                                         ("10.0.0.12", "~.0.0.12")])
def test_short_host(host, short):
    assert dashboard.short_host(host) == short


def many_folds_script(n=20):
    """A run of `n` folds: 0-8 finished, 9-11 queued, the others running on node-<k>:NPU0, but
    the last, which failed."""
    events = [ev.make(st.RUN_STARTED, time=T0, name="cv20", run_dir="/runs/cv20", folds=list(range(n)),
                      placement="npu {CPU: 1, NPU: 1}", where="10.0.0.1:6379", resumed=False)]
    events += [ev.make(st.FOLD_QUEUED, time=T0, fold=k, attempt=1) for k in range(n)]
    for k in range(n):
        host = "node-%d" % k
        if k < 9:
            events += [started(k, 1, host, "NPU0", 1),
                       trainer(ev.FOLD_FINISHED, k, 1, host, "NPU0", 40, step=TOTAL, metrics=FINISHED_METRICS)]
        elif k >= 12:
            events += [started(k, 1, host, "NPU0", 1), step(k, 1, host, "NPU0", 100, 100, 1.5, 300.0),
                       step(k, 1, host, "NPU0", 200, 200, 1.25, 310.0)]
    events.append(ev.make(ev.FOLD_FAILED, time=T0 + 300, fold=n - 1, attempt=1, reason="ValueError: loss diverged"))
    return events


def left_out(text, view, shown):
    """The states of the folds without a row, counted by the "+ N more" line; checked
    against the view."""
    (line,) = [line for line in text.splitlines() if line.startswith("+ ")]
    hidden = Counter(f.state for k, f in view.folds.items() if k not in shown)
    count, states = line.split(";")[0][len("+ "):].split(" more: ")
    assert int(count) == sum(hidden.values()), line
    assert {state: int(n) for n, state in (part.split(" ") for part in states.split(", "))} == hidden, line
    return hidden


@pytest.mark.parametrize("width", [60, 80, 200])
def test_more_folds_than_rows_keeps_the_ones_to_watch(width):
    view = build_view(many_folds_script())
    text = draw(view, width=width, height=24)
    assert_fits(text, width, 24)
    shown = rows(text)
    assert len(shown) >= 12, text
    # Running and failed folds first, then queued ones; finished folds give way.
    assert set(range(9, 20)) <= set(shown), text
    assert left_out(text, view, shown) == {"done": 20 - len(shown)}
    assert any(line.startswith("folds done 9/20, failed 1") for line in text.splitlines()), text
    assert "fold 19: ValueError: loss diverged" in " ".join(text.split())


def test_a_short_terminal_hides_queued_folds_before_running_ones():
    view = build_view(many_folds_script())
    text = draw(view, width=80, height=16)
    assert_fits(text, 80, 16)
    shown = rows(text)
    hidden = left_out(text, view, shown)
    assert hidden["done"] == 9 and hidden["queued"] == 3 and "running" not in hidden, text
    assert list(shown) == sorted(shown)  # rows stay in fold order


def test_notes_never_push_the_view_past_its_height():
    view = build_view(many_folds_script())
    for k in range(12, 19):
        st.apply(view, ev.make(ev.FOLD_FAILED, time=T0 + 400, fold=k, attempt=1,
                               reason="RuntimeError: device %d lost its link to the host; see the fold's log" % k))
    for i in range(5):
        st.apply(view, ev.make(st.NOTICE, time=T0 + 500, text="notice %d: the run directory is not shared" % i))
    for width in (60, 80, 120):
        text = draw(view, width=width, height=24)
        assert_fits(text, width, 24)
        line = [line for line in text.splitlines() if line.startswith("+ ")][0]
        assert "not shown" in line, text


def test_live_display_at_80x24_needs_no_vertical_ellipsis():
    """What the driver does: a Live display redraws render's result at the console's size."""
    console = Console(file=io.StringIO(), width=80, height=24, color_system=None, force_terminal=True)
    with Live(dashboard.render(build_view(many_folds_script()), NOW), console=console, auto_refresh=False,
              redirect_stdout=False, redirect_stderr=False) as live:
        live.refresh()
    output = console.file.getvalue()
    assert "..." not in output and "…" not in output
    assert "running" in output and "+ " in output


@pytest.mark.parametrize("width", [60, 80, 120])
def test_status_table_fits_with_every_note_whole(width):
    view = build_view(script())
    view.folds[2].host = "gpu-worker-node-12.cluster.example.com"
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(dashboard.status_table(view, "/runs/cv5-20250101-120000: running"))
    text = console.file.getvalue()
    assert_fits(text, width)
    table = rows(text)
    for fold, (state, _, steps, _, _) in EXPECTED_ROWS.items():
        assert (table[fold]["state"], table[fold]["step"]) == (state, steps if steps != "-" else "0"), text
    assert table[1]["host:device"] == "vm:NPU1"
    assert table[2]["host:device"] in ("gpu-worker-node-12.cluster.example.com:NPU3", "~node-12:NPU3")
    squeezed = " ".join(text.split())
    for note in ("age top-1 52.30%, gender 81.20%, 30:34", "DataLossError: corrupted record at 1234",
                 "WorkerCrashedError (attempt 1)"):
        assert note in squeezed, text


@pytest.mark.parametrize("layout", dashboard.LAYOUTS)
def test_the_counted_table_width_is_the_width_rich_draws(layout):
    # The live view counts each layout's width instead of asking rich to measure it; a
    # count that drifted from rich's drawing would cut cells or waste the bar's room.
    from scheduler.widths import UNLIMITED

    folds = list(build_view(script()).folds.values())
    console = Console(width=UNLIMITED, file=io.StringIO(), color_system=None)
    for bar in (0, dashboard.BAR_WIDTH):
        columns, rows_ = dashboard.table_cells(folds, layout, bar)
        for fixed in (False, True):
            drawn = console.render_lines(dashboard.live_table(columns, rows_, fixed=fixed), pad=False)
            assert max(cell_len("".join(s.text for s in line)) for line in drawn) == dashboard.table_width(
                columns, rows_)
