"""The fault matrix, part 1: faults inside one real local Ray instance (docs/RELIABILITY.md).

Each scenario places its fault with a fault rule (scheduler/faults.py) at a known step,
runs real TensorFlow folds on tiny synthetic data, and checks what a week-long run needs:
every fold ends done or clearly failed, finished folds are left alone, and no more than a
checkpoint interval of training is lost. `make test-faults` runs these.
"""

import glob
import json
import os
import re
import shutil
import socket
import subprocess

import pytest
import ray

from conftest import quiet_console, ray_init_local, run_config, summarize, write_faults
from scheduler import rundir
from scheduler.collect import stage_dir
from scheduler.driver import run

pytestmark = pytest.mark.faults
INTERVAL = 10  # train.checkpoint_every_steps in these scenarios


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray_init_local(NPU=4)
    yield
    ray.shutdown()


def config_for(prepared, run_dir, folds, **sections):
    train = dict(max_steps=20, checkpoint_every_steps=INTERVAL)
    train.update(sections.pop("train", {}))
    return run_config(prepared, run_dir, folds, train=train, **sections)


def resumed(run_dir):
    """The configuration a `run --resume` reads back from the run directory."""
    from scheduler.config import load_run_config

    return load_run_config(os.path.join(str(run_dir), "config.yaml"))


def test_sigkill_of_each_fold_worker_in_turn(prepared, tmp_path, monkeypatch, fault_record):
    run_dir = tmp_path / "run"
    # Every fold's first attempt dies four steps past its checkpoint at step 10.
    write_faults(tmp_path, [{"fold": k, "attempt": 1, "event": "step_done", "step": 14, "action": "crash"}
                            for k in range(5)], monkeypatch)
    assert run(config_for(prepared, run_dir, range(5)), quiet_console(), report=False) == 0
    s = summarize(run_dir)
    assert s["finished"] == [0, 1, 2, 3, 4] and s["attempts"] == {k: 2 for k in range(5)}
    restarts = [e for e in s["events"] if e["event"] == "fold_started" and e["attempt"] == 2]
    assert sorted(e["start_step"] for e in restarts) == [INTERVAL] * 5
    # Each attempt died at step 14, 4 steps past its checkpoint; a crash may also take the
    # report of step 14 with it (sent, not yet delivered), so as reported it is 2 to 4 steps.
    assert 5 * 2 <= s["steps_lost"] <= 5 * 4 and s["events_repeated"] == 0
    retries = [e for e in s["events"] if e["event"] == "fold_retrying"]
    assert len(retries) == 5 and all("WorkerCrashedError" in e["reason"] for e in retries)
    fault_record(scenario="SIGKILL of each fold's worker in turn", folds_finished="5/5", steps_lost=s["steps_lost"],
                 events_lost=s["events_lost"], detect_s="at once (Ray reports the dead worker)")


def test_hung_fold_is_cancelled_as_stalled_and_resumes(prepared, tmp_path, monkeypatch, fault_record):
    run_dir = tmp_path / "run"
    write_faults(tmp_path, [{"fold": 1, "attempt": 1, "event": "step_done", "step": 12, "action": "hold"}],
                 monkeypatch)
    config = config_for(prepared, run_dir, [1], scheduler={"stall_timeout_s": 8.0})
    assert run(config, quiet_console(), report=False) == 0
    s = summarize(run_dir)
    assert s["finished"] == [1] and s["attempts"] == {1: 2}
    (stalled,) = [e for e in s["events"] if e["event"] == "fold_stalled"]
    last = [e for e in s["events"] if e.get("attempt") == 1 and "seq" in e][-1]
    assert last["event"] == "step_done" and last["step"] == 12
    detect = stalled["time"] - last["time"]
    # quiet_s is recorded to 0.1 s: 8.04 s of quiet is past the limit yet reads 8.0.
    assert stalled["quiet_s"] >= 8.0 and detect > 8.0
    (retry,) = [e for e in s["events"] if e["event"] == "fold_retrying"]
    assert "stalled at step 12" in retry["reason"]
    assert [e["start_step"] for e in s["events"] if e["event"] == "fold_started"] == [0, INTERVAL]
    fault_record(scenario="a fold hangs (stall_timeout_s 8)", folds_finished="1/1", steps_lost=s["steps_lost"],
                 events_lost=s["events_lost"], detect_s=round(detect, 1))


