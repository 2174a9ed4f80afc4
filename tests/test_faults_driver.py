"""The fault matrix, part 3: the driver itself (real `python -m scheduler` processes).

SIGKILL of the driver followed by --resume, two drivers on one run directory, a stale
lock from another host, and twenty folds of four runs sharing four NPU slots with every
progress event arriving exactly once. (SIGINT, SIGTERM and SIGHUP are in
test_scheduler_interrupt.py, which `make test` runs.)
"""

import collections
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, snapshot, summarize
from scheduler import runlock
from test_scheduler_interrupt import HELD_AT, held, hold_folds_1_and_2, scheduler_cli, wait_for, write_config

pytestmark = pytest.mark.faults


def test_sigkill_of_the_driver_then_resume(prepared, tmp_path, fault_record):
    run_dir = str(tmp_path / "run")
    config = write_config(tmp_path, prepared, run_dir)
    driver = scheduler_cli("run", config, "--no-dashboard", "--no-report",
                           env={"LMTCNN_FAULTS": hold_folds_1_and_2(tmp_path)})
    try:
        wait_for(run_dir, held, "fold 0 finished, folds 1 and 2 held", driver)
        driver.send_signal(signal.SIGKILL)  # no handler runs: the lock and run.json stay as they were
        driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert os.path.exists(os.path.join(run_dir, "driver.lock"))
    done = snapshot(os.path.join(run_dir, "fold_0"))

    status = subprocess.run([sys.executable, "-m", "scheduler", "status", run_dir], cwd=ROOT,
                            stdout=subprocess.PIPE, universal_newlines=True)
    assert status.returncode == 0 and "interrupted" in status.stdout and "resume with" in status.stdout

    resumed = scheduler_cli("run", "--resume", run_dir, "--no-dashboard", "--no-report")
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert "took over the lock of the driver pid %d" % driver.pid in output
    s = summarize(run_dir)
    assert s["finished"] == [0, 1, 2]
    restarts = {e["fold"]: e["start_step"] for e in s["events"] if e["event"] == "fold_started" and e["attempt"] == 2}
    assert restarts == {1: HELD_AT, 2: HELD_AT}
    assert snapshot(os.path.join(run_dir, "fold_0")) == done, "a finished fold was touched"
    assert runlock.read_holder(run_dir) == {}  # released: empty
    fault_record(scenario="driver SIGKILL, then --resume", folds_finished="3/3", steps_lost=s["steps_lost"],
                 events_lost=s["events_lost"], detect_s="at --resume (stale lock of a dead pid taken over)")


def error_line(result):
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_two_drivers_on_one_run_directory(prepared, tmp_path, fault_record):
    run_dir = str(tmp_path / "run")
    config = write_config(tmp_path, prepared, run_dir)
    first = scheduler_cli("run", config, "--no-dashboard", "--no-report",
                          env={"LMTCNN_FAULTS": hold_folds_1_and_2(tmp_path)})
    try:
        wait_for(run_dir, held, "fold 0 finished, folds 1 and 2 held", first)
        before = snapshot(run_dir)
        for args in (["run", config, "--no-dashboard"], ["run", "--resume", run_dir, "--no-dashboard"]):
            second = subprocess.run([sys.executable, "-m", "scheduler"] + args, cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, universal_newlines=True,
                                    env=dict(os.environ, RAY_ADDRESS="local"), timeout=120)
            assert second.returncode == 2, second.stderr
            line = error_line(second)
            assert run_dir in line and "pid %d" % first.pid in line, line
        after = snapshot(run_dir)
        # The refused drivers wrote nothing: every file is as the first driver left it,
        # apart from what that driver itself appends meanwhile.
        assert set(after) == set(before)
        assert after["config.yaml"] == before["config.yaml"] and after["run.json"] == before["run.json"]
        assert after["driver.lock"] == before["driver.lock"]
        first.send_signal(signal.SIGINT)
        output, _ = first.communicate(timeout=180)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, output

    # A lock left by a driver on another host: refused, then taken over with --force.
    with open(os.path.join(run_dir, "driver.lock"), "w") as f:
        json.dump({"host": "gone-host", "pid": 4242, "started": time.time() - 3600}, f)
    refused = subprocess.run([sys.executable, "-m", "scheduler", "run", "--resume", run_dir], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                             env=dict(os.environ, RAY_ADDRESS="local"), timeout=120)
    assert refused.returncode == 2
    line = error_line(refused)
    assert "gone-host" in line and "4242" in line and "--force" in line
    forced = scheduler_cli("run", "--resume", run_dir, "--no-dashboard", "--no-report", "--force")
    output, _ = forced.communicate(timeout=300)
    assert forced.returncode == 0, output
    assert "took over the lock of the driver pid 4242 on gone-host" in output
    assert summarize(run_dir)["finished"] == [0, 1, 2]
    fault_record(scenario="a second driver (and a --resume) on a running run directory; a stale lock from "
                 "another host", folds_finished="3/3", steps_lost=0, events_lost=0,
                 detect_s="at start (refused, exit 2, naming the holder; --force takes a dead host's lock)")


