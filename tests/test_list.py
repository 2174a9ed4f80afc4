"""`python -m scheduler list [RUNS_DIR]` on real run directories (conftest's cv_runs):
one line per run, newest first, its state as `status` tells it, folds done, mean accuracy
and model; an 80-column table; md, csv and json; a missing or empty directory."""

import io
import json
import os
import shutil

from rich.console import Console

from scheduler.__main__ import main
from scheduler.results import build_results
from scheduler.rundir import replay
from scheduler.runs import list_runs, to_table


def runs_dir(cv_runs):
    base = os.path.dirname(cv_runs["finished"])
    assert all(os.path.dirname(path) == base for path in cv_runs.values())
    return base


def scheduler_list(capsys, *args):
    status = main(["list"] + [str(a) for a in args])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_each_run_newest_first_with_its_state_folds_means_and_model(cv_runs, capsys):
    status, out, err = scheduler_list(capsys, runs_dir(cv_runs), "--format", "json")
    assert status == 0, err
    rows = json.loads(out)
    # Made in this order by cv_runs: finished, failed, interrupted.
    assert [row["run"] for row in rows] == ["interrupted", "failed", "finished"]
    by_name = {row["run"]: row for row in rows}
    assert by_name["finished"]["state"] == "finished" and by_name["finished"]["folds_done"] == 5
    assert by_name["failed"]["state"] == "failed" and by_name["failed"]["failed_folds"] == [3]
    assert (by_name["failed"]["folds_done"], by_name["failed"]["folds"]) == (4, 5)
    assert by_name["interrupted"]["state"] == "interrupted"
    assert (by_name["interrupted"]["folds_done"], by_name["interrupted"]["folds"]) == (1, 2)
    for name, row in by_name.items():
        summary = build_results(replay(cv_runs[name])[0])["summary"]
        assert row["mean"] == {key: value["mean"] for key, value in summary.items()}
        assert row["model"] == "LMTCNN-1-1" and row["path"] == cv_runs[name]
        assert row["started"][:4].isdigit()


def test_the_table_fits_80_columns_and_keeps_every_number(cv_runs):
    rows = list_runs(runs_dir(cv_runs))
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(to_table(rows, runs_dir(cv_runs)))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    body = {line.split()[0]: line.split() for line in lines if line.split() and line.split()[0] in cv_runs}
    assert body["failed"][3:5] == ["failed", "4/5"], body
    assert body["failed"][5:8] == ["%.2f" % rows[1]["mean"][k] for k in ("age_top1", "age_top2", "gender")]
    assert body["interrupted"][3:5] == ["interrupted", "1/2"] and body["finished"][-1] == "1-1"


def test_markdown_and_csv_name_every_run(cv_runs, capsys):
    status, out, _ = scheduler_list(capsys, runs_dir(cv_runs), "--format", "md")
    assert status == 0
    assert out.splitlines()[0].startswith("| run | started | state | folds |")
    assert [line.split(" | ")[0].strip("| ") for line in out.splitlines()[2:]] == [
        "interrupted", "failed", "finished"]
    status, out, _ = scheduler_list(capsys, runs_dir(cv_runs), "--format", "csv")
    assert status == 0
    header, *rows = [line.split(",") for line in out.splitlines()]
    assert [row[0] for row in rows] == ["interrupted", "failed", "finished"]
    failed = dict(zip(header, rows[1]))
    assert (failed["state"], failed["folds_done"], failed["failed_folds"]) == ("failed", "4", "3")


def test_a_run_whose_driver_holds_its_lock_is_running(cv_runs, capsys, tmp_path):
    from scheduler import runlock

    copy = str(tmp_path / "runs" / "live")
    shutil.copytree(cv_runs["interrupted"], copy, ignore=shutil.ignore_patterns(runlock.LOCK))
    lock = runlock.acquire(copy)
    try:
        (row,) = list_runs(str(tmp_path / "runs"))
    finally:
        lock.release()
    assert row["state"] == "running" and row["run"] == "live"
    (row,) = list_runs(str(tmp_path / "runs"))
    assert row["state"] == "interrupted"


def test_a_missing_directory_exits_2_naming_it(capsys, tmp_path):
    missing = tmp_path / "absent"
    status, out, err = scheduler_list(capsys, missing)
    assert status == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith("error: %s: no such directory" % missing) and "scheduler list runs" in line


def test_an_empty_directory_says_so_in_one_line(capsys, tmp_path):
    (tmp_path / "not-a-run").mkdir()  # a directory without config.yaml and events.jsonl
    status, out, err = scheduler_list(capsys, tmp_path)
    assert status == 0 and err == ""
    assert out.splitlines() == ["no run directories below %s (a run directory holds config.yaml and "
                                "events.jsonl)" % tmp_path]
    status, out, _ = scheduler_list(capsys, tmp_path, "--format", "json")
    assert status == 0 and json.loads(out) == []


def test_a_damaged_event_line_is_skipped_and_the_run_still_listed(cv_runs, tmp_path):
    copy = str(tmp_path / "runs" / "damaged")
    shutil.copytree(cv_runs["failed"], copy)
    path = os.path.join(copy, "events.jsonl")
    lines = open(path, "rb").read().splitlines(keepends=True)
    lines.insert(3, b'{"event": "notice", "text": "\xff\xfe"}\n')  # bytes that are no UTF-8 (a disk error)
    open(path, "wb").write(b"".join(lines))
    (row,) = list_runs(str(tmp_path / "runs"))
    assert row["state"] == "failed" and (row["folds_done"], row["folds"]) == (4, 5)