def test_progress_channel_killed_loses_no_fold_end(prepared, tmp_path, monkeypatch, fault_record):
    run_dir = tmp_path / "run"
    write_faults(tmp_path, [{"fold": 0, "attempt": 1, "event": "step_done", "step": 4, "action": "kill_channel"}],
                 monkeypatch)
    assert run(config_for(prepared, run_dir, [0, 1, 2]), quiet_console(), report=False) == 0
    s = summarize(run_dir)
    assert s["finished"] == [0, 1, 2] and s["attempts"] == {0: 1, 1: 1, 2: 1}
    assert len([e for e in s["events"] if e["event"] == "fold_finished"]) == 3
    assert s["events_repeated"] == 0
    restarted = [e for e in s["events"] if e["event"] == "notice" and "channel was restarted" in e["text"]]
    assert len(restarted) == 1, "the kill never reached the progress channel"
    # Events the dead actor held undrained are gone; the driver says how many, per attempt.
    lost_notices = [e["text"] for e in s["events"] if e["event"] == "notice" and "were lost" in e["text"]]
    assert sum(int(re.search(r"try \d+: (\d+) progress events", t).group(1)) for t in lost_notices) == s["events_lost"]
    results = json.load(open(str(run_dir / "results.json")))
    assert [r["state"] for r in results["folds"]] == ["done"] * 3
    fault_record(scenario="progress channel actor killed", folds_finished="3/3", steps_lost=s["steps_lost"],
                 events_lost=s["events_lost"], detect_s="-")


