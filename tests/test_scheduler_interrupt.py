"""A real driver process stopped by a signal, then `run --resume` finishes only what is missing.

Deterministic on any CPU: fault rules (scheduler/faults.py) hold folds 1 and 2 right
after their checkpoint at step 10, so the signal always lands while fold 0 has finished
and the other two sit at a known step; nothing races the speed of training.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, summarize
from scheduler import rundir

HELD_AT = 10


def write_config(tmp_path, prepared, run_dir):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        "name: interrupt\n"
        "data: {data_dir: %s}\n"
        "model: {image_size: 64, batch_norm_decay: 0.9}\n"
        "train: {device: cpu, batch_size: 16, max_steps: 30, checkpoint_every_steps: %d, log_every_steps: 2,\n"
        "        eval_every_steps: 0, shuffle_buffer: 64, preprocess_threads: 1, cpu_threads: 1}\n"
        # Four CPUs on any machine: folds 0 and 1 start together, fold 2 when fold 0 ends.
        "scheduler: {device: cpu, folds: [0, 1, 2], run_dir: %s, local_cpus: 4}\n" % (prepared, HELD_AT, run_dir))
    return str(path)


def hold_folds_1_and_2(tmp_path):
    path = tmp_path / "faults.json"
    path.write_text(json.dumps([{"fold": fold, "attempt": 1, "event": "checkpoint_saved", "step": HELD_AT,
                                 "action": "hold"} for fold in (1, 2)]))
    return str(path)


def as_a_background_job():
    # SIGINT ignored, as a shell leaves it for `... &`; SIGHUP at its default, as in a
    # terminal session (this test itself may run under nohup).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def scheduler_cli(*args, env=None):
    """The driver as a shell starts it in the background (`... &`, CI jobs): in its own
    session, with SIGINT ignored, which it and its local Ray instance inherit."""
    return subprocess.Popen([sys.executable, "-m", "scheduler"] + list(args), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, universal_newlines=True, start_new_session=True,
                            preexec_fn=as_a_background_job, env=dict(os.environ, RAY_ADDRESS="local", **(env or {})))


def wait_for(run_dir, condition, what, driver, timeout_s=300):
    """Poll events.jsonl until `condition(events)`; the timeout only guards a hang."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        assert driver.poll() is None, "the driver ended early:\n" + driver.stdout.read()
        try:
            events = rundir.read_events(run_dir)
        except Exception:
            events = []
        if condition(events):
            return events
        time.sleep(0.1)
    raise AssertionError("never reached: %s" % what)


def held(events):
    finished = {e["fold"] for e in events if e["event"] == "fold_finished"}
    at_hold = {e["fold"] for e in events if e["event"] == "checkpoint_saved" and e["step"] == HELD_AT}
    return finished == {0} and at_hold >= {1, 2}


# In the fault matrix (`make test-faults`): SIGINT, SIGTERM and SIGHUP, the same path with
# three signals. `make test` meets Ctrl-C and --resume in tests/test_sweep.py (a sweep stops
# and resumes through the same driver loop) and Ctrl-C of a run in tests/cv_runs.py, and
# stays under 10 minutes a lane.
@pytest.mark.parametrize("signum", [
    pytest.param(signal.SIGINT, id="SIGINT", marks=pytest.mark.faults),
    pytest.param(signal.SIGTERM, id="SIGTERM", marks=pytest.mark.faults),
    pytest.param(signal.SIGHUP, id="SIGHUP", marks=pytest.mark.faults),
])
def test_signal_stops_cleanly_and_resume_runs_only_missing_folds(prepared, tmp_path, signum, fault_record):
    """Ctrl-C, `ray job stop` / systemd (SIGTERM) and a closed SSH session (SIGHUP) all
    stop the run the same way: folds checkpoint and stop, results are written."""
    run_dir = str(tmp_path / "run")
    config = write_config(tmp_path, prepared, run_dir)
    driver = scheduler_cli("run", config, "--no-dashboard", "--no-report",
                           env={"LMTCNN_FAULTS": hold_folds_1_and_2(tmp_path)})
    try:
        wait_for(run_dir, held, "fold 0 finished, folds 1 and 2 held at step %d" % HELD_AT, driver)
        if signum == signal.SIGHUP:
            # A closed SSH session: the terminal's whole process group (the driver and the
            # local Ray instance it started) gets SIGHUP, often twice.
            os.killpg(driver.pid, signal.SIGHUP)
            time.sleep(0.5)
            os.killpg(driver.pid, signal.SIGHUP)
        else:
            driver.send_signal(signum)
        output, _ = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, output
    assert "resume with: python -m scheduler run --resume %s" % run_dir in output
    assert "Traceback" not in output, output

    events = rundir.read_events(run_dir)
    assert events[-1]["event"] == "run_interrupted"
    stopped = {e["fold"]: e["step"] for e in events if e["event"] == "fold_stopped"}
    assert stopped == {1: HELD_AT, 2: HELD_AT}, stopped
    for fold in (1, 2):
        assert os.path.exists(os.path.join(run_dir, "fold_%d" % fold, "checkpoints", "model.ckpt-%d.index" % HELD_AT))
        assert not os.path.exists(os.path.join(run_dir, "fold_%d" % fold, "metrics.json"))
    with open(os.path.join(run_dir, "run.json")) as f:
        assert json.load(f)["ended"] == "interrupted"
    results = json.load(open(os.path.join(run_dir, "results.json")))
    assert [r["state"] for r in results["folds"]] == ["done", "stopped", "stopped"]
    finished_metrics = open(os.path.join(run_dir, "fold_0", "metrics.json")).read()

    status = subprocess.run([sys.executable, "-m", "scheduler", "status", run_dir], cwd=ROOT,
                            stdout=subprocess.PIPE, universal_newlines=True)
    assert status.returncode == 0 and "interrupted" in status.stdout and "resume with" in status.stdout

    resumed = scheduler_cli("run", "--resume", run_dir, "--no-dashboard", "--no-report")
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    after = rundir.read_events(run_dir)[len(events):]
    assert {e["fold"] for e in after if e["event"] == "fold_skipped"} == {0}
    restarted = {e["fold"]: e for e in after if e["event"] == "fold_started"}
    assert sorted(restarted) == [1, 2]
    for fold in (1, 2):
        assert restarted[fold]["start_step"] == HELD_AT and restarted[fold]["attempt"] == 2
    results = json.load(open(os.path.join(run_dir, "results.json")))
    assert [r["state"] for r in results["folds"]] == ["done"] * 3
    assert open(os.path.join(run_dir, "fold_0", "metrics.json")).read() == finished_metrics
    s = summarize(run_dir)
    assert s["steps_lost"] == 0 and s["events_repeated"] == 0
    # The resumed session kept the run's identity (staged folds are found by it).
    keys = [e["run_key"] for e in rundir.read_events(run_dir) if e["event"] == "run_started"]
    assert len(keys) == 2 and keys[0] == keys[1] and len(keys[0]) == 32
    fault_record(scenario="driver %s%s, then --resume" % (signal.Signals(signum).name, " (twice, to the process "
                 "group)" if signum == signal.SIGHUP else ""), folds_finished="3/3", steps_lost=s["steps_lost"],
                 events_lost=s["events_lost"], detect_s="at once (folds save and stop)")
