"""Ctrl-C on a real driver process, then `run --resume` finishes only what is missing."""

import json
import os
import signal
import subprocess
import sys
import time

from conftest import ROOT
from scheduler import rundir


def write_config(tmp_path, prepared, run_dir):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        "name: interrupt\n"
        "data: {data_dir: %s}\n"
        "model: {image_size: 64, batch_norm_decay: 0.9}\n"
        "train: {device: cpu, batch_size: 16, max_steps: 60, checkpoint_every_steps: 10, log_every_steps: 2,\n"
        "        eval_every_steps: 0, shuffle_buffer: 64, preprocess_threads: 1, cpu_threads: 1}\n"
        "scheduler: {device: cpu, folds: [0, 1, 2], run_dir: %s}\n" % (prepared, run_dir))
    return str(path)


def scheduler_cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "scheduler"] + list(args), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, universal_newlines=True, **kwargs)


def wait_for_mixed_state(run_dir, timeout_s=240):
    """Until one fold has finished and another has saved a checkpoint well short of its end."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            events = rundir.read_events(run_dir)
        except Exception:
            events = []
        finished = {e["fold"] for e in events if e["event"] == "fold_finished"}
        latest = {}
        for e in events:
            if e["event"] == "checkpoint_saved":
                latest[e["fold"]] = e["step"]
        early = {fold for fold, step in latest.items() if step <= 20 and fold not in finished}
        if finished and early:
            return finished, early
        time.sleep(0.1)
    raise AssertionError("the run never had a finished fold beside a checkpointed one")


def test_ctrl_c_stops_cleanly_and_resume_runs_only_missing_folds(prepared, tmp_path):
    run_dir = str(tmp_path / "run")
    config = write_config(tmp_path, prepared, run_dir)
    driver = scheduler_cli("run", config, "--no-dashboard", start_new_session=True)
    try:
        finished, _ = wait_for_mixed_state(run_dir)
        driver.send_signal(signal.SIGINT)  # what Ctrl-C delivers to the driver
        output, _ = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, output
    assert "resume with: python -m scheduler run --resume %s" % run_dir in output

    events = rundir.read_events(run_dir)
    assert events[-1]["event"] == "run_interrupted"
    # A fold caught before its training loop reports step None and has nothing to save.
    stopped = {e["fold"]: e["step"] for e in events if e["event"] == "fold_stopped" and e["step"] is not None}
    assert stopped, "no training fold reported a clean stop"
    for fold, step in stopped.items():
        assert os.path.exists(os.path.join(run_dir, "fold_%d" % fold, "checkpoints", "model.ckpt-%d.index" % step))
    done_before = {e["fold"] for e in events if e["event"] == "fold_finished"}
    assert done_before >= finished

    status = subprocess.run([sys.executable, "-m", "scheduler", "status", run_dir], cwd=ROOT,
                            stdout=subprocess.PIPE, universal_newlines=True)
    assert status.returncode == 0 and "interrupted" in status.stdout and "resume with" in status.stdout

    resumed = scheduler_cli("run", "--resume", run_dir, "--no-dashboard")
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    after = rundir.read_events(run_dir)[len(events):]
    assert {e["fold"] for e in after if e["event"] == "fold_skipped"} == done_before
    restarted = {e["fold"]: e for e in after if e["event"] == "fold_started"}
    assert set(restarted) == {0, 1, 2} - done_before
    for fold, step in stopped.items():
        assert restarted[fold]["start_step"] == step and restarted[fold]["attempt"] >= 2
    results = json.load(open(os.path.join(run_dir, "results.json")))
    assert [r["state"] for r in results["folds"]] == ["done"] * 3
