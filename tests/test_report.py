"""`scheduler report` and the report every run ends with, on real run directories
(tests/cv_runs.py: a finished run with a retried fold, one with a failed fold, one
interrupted by Ctrl-C)."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from scheduler import rundir
from scheduler.report import figures as fg
from scheduler.report import write_report
from scheduler.report.history import history, total_rate
from scheduler.results import REFERENCE_ROWS, build_results

FIGURES = ("training.png", "accuracy.png", "confusion.png", "per_group.png", "timeline.png")


def read_png(path):
    import cv2

    image = cv2.imread(path)
    assert image is not None, "%s is no readable PNG" % path
    return image


def page_of(run_dir):
    with open(os.path.join(run_dir, "report", "report.html"), encoding="utf-8") as f:
        return f.read()


def embedded_images(page):
    return re.findall(r"<img alt='([^']*)' src='data:image/png;base64,", page)


def test_a_finished_run_ends_with_its_report(cv_runs):
    run_dir = cv_runs["finished"]
    for name in FIGURES:  # made by the run itself, not by this test
        height, width, _ = read_png(os.path.join(run_dir, "report", name)).shape
        assert height > 200 and width > 400
    page = page_of(run_dir)
    assert len(embedded_images(page)) == len(FIGURES)
    # Opens offline: nothing is fetched from anywhere.
    assert not re.search(r"(src|href)=['\"](?!data:)", page)
    results = json.load(open(os.path.join(run_dir, "results.json")))
    for row in results["folds"]:
        assert "<td>%d</td><td>%.2f</td><td>%.2f</td>" % (row["fold"], row["age_top1"], row["age_top2"]) in page
    assert "Not in this report" not in page  # everything finished and validated
    assert "5 of 5 folds finished" in page


def test_the_age_groups_table_counts_every_test_image_once(cv_runs):
    run_dir = cv_runs["finished"]
    page = page_of(run_dir)
    counts = re.search(r"<tr><td>test images</td>(.*?)</tr>", page).group(1)
    images = sum(int(n) for n in re.findall(r"<td>(\d+)</td>", counts))
    results = json.load(open(os.path.join(run_dir, "results.json")))
    assert images == sum(row["test_images"] for row in results["folds"])


def test_per_group_accuracy_is_the_share_of_each_true_group_predicted_right(cv_runs):
    """Rows of the confusion are the true groups: each fold's diagonal over its total is
    its age top-1, and the page's per-group row is the summed diagonal over row sums."""
    from lmtcnn.adience import AGE_GROUPS

    run_dir = cv_runs["finished"]
    matrices = [json.load(open(os.path.join(run_dir, "fold_%d" % k, "metrics.json"))) for k in range(5)]
    for m in matrices:
        confusion = np.array(m["age_confusion"])
        assert np.trace(confusion) / confusion.sum() == pytest.approx(m["age_top1"])
    total = sum(np.array(m["age_confusion"]) for m in matrices)
    row = re.search(r"<tr><td>age top-1 %</td>(.*?)</tr>", page_of(run_dir)).group(1)
    shown = re.findall(r"<td>([^<]*)</td>", row)
    assert len(shown) == len(AGE_GROUPS)
    for i, cell in enumerate(shown):
        n = total[i].sum()
        assert cell == ("%.1f" % (100.0 * total[i, i] / n) if n else "-")


def test_the_retried_fold_shows_both_attempts(cv_runs):
    h = history(rundir.read_events(cv_runs["finished"]))
    first, second = h.of_fold(1)
    assert (first.outcome, first.start_step) == ("retried", 0)
    assert "WorkerCrashedError" in first.reason
    assert (second.outcome, second.start_step) == ("finished", 4)
    assert [s[1] for s in second.steps][0] > 4  # the curve restarts where the checkpoint was
    assert all(len(h.of_fold(k)) == 1 and h.of_fold(k)[0].outcome == "finished" for k in (0, 2, 3, 4))
    assert all(a.evals for a in h.attempts.values() if a.outcome == "finished")  # validation every 6 steps


def test_attempts_that_overlap_on_a_device_get_rows_of_their_own(cv_runs):
    h = history(rundir.read_events(cv_runs["finished"]))
    placed, labels = fg.timeline_rows(h)
    assert len(placed) == 6 and len(labels) >= 2  # two CPU folds at a time on one host
    for a, row in placed:
        for b, other in placed:
            if a is not b and row == other:
                assert a.ended <= b.started or b.ended <= a.started, "two bars on one row overlap"


