"""The fold task's own mechanics, without Ray scheduling: device claims, environment,
error classification, and collecting a fold that ran where the run directory is not visible."""

import errno
import io
import os
import socket
import subprocess
import sys
import tarfile
import tempfile

import pytest

from conftest import ROOT
from lmtcnn.errors import TrainingDiverged, UserError
from scheduler import rundir
from scheduler.collect import UnsafeArchive, pack_dir, stage_dir, unpack
from scheduler.fold_task import FoldError, claim_device, classify, fold_workdir, set_device_env


def test_second_claim_of_one_device_fails_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("LMTCNN_LOCK_DIR", str(tmp_path))  # lock files go here
    first = claim_device("npu", 3)
    try:
        with pytest.raises(RuntimeError, match="custom_unit_instance_resources"):
            claim_device("npu", 3)
        other = claim_device("npu", 4)  # another chip is free
        other.close()
    finally:
        first.close()
    again = claim_device("npu", 3)  # released with the task
    again.close()
    assert claim_device("cpu", None) is None


def test_a_chip_held_by_another_process_on_this_host_is_refused(tmp_path, monkeypatch):
    """Two Ray instances on one host each think they own NPU 3: the lock is per host."""
    monkeypatch.setenv("LMTCNN_LOCK_DIR", str(tmp_path))
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from scheduler.fold_task import claim_device\n"
                               "lock = claim_device('npu', 3); print('held', flush=True); sys.stdin.read()"],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, universal_newlines=True,
                              env=dict(os.environ, LMTCNN_LOCK_DIR=str(tmp_path)))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match="NPU 3 on %s is already used" % socket.gethostname()):
            claim_device("npu", 3)
    finally:
        holder.stdin.close()
        holder.wait(30)
    claim_device("npu", 3).close()  # free once that process is gone


@pytest.mark.parametrize("error, retryable", [
    (UserError("data: bad"), False),
    (TrainingDiverged("fold 0: loss is nan at step 3"), False),
    (OSError(errno.ENOSPC, "No space left on device"), False),
    (RuntimeError("Internal: device 3 lost"), True),
    (MemoryError(), True),
])
def test_errors_are_classified_for_retry(error, retryable):
    result = classify(error)
    assert isinstance(result, FoldError) and result.retryable is retryable
    assert type(error).__name__ in result.reason
    if isinstance(error, OSError):
        assert "free disk space" in result.reason


def test_npu_environment_shows_one_chip_as_logical_zero(monkeypatch):
    for key in ("ASCEND_RT_VISIBLE_DEVICES", "ASCEND_DEVICE_ID", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.setenv(key, "unset")  # monkeypatch restores the original environment afterwards
    set_device_env("npu", 5)
    assert os.environ["ASCEND_RT_VISIBLE_DEVICES"] == "5" and os.environ["ASCEND_DEVICE_ID"] == "0"
    set_device_env("gpu", 2)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"
    set_device_env("cpu", None)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_fold_on_a_host_without_the_run_directory_is_staged_and_collected(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "host-tmp"))  # the other host's local disk
    os.makedirs(tempfile.tempdir)
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    record = rundir.record_driver(run_dir, rundir.make_run_id())
    session = {"run_dir": run_dir, "run_id": record["run_id"], "driver_host": "head", "run_key": "k1"}
    workdir, shared = fold_workdir(session, 2)
    assert shared and workdir == rundir.fold_dir(run_dir, 2)

    # Another host sees no run.json of this session: it writes to its own staging root,
    # at a path that a later attempt of the same run finds again.
    staged, shared = fold_workdir(dict(session, run_id="someone-else"), 2)
    assert not shared and staged.startswith(tempfile.tempdir) and staged == stage_dir(run_dir, "head", 2, "k1")
    # A new run at the same path (the old one deleted) stages elsewhere: never on its checkpoints.
    assert fold_workdir(dict(session, run_id="someone-else", run_key="k2"), 2)[0] != staged
    assert oct(os.stat(os.path.dirname(os.path.dirname(staged))).st_mode & 0o777) == oct(0o700)
    os.makedirs(os.path.join(staged, "final"))
    with open(os.path.join(staged, "final", "model.ckpt.index"), "wb") as f:
        f.write(b"weights")
    with open(os.path.join(staged, "metrics.json"), "w") as f:
        f.write("{}")
    with open(os.path.join(staged, "log.txt"), "w") as f:
        f.write("fold 2 try 2 ...\n")
    # An earlier attempt ran on a host that sees the run directory and left its lines.
    collected = rundir.fold_dir(run_dir, 2)
    os.makedirs(collected)
    with open(os.path.join(collected, "log.txt"), "w") as f:
        f.write("fold 2 try 1 ...\n")
    unpack(pack_dir(staged), collected)
    assert open(os.path.join(collected, "final", "model.ckpt.index"), "rb").read() == b"weights"
    assert os.path.exists(os.path.join(collected, "metrics.json"))
    assert open(os.path.join(collected, "log.txt")).read() == "fold 2 try 1 ...\nfold 2 try 2 ...\n"
    assert os.path.isdir(staged), "the staged copy is deleted only after the driver has it"
    assert sorted(os.listdir(run_dir)) == ["fold_2", "run.json"]  # no temporary directory left


def archive_with(member_name, kind=tarfile.REGTYPE, link=""):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        ok = tarfile.TarInfo("./metrics.json")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"{}"))
        info = tarfile.TarInfo(member_name)
        info.type, info.linkname = kind, link
        data = b"x" if kind == tarfile.REGTYPE else b""
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("name, kind, link", [
    ("../outside.txt", tarfile.REGTYPE, ""),
    ("./checkpoints/../../outside.txt", tarfile.REGTYPE, ""),
    ("/tmp/absolute.txt", tarfile.REGTYPE, ""),
    ("./link", tarfile.SYMTYPE, "/etc/passwd"),
    ("./hard", tarfile.LNKTYPE, "metrics.json"),
])
def test_an_archive_reaching_outside_the_fold_is_refused_whole(tmp_path, name, kind, link):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    destination = str(run_dir / "fold_0")
    with pytest.raises(UnsafeArchive, match="member"):
        unpack(archive_with(name, kind, link), destination)
    assert sorted(os.listdir(str(run_dir))) == []  # nothing extracted, no temporary left
    assert sorted(os.listdir(str(tmp_path))) == ["run"]
