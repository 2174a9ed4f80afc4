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


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_live_holder_is_named_and_a_dead_one_taken_over(tmp_path):
    record, note = runlock.acquire(str(tmp_path))
    assert note == "" and record["pid"] == os.getpid()
    with pytest.raises(UserError) as e:
        runlock.acquire(str(tmp_path))  # this very process holds it: alive
    assert "pid %d on %s" % (os.getpid(), socket.gethostname()) in str(e.value) and "\n" not in str(e.value)
    runlock.release(str(tmp_path), record)
    assert not os.path.exists(str(tmp_path / runlock.LOCK))

    pid = dead_pid()
    (tmp_path / runlock.LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "started": 1.0}))
    record, note = runlock.acquire(str(tmp_path))
    assert "pid %d" % pid in note and "gone" in note
    assert json.loads((tmp_path / runlock.LOCK).read_text())["pid"] == os.getpid()
    runlock.release(str(tmp_path), record)


def test_a_reused_pid_is_not_mistaken_for_the_driver(tmp_path):
    # Our own pid, but recorded with another process start time: a stale lock whose pid
    # the kernel has given to someone else.
    (tmp_path / runlock.LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                     "started": 1.0, "proc_start": "1"}))
    if runlock.process_start(os.getpid()) is None:
        pytest.skip("no /proc here")
    record, note = runlock.acquire(str(tmp_path))
    assert "gone" in note
    runlock.release(str(tmp_path), record)


def test_another_hosts_lock_needs_force(tmp_path):
    (tmp_path / runlock.LOCK).write_text(json.dumps({"host": "elsewhere", "pid": 7, "started": 1.0}))
    with pytest.raises(UserError, match="elsewhere.*--force"):
        runlock.acquire(str(tmp_path))
    assert rundir.driver_alive(str(tmp_path)) is None
    record, note = runlock.acquire(str(tmp_path), force=True)
    assert "pid 7 on elsewhere" in note
    runlock.release(str(tmp_path), record)


def test_a_torn_lock_file_is_taken_over(tmp_path):
    (tmp_path / runlock.LOCK).write_text('{"host": "x", "pi')
    record, note = runlock.acquire(str(tmp_path))
    assert note == "took over a torn lock file"
    runlock.release(str(tmp_path), record)


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