def test_unreadable_newest_checkpoint_falls_back_to_the_one_before(prepared, tmp_path, monkeypatch, fault_record):
    run_dir = tmp_path / "run"
    write_faults(tmp_path, [{"fold": 0, "attempt": 1, "event": "step_done", "step": 24, "action": "crash"}],
                 monkeypatch)
    config = config_for(prepared, run_dir, [0], train={"max_steps": 30}, scheduler={"max_retries": 0})
    assert run(config, quiet_console(), report=False) == 1  # no retries: the fold stops failed after its crash
    checkpoints = os.path.join(str(run_dir), "fold_0", "checkpoints")
    (data,) = glob.glob(os.path.join(checkpoints, "model.ckpt-20.data-*"))
    with open(data, "r+b") as f:  # a torn copy: the newest checkpoint's data cut in half
        f.truncate(os.path.getsize(data) // 2)

    assert run(resumed(run_dir), quiet_console(), resume_dir=str(run_dir)) == 0
    s = summarize(run_dir)
    assert s["finished"] == [0]
    (message,) = [e for e in s["events"] if e["event"] == "message" and "unreadable" in e["text"]]
    assert "model.ckpt-20" in message["text"] and "model.ckpt-10" in message["text"]
    assert [e["start_step"] for e in s["events"] if e["event"] == "fold_started"] == [0, INTERVAL]
    assert glob.glob(os.path.join(checkpoints, "model.ckpt-20.index.unreadable"))
    assert os.path.exists(os.path.join(checkpoints, "model.ckpt-30.index"))
    # Lost: the steps past the last checkpoint (4, or 2 as reported when the crash took the
    # report of step 24 with it) and the unreadable interval (10).
    assert 12 <= s["steps_lost"] <= 14
    fault_record(scenario="newest checkpoint truncated", folds_finished="1/1", steps_lost=s["steps_lost"],
                 events_lost=s["events_lost"], detect_s="at restore")


def test_corrupt_record_file_fails_its_folds_naming_the_file(prepared, tmp_path, fault_record):
    data = str(tmp_path / "data")
    shutil.copytree(prepared, data)
    manifest = json.load(open(os.path.join(data, "manifest.json")))
    # A file fold 0 tests on that fold 1 holds only as validation images, which these runs
    # never read (train.eval_every_steps 0): fold 0 must fail, fold 1 must not.
    used_by_1 = set(manifest["folds"]["1"]["train"]["files"]) | set(manifest["folds"]["1"]["test"]["files"])
    victim = sorted(set(manifest["folds"]["0"]["test"]["files"]) - used_by_1)[0]
    path = os.path.join(data, victim)
    with open(path, "r+b") as f:  # one flipped byte inside a record's data: its checksum fails
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    run_dir = tmp_path / "run"
    assert run(config_for(data, run_dir, [0, 1]), quiet_console(), report=False) == 1
    s = summarize(run_dir)
    assert s["finished"] == [1] and s["failed"] == [0] and s["attempts"][0] == 1  # never retried
    (failed,) = [e for e in s["events"] if e["event"] == "fold_failed"]
    assert path in failed["reason"] and "prepare it again" in failed["reason"]
    fault_record(scenario="a corrupt TFRecord file", folds_finished="1/2 (the other failed, naming the file)",
                 steps_lost=0, events_lost=s["events_lost"], detect_s="first read of the record")


def test_nan_loss_fails_only_its_fold(prepared, tmp_path, monkeypatch, fault_record):
    run_dir = tmp_path / "run"
    write_faults(tmp_path, [{"fold": 1, "action": "set",
                             "keys": {"train.learning_rate": 1.0e12, "train.clip_norm": 0.0}}], monkeypatch)
    assert run(config_for(prepared, run_dir, [0, 1, 2]), quiet_console(), report=False) == 1
    s = summarize(run_dir)
    assert s["finished"] == [0, 2] and s["failed"] == [1] and s["attempts"][1] == 1
    (failed,) = [e for e in s["events"] if e["event"] == "fold_failed"]
    assert "TrainingDiverged" in failed["reason"] and "fold 1" in failed["reason"]
    fault_record(scenario="NaN loss in one fold", folds_finished="2/3 (the NaN fold failed, not retried)",
                 steps_lost=0, events_lost=s["events_lost"], detect_s="the step it happens")


def test_staged_folds_are_collected_and_an_unsafe_archive_refused(prepared, tmp_path, monkeypatch, fault_record):
    """Folds 0 and 1 act as if their host did not see the run directory; fold 1's archive
    also carries a `../` member, which must be refused whole."""
    run_dir = tmp_path / "runs" / "run"
    write_faults(tmp_path, [{"fold": 0, "action": "stage"},
                            {"fold": 1, "action": "stage", "extra_member": "../escape.txt"}], monkeypatch)
    staged = []
    try:
        assert run(config_for(prepared, run_dir, [0, 1]), quiet_console(), report=False) == 1
        key = [e for e in rundir.read_events(str(run_dir)) if e["event"] == "run_started"][0]["run_key"]
        assert len(key) == 32  # a new run's own identity
        staged = [stage_dir(str(run_dir), socket.gethostname(), k, key) for k in (0, 1)]
        s = summarize(run_dir)
        assert s["finished"] == [0] and s["failed"] == [1]
        fold_0 = run_dir / "fold_0"
        assert (fold_0 / "metrics.json").exists() and (fold_0 / "final" / "model.ckpt.index").exists()
        assert "fold 0 try 1" in (fold_0 / "log.txt").read_text()
        assert not os.path.exists(staged[0]), "a collected fold's staged copy is deleted"
        (failed,) = [e for e in s["events"] if e["event"] == "fold_failed"]
        assert "../escape.txt" in failed["reason"] and staged[1] in failed["reason"]
        assert not (tmp_path / "runs" / "escape.txt").exists() and not (run_dir / "escape.txt").exists()
        assert not (run_dir / "fold_1").exists()
        assert os.path.exists(os.path.join(staged[1], "metrics.json")), "the refused fold's copy is kept"
    finally:
        if staged:
            shutil.rmtree(os.path.dirname(staged[0]), ignore_errors=True)
    fault_record(scenario="a staged fold whose archive holds `../` members", folds_finished="1/2 (the other "
                 "failed; nothing written outside, its staged copy kept)", steps_lost=0,
                 events_lost=s["events_lost"], detect_s="at collection")


def can_mount():
    probe = "/tmp/lmtcnn-mount-probe"
    os.makedirs(probe, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", probe],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    if ok:
        subprocess.run(["umount", probe])
    return ok


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MB tmpfs: room for the run's start, not for its checkpoints."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not can_mount():
        pytest.skip("a small disk needs `mount -t tmpfs` (root in a machine that allows mounts)")
    mount = str(tmp_path / "disk")
    os.makedirs(mount)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", mount], check=True)
    yield mount
    subprocess.run(["umount", "-l", mount])


def test_full_disk_fails_folds_clearly_and_the_run_resumes_once_freed(prepared, tmp_path, small_disk,
                                                                     fault_record):
    run_dir = os.path.join(small_disk, "run")
    config = config_for(prepared, run_dir, [0, 1], train={"max_steps": 40})
    assert run(config, quiet_console(), report=False) == 1
    s = summarize(run_dir)
    assert s["failed"], "the disk never filled up"
    for e in s["events"]:
        if e["event"] == "fold_failed":
            assert "No space left on device" in e["reason"] and "free disk space" in e["reason"]
    assert s["attempts"] == {k: 1 for k in s["attempts"]}  # a full disk is not retried
    done_before = {k: open(os.path.join(run_dir, "fold_%d" % k, "metrics.json")).read() for k in s["finished"]}

    subprocess.run(["mount", "-o", "remount,size=400m", small_disk], check=True)
    assert run(resumed(run_dir), quiet_console(), resume_dir=run_dir) == 0
    after = summarize(run_dir)
    assert after["finished"] == [0, 1]
    for k, text in done_before.items():
        assert open(os.path.join(run_dir, "fold_%d" % k, "metrics.json")).read() == text
    fault_record(scenario="full disk under the run directory (12 MB tmpfs), then freed and resumed",
                 folds_finished="%d/2, then 2/2 after --resume" % len(s["finished"]),
                 steps_lost=after["steps_lost"], events_lost=after["events_lost"], detect_s="the write that fails")
