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


def test_written_files_follow_the_umask(tmp_path):
    """Not mkstemp's 0600: run.json, results and the manifest are as readable as the rest."""
    umask = os.umask(0o022)
    os.umask(umask)
    write_json_atomic(str(tmp_path / "run.json"), {"a": 1})
    open(str(tmp_path / "plain.txt"), "w").close()
    assert os.stat(str(tmp_path / "run.json")).st_mode & 0o777 == os.stat(str(tmp_path / "plain.txt")).st_mode & 0o777
    assert os.stat(str(tmp_path / "run.json")).st_mode & 0o777 == 0o666 & ~umask
