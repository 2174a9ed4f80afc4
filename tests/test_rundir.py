"""The run directory's lock, event log and file modes, without Ray."""

import json
import os
import socket
import subprocess
import sys

import pytest

from lmtcnn.errors import UserError
from lmtcnn.files import write_json_atomic
from scheduler import rundir, runlock


HOLDER = """
import sys
from scheduler import runlock
lock = runlock.acquire(sys.argv[1])
print("held", flush=True)
sys.stdin.read()
"""


def hold_in_another_process(run_dir):
    from conftest import ROOT

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, run_dir], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, universal_newlines=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_live_holder_is_named_and_a_dead_ones_lock_taken_over(tmp_path):
    run_dir = str(tmp_path)
    holder = hold_in_another_process(run_dir)
    try:
        assert rundir.driver_alive(run_dir) is True
        with pytest.raises(UserError) as e:
            runlock.acquire(run_dir)
        assert "driver pid %d on %s" % (holder.pid, socket.gethostname()) in str(e.value)
        assert "\n" not in str(e.value)
    finally:
        holder.kill()  # SIGKILL: no handler runs, the kernel drops the lock
        holder.wait()
    assert rundir.driver_alive(run_dir) is False
    lock = runlock.acquire(run_dir)
    assert "pid %d" % holder.pid in lock.note and "gone" in lock.note
    assert runlock.read_holder(run_dir)["pid"] == os.getpid()
    with pytest.raises(UserError, match="pid %d" % os.getpid()):
        runlock.acquire(run_dir)  # a second driver in this very process is refused as well
    lock.release()
    assert runlock.read_holder(run_dir) == {} and rundir.driver_alive(run_dir) is False
    again = runlock.acquire(run_dir)
    assert again.note == ""
    again.release()


def test_a_glance_by_status_does_not_turn_a_driver_away(tmp_path):
    import fcntl
    import threading

    path = str(tmp_path / runlock.LOCK)
    open(path, "w").close()
    glance = os.open(path, os.O_RDONLY)
    fcntl.flock(glance, fcntl.LOCK_SH)  # what `status` holds for an instant
    fd = os.open(path, os.O_RDWR)
    try:
        assert runlock._take(fd, tries=2, wait_s=0.01) is False  # held throughout: refused
        threading.Timer(0.1, os.close, [glance]).start()  # the glance ends
        # A generous budget: a busy machine must not fail this; the lock is taken once free.
        assert runlock._take(fd, tries=200, wait_s=0.05) is True
    finally:
        os.close(fd)


def test_another_hosts_record_needs_force(tmp_path):
    (tmp_path / runlock.LOCK).write_text(json.dumps({"host": "elsewhere", "pid": 7, "started": 1.0}))
    assert rundir.driver_alive(str(tmp_path)) is None
    with pytest.raises(UserError, match="elsewhere.*--force"):
        runlock.acquire(str(tmp_path))
    lock = runlock.acquire(str(tmp_path), force=True)
    assert "pid 7 on elsewhere" in lock.note
    lock.release()


def test_a_driver_still_writing_its_record_is_not_taken_over(tmp_path):
    import fcntl

    path = str(tmp_path / runlock.LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # locked, record not written yet
    try:
        with pytest.raises(UserError, match="another driver is starting"):
            runlock.acquire(str(tmp_path))
    finally:
        os.close(fd)


def test_a_torn_record_whose_lock_is_free_is_taken_over(tmp_path):
    (tmp_path / runlock.LOCK).write_text('{"host": "x", "pi')
    lock = runlock.acquire(str(tmp_path))
    assert lock.note == ""
    lock.release()


def test_a_torn_last_event_does_not_swallow_the_next(tmp_path):
    (tmp_path / rundir.EVENTS).write_text('{"event": "run_started", "time": 1}\n{"event": "step_do')
    log = rundir.EventLog(str(tmp_path))
    log.append({"event": "notice", "text": "next session", "time": 2})
    log.close()
    assert [e["event"] for e in rundir.read_events(str(tmp_path))] == ["run_started", "notice"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, whose writes fail with ENOSPC")
def test_events_held_through_a_full_disk_are_written_after_or_counted_at_close(tmp_path):
    said = []
    log = rundir.EventLog(str(tmp_path), on_trouble=said.append)
    real = log.fd
    log.fd = os.open("/dev/full", os.O_WRONLY)  # every write: No space left on device
    log.append({"event": "fold_queued", "fold": 0, "time": 1})
    log.append({"event": "fold_queued", "fold": 1, "time": 2})
    assert len(said) == 1 and "kept in memory" in said[0]
    os.close(log.fd)
    log.fd = real  # space again
    log.append({"event": "fold_queued", "fold": 2, "time": 3})
    assert "no event was lost" in said[-1]
    assert [e["fold"] for e in rundir.read_events(str(tmp_path))] == [0, 1, 2]

    log.fd = os.open("/dev/full", os.O_WRONLY)
    log.append({"event": "run_finished", "time": 4})
    log.close()  # still full at the end: the loss is said, not silent
    assert said[-1].startswith("1 events were never written to " + os.path.join(str(tmp_path), rundir.EVENTS))
    os.close(real)


def test_written_files_follow_the_umask(tmp_path):
    """Not mkstemp's 0600: run.json, results and the manifest are as readable as the rest."""
    umask = os.umask(0o022)
    os.umask(umask)
    write_json_atomic(str(tmp_path / "run.json"), {"a": 1})
    open(str(tmp_path / "plain.txt"), "w").close()
    assert os.stat(str(tmp_path / "run.json")).st_mode & 0o777 == os.stat(str(tmp_path / "plain.txt")).st_mode & 0o777
    assert os.stat(str(tmp_path / "run.json")).st_mode & 0o777 == 0o666 & ~umask