def test_total_rate_sums_the_running_attempts(cv_runs):
    h = history(rundir.read_events(cv_runs["finished"]))
    series = total_rate(h)
    assert series[-1][1] == 0.0  # every attempt has ended
    peak = max(rate for _, rate in series)
    # Never below one attempt's own rate; above it where two folds' steps overlapped, which
    # a slow machine (one fold still starting while the other trains) does not promise.
    assert peak >= max(s[4] for a in h.attempts.values() for s in a.steps)


def test_a_failed_fold_is_named_with_its_reason(cv_runs):
    run_dir = cv_runs["failed"]
    page = page_of(run_dir)
    assert "Fold 3 failed at step 4 of 12" in page and "device lost (injected)" in page
    assert "4 of 5 folds finished" in page
    h = history(rundir.read_events(run_dir))
    assert h.of_fold(3)[0].outcome == "failed"


def test_report_of_an_interrupted_run_from_another_directory(cv_runs, tmp_path):
    run_dir = str(tmp_path / "interrupted")
    shutil.copytree(cv_runs["interrupted"], run_dir)
    shutil.rmtree(os.path.join(run_dir, "report"))
    # From a directory that is not the checkout: the project is installed.
    done = subprocess.run([sys.executable, "-m", "scheduler", "report", run_dir], cwd=str(tmp_path),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert done.returncode == 0, done.stdout
    assert done.stdout.strip() == "report: %s" % os.path.join(run_dir, "report", "report.html")
    page = page_of(run_dir)
    assert "interrupted; 1 of 2 folds finished" in page
    assert "Fold 1 was interrupted at step 4 of 12" in page
    assert "python -m scheduler run --resume %s" % run_dir in page
    assert len(embedded_images(page)) == len(FIGURES)
    h = history(rundir.read_events(run_dir))
    assert [h.of_fold(k)[0].outcome for k in (0, 1)] == ["finished", "stopped"]
    assert [how for _, _, how in h.sessions] == ["interrupted"]


def test_a_run_still_going_gets_a_report_of_what_exists(cv_runs, tmp_path):
    from scheduler import runlock

    run_dir = str(tmp_path / "running")
    shutil.copytree(cv_runs["interrupted"], run_dir)
    lock = runlock.acquire(run_dir)  # as its driver would hold it
    try:
        view, alive = rundir.replay(run_dir)
        assert alive is True
        page = open(write_report(run_dir, view, alive), encoding="utf-8").read()
    finally:
        lock.release()
    assert "The run is still going" in page and "state</th><td style='text-align:left'>running" in page
    assert "--resume" not in page


def test_published_rows_are_markers_beside_real_data(cv_runs):
    view, _ = rundir.replay(cv_runs["finished"])
    view.data = dict(view.data, synthetic=False)  # as on real Adience
    figure = fg.accuracy_bars(build_results(view))
    top1 = figure.axes[0]
    labels = top1.get_legend_handles_labels()[1]
    assert labels == [source for source, _, _, _ in REFERENCE_ROWS]
    # The paper's row has means only: one marker; the others one per fold and the mean.
    points = {line.get_label(): line.get_xydata() for line in top1.get_lines() if line.get_label() in labels}
    assert len(points["paper (as quoted by the Ascend port)"]) == 1
    gpu = points["Ascend port, GPU"]
    assert len(gpu) == 6 and gpu[0][1] == REFERENCE_ROWS[0][1][0][0] and gpu[-1][1] == REFERENCE_ROWS[0][2][0]


def test_synthetic_runs_draw_no_published_markers(cv_runs):
    view, _ = rundir.replay(cv_runs["finished"])
    figure = fg.accuracy_bars(build_results(view))
    assert figure.axes[0].get_legend() is None


def test_row_normalised_confusion():
    share = fg.normalised([[2, 2, 0], [0, 0, 0], [1, 0, 3]])
    assert np.allclose(share, [[0.5, 0.5, 0], [0, 0, 0], [0.25, 0, 0.75]])


def test_a_run_directory_that_cannot_hold_a_report_is_one_line(cv_runs, tmp_path):
    run_dir = str(tmp_path / "run")
    shutil.copytree(cv_runs["failed"], run_dir)
    shutil.rmtree(os.path.join(run_dir, "report"))
    open(os.path.join(run_dir, "report"), "w").close()  # a file where the directory goes
    done = subprocess.run([sys.executable, "-m", "scheduler", "report", run_dir], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and os.path.join(run_dir, "report") in lines[0], done.stderr


@pytest.mark.parametrize("state", ["finished", "failed", "interrupted"])
def test_every_figure_is_drawn_from_the_events_alone(cv_runs, state, tmp_path):
    """Without metrics.json files the folds' own events still carry their confusion."""
    run_dir = str(tmp_path / state)
    shutil.copytree(cv_runs[state], run_dir)
    for k in range(5):
        path = os.path.join(run_dir, "fold_%d" % k, "metrics.json")
        if os.path.exists(path):
            os.unlink(path)
    view, _ = rundir.replay(run_dir)
    write_report(run_dir, view, False)
    assert len(embedded_images(page_of(run_dir))) == len(FIGURES)


def step(fold, attempt, t, n, rate=100.0):
    return {"event": "step_done", "time": t, "fold": fold, "attempt": attempt, "step": n, "loss": 1.0,
            "learning_rate": 0.01, "images_per_s": rate}


def test_a_session_whose_driver_was_killed_loses_its_open_attempts():
    """Session 1's driver was killed mid-run (its events just stop); an hour later the
    run is resumed: the attempts it left are lost there, their images/s no longer count,
    and the hour between the sessions is cut from the time axis."""
    events = [{"event": "run_started", "time": 0.0, "folds": [0, 1]},
              {"event": "fold_started", "time": 1.0, "fold": 0, "attempt": 1, "start_step": 0, "host": "a",
               "device_label": "NPU0", "device": "npu"},
              step(0, 1, 5.0, 10), step(0, 1, 9.0, 20),
              {"event": "fold_failed", "time": 2.0, "fold": 1, "attempt": 1,
               "reason": "no alive node could hold {NPU: 1}"},
              {"event": "run_started", "time": 3609.0, "folds": [0, 1]},
              {"event": "fold_started", "time": 3610.0, "fold": 0, "attempt": 2, "start_step": 20, "host": "a",
               "device_label": "NPU0", "device": "npu"},
              step(0, 2, 3615.0, 30, rate=50.0),
              {"event": "fold_finished", "time": 3620.0, "fold": 0, "attempt": 2, "step": 30, "metrics": {}},
              {"event": "run_finished", "time": 3620.0}]
    h = history(events)
    assert [how for _, _, how in h.sessions] == ["lost", "finished"]
    first, second = h.of_fold(0)
    assert (first.outcome, first.ended) == ("lost", 9.0) and second.outcome == "finished"
    assert h.of_fold(1)[0].started is None and h.of_fold(1)[0].outcome == "failed"
    # Between the sessions nothing runs: the total falls to 0 when session 1 ends.
    rate_at = dict(total_rate(h))
    assert rate_at[9.0] == 0.0 and rate_at[3615.0] == 50.0 and rate_at[3620.0] == 0.0
    axis = fg.TimeAxis(h)
    assert len(axis.cuts) == 1
    # 29 s of sessions: the 3600 s gap keeps a band of 3% of that; time runs on either side.
    assert axis.x(9.0) < axis.x(3609.0) <= axis.x(9.0) + 0.03 * 29 + 1e-9
    assert axis.x(3620.0) - axis.x(3609.0) == pytest.approx(11.0)
    assert axis.x(1000.0) < axis.x(2000.0)  # monotonic inside the cut too
    fg.png(fg.timeline(h))  # draws the lost attempt, the fold never placed and the cut


def test_a_run_with_no_finished_fold_gets_a_report(cv_runs, tmp_path):
    """Its driver killed before fold 0 finished: curves and timeline, no accuracy."""
    run_dir = str(tmp_path / "early")
    shutil.copytree(cv_runs["interrupted"], run_dir)
    shutil.rmtree(os.path.join(run_dir, "report"))
    path = os.path.join(run_dir, "events.jsonl")
    lines = open(path).read().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if '"fold_finished"' in line)
    open(path, "w").write("".join(lines[:cut]))
    for k in range(2):
        metrics = os.path.join(run_dir, "fold_%d" % k, "metrics.json")
        if os.path.exists(metrics):
            os.unlink(metrics)
    view, alive = rundir.replay(run_dir)
    page = open(write_report(run_dir, view, alive), encoding="utf-8").read()
    assert embedded_images(page) == ["Training curves", "Test accuracy per fold", "Timeline"]
    assert "0 of 2 folds finished" in page
    for fold in (0, 1):
        assert "Fold %d was interrupted" % fold in page
    assert sorted(os.listdir(os.path.join(run_dir, "report"))) == ["accuracy.png", "report.html", "timeline.png",
                                                                    "training.png"]