NO_TOKEN = {"RAY_AUTH_MODE": "disabled"}  # Ray 2.60's token authentication, off for this shared instance
RAY_HELPER = """
import sys, ray
options = dict(num_cpus=8, resources={"NPU": 4}, include_dashboard=False)
if tuple(int(x) for x in ray.__version__.split(".")[:2]) < (2, 10):
    options["_system_config"] = {"custom_unit_instance_resources": "neuron_cores,TPU,NPU"}
context = ray.init(**options)
print(context.address_info["gcs_address"], flush=True)
sys.stdin.read()
"""


def test_twenty_folds_on_four_npu_slots_every_event_once(prepared, tmp_path, fault_record):
    """Four runs of five folds on one Ray instance with four NPU slots: four drivers,
    twenty fold tasks contending for the chips."""
    helper = subprocess.Popen([sys.executable, "-c", RAY_HELPER], cwd=str(tmp_path), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True,
                              env=dict(os.environ, RAY_ADDRESS="local", **NO_TOKEN))
    drivers = []
    try:
        address = helper.stdout.readline().strip()
        assert address, "the Ray instance did not start"
        for k in range(4):
            run_dir = str(tmp_path / ("run%d" % k))
            path = tmp_path / ("cfg%d.yaml" % k)
            path.write_text(
                "name: slots%d\ndata: {data_dir: %s}\nmodel: {image_size: 64, batch_norm_decay: 0.9}\n"
                "train: {device: cpu, batch_size: 16, max_steps: 6, checkpoint_every_steps: 3, log_every_steps: 1,\n"
                "        eval_every_steps: 0, shuffle_buffer: 64, preprocess_threads: 1, cpu_threads: 1}\n"
                "scheduler: {device: npu, folds: [0, 1, 2, 3, 4], run_dir: %s}\n" % (k, prepared, run_dir))
            drivers.append((run_dir, subprocess.Popen(
                [sys.executable, "-m", "scheduler", "run", str(path), "--no-dashboard", "--no-report"], cwd=ROOT,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                env=dict(os.environ, RAY_ADDRESS=address, **NO_TOKEN))))
        for run_dir, driver in drivers:
            output, _ = driver.communicate(timeout=900)
            assert driver.returncode == 0, output
    finally:
        for _, driver in drivers:
            if driver.poll() is None:
                driver.kill()
        helper.stdin.close()
        try:
            helper.wait(timeout=60)
        except subprocess.TimeoutExpired:
            helper.kill()

    spans = collections.defaultdict(list)  # NPU index -> (start, end) of the folds it ran
    for run_dir, _ in drivers:
        s = summarize(run_dir)
        assert s["finished"] == [0, 1, 2, 3, 4] and set(s["attempts"].values()) == {1}
        by_attempt = collections.defaultdict(list)
        for e in s["events"]:
            if "seq" in e:
                by_attempt[(e["fold"], e["attempt"])].append(e["seq"])
        assert len(by_attempt) == 5
        for key, seqs in by_attempt.items():
            assert seqs == list(range(1, len(seqs) + 1)), (run_dir, key, seqs)  # all, once, in order
        started = {e["fold"]: e for e in s["events"] if e["event"] == "fold_started"}
        finished = {e["fold"]: e for e in s["events"] if e["event"] == "fold_finished"}
        for fold, e in started.items():
            assert e["device_label"] in ("NPU0", "NPU1", "NPU2", "NPU3")
            spans[e["device_label"]].append((e["time"], finished[fold]["time"]))
    for label, intervals in spans.items():
        intervals.sort()
        for (_, end), (start, _) in zip(intervals, intervals[1:]):
            assert start >= end, "two folds ran on %s at once" % label
    assert len(spans) == 4
    fault_record(scenario="20 folds (4 runs) on 4 declared NPU slots", folds_finished="20/20", steps_lost=0,
                 events_lost=0, detect_s="-", note="every event once per attempt, in order; no chip shared")
