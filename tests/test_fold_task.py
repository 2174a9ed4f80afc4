"""The fold task's own mechanics, without Ray scheduling: device claims, environment,
and collecting a fold that ran where the run directory is not visible."""

import os
import tempfile

import pytest

from scheduler import rundir
from scheduler.driver import unpack
from scheduler.fold_task import claim_device, fold_workdir, pack_dir, set_device_env


def test_second_claim_of_one_device_fails_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # lock files go here
    first = claim_device("node-a", "npu", 3)
    try:
        with pytest.raises(RuntimeError, match="custom_unit_instance_resources"):
            claim_device("node-a", "npu", 3)
        other = claim_device("node-a", "npu", 4)  # another chip is free
        other.close()
        elsewhere = claim_device("node-b", "npu", 3)  # the same index on another node is free
        elsewhere.close()
    finally:
        first.close()
    again = claim_device("node-a", "npu", 3)  # released with the task
    again.close()
    assert claim_device("node-a", "cpu", None) is None


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
    workdir, shared = fold_workdir(run_dir, record["run_id"], 2)
    assert shared and workdir == rundir.fold_dir(run_dir, 2)

    # Another host sees no run.json of this run (or another run's): it writes locally.
    staged, shared = fold_workdir(run_dir, "someone-else", 2)
    assert not shared and staged.startswith(tempfile.tempdir)
    os.makedirs(os.path.join(staged, "final"))
    with open(os.path.join(staged, "final", "model.ckpt.index"), "wb") as f:
        f.write(b"weights")
    with open(os.path.join(staged, "metrics.json"), "w") as f:
        f.write("{}")
    unpack(pack_dir(staged), rundir.fold_dir(run_dir, 2))
    collected = rundir.fold_dir(run_dir, 2)
    assert open(os.path.join(collected, "final", "model.ckpt.index"), "rb").read() == b"weights"
    assert os.path.exists(os.path.join(collected, "metrics.json"))
