"""The driver on a real local Ray instance that declares a custom NPU resource."""

import collections
import json

import pytest
import ray

from conftest import quiet_console, ray_init_local, run_config, summarize
from scheduler import rundir
from scheduler.driver import run


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray_init_local(NPU=2)
    yield
    ray.shutdown()


def events_of(run_dir, kind=None):
    return [e for e in rundir.read_events(str(run_dir)) if kind is None or e["event"] == kind]


def test_three_folds_share_two_npus_without_collisions(prepared, tmp_path):
    run_dir = tmp_path / "run"
    # Placed on the NPU resource (the task sets the Ascend variables), trained on the CPU;
    # three folds on two NPUs: one NPU serves two folds, one after the other.
    config = run_config(prepared, run_dir, range(3), scheduler={"device": "npu"})
    assert run(config, quiet_console(), report=False) == 0
    assert not (run_dir / "report").exists()  # report=False (`run --no-report`) draws none

    results = json.load(open(str(run_dir / "results.json")))
    assert [r["state"] for r in results["folds"]] == ["done"] * 3
    assert all(0 <= r["age_top1"] <= 100 and r["steps"] == 8 for r in results["folds"])
    assert set(results["summary"]) == {"age_top1", "age_top2", "age_one_off", "gender"}

    started = {e["fold"]: e for e in events_of(run_dir, "fold_started")}
    finished = {e["fold"]: e for e in events_of(run_dir, "fold_finished")}
    assert sorted(started) == sorted(finished) == list(range(3))
    by_device = collections.defaultdict(list)
    for fold, e in started.items():
        assert e["device_label"] in ("NPU0", "NPU1")
        by_device[(e["node_id"], e["device_label"])].append((e["time"], finished[fold]["time"]))
    assert len(by_device) == 2  # both devices were used
    for spans in by_device.values():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end, "two folds ran at once on one device index"
    envs = [e for e in events_of(run_dir, "message") if "env" in e]
    assert len(envs) == 3
    for e in envs:
        index = e["device_label"][len("NPU"):]
        assert e["env"]["ASCEND_RT_VISIBLE_DEVICES"] == index and e["env"]["ASCEND_DEVICE_ID"] == "0"
    for k in range(3):
        fold = run_dir / ("fold_%d" % k)
        assert (fold / "metrics.json").exists() and (fold / "final" / "model.ckpt.index").exists()
        assert (fold / "log.txt").read_text().count("\n") >= 4
    assert (run_dir / "results.md").exists() and (run_dir / "results.csv").exists()
    assert (run_dir / "config.yaml").exists()


def use_faults(tmp_path, monkeypatch, rules):
    """Fault rules (scheduler/faults.py) for the next run() in this process."""
    path = tmp_path / "faults.json"
    path.write_text(json.dumps(rules))
    monkeypatch.setenv("LMTCNN_FAULTS", str(path))


def test_killed_worker_is_retried_and_resumes_from_its_checkpoint(prepared, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    config = run_config(prepared, run_dir, [2], train={"max_steps": 40, "checkpoint_every_steps": 10})
    # SIGKILL of the worker right after its checkpoint at step 20, as the OOM killer would.
    use_faults(tmp_path, monkeypatch, [{"fold": 2, "attempt": 1, "event": "checkpoint_saved", "step": 20,
                                        "action": "crash"}])
    assert run(config, quiet_console(), report=False) == 0

    retrying = events_of(run_dir, "fold_retrying")
    assert len(retrying) == 1 and "WorkerCrashedError" in retrying[0]["reason"]
    starts = events_of(run_dir, "fold_started")
    assert [e["attempt"] for e in starts] == [1, 2]
    assert starts[1]["start_step"] == 20
    finished = events_of(run_dir, "fold_finished")
    assert len(finished) == 1 and finished[0]["attempt"] == 2 and finished[0]["step"] == 40
    results = json.load(open(str(run_dir / "results.json")))
    assert results["folds"][0]["state"] == "done" and results["folds"][0]["attempts"] == 2
    # Both attempts' lines stay in the fold's log.
    log = (run_dir / "fold_2" / "log.txt").read_text()
    assert "fold 2 try 1" in log and "fold 2 try 2" in log


def test_fold_without_retries_left_fails_while_others_finish(prepared, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    config = run_config(prepared, run_dir, [0, 1], train={"max_steps": 20, "checkpoint_every_steps": 10},
                        scheduler={"max_retries": 0})
    use_faults(tmp_path, monkeypatch, [{"fold": 0, "event": "checkpoint_saved", "step": 10, "action": "crash"}])
    assert run(config, quiet_console(), report=False) == 1  # not every fold finished
    results = json.load(open(str(run_dir / "results.json")))
    states = {r["fold"]: r for r in results["folds"]}
    assert states[0]["state"] == "failed" and "no retries left" in states[0]["reason"]
    assert "age_top1" not in states[0]
    assert states[1]["state"] == "done" and results["finished_folds"] == 1
    assert "| 0 | failed |" in (run_dir / "results.md").read_text()


def test_python_error_in_a_fold_is_not_retried(prepared, tmp_path):
    run_dir = tmp_path / "run"
    # A learning rate this large turns the loss into NaN within a few steps.
    config = run_config(prepared, run_dir, [3], train={"learning_rate": 1.0e12, "clip_norm": 0.0, "max_steps": 50})
    assert run(config, quiet_console(), report=False) == 1
    failed = events_of(run_dir, "fold_failed")
    assert len(failed) == 1 and "TrainingDiverged" in failed[0]["reason"] and "step" in failed[0]["reason"]
    assert not events_of(run_dir, "fold_retrying")


@pytest.mark.matrix
def test_a_damaged_metrics_file_is_moved_aside_and_the_fold_scored_again(prepared, tmp_path, fault_record):
    run_dir = tmp_path / "run"
    config = run_config(prepared, run_dir, [4], train={"max_steps": 4})
    assert run(config, quiet_console(), report=False) == 0
    metrics = run_dir / "fold_4" / "metrics.json"
    text = metrics.read_text()
    metrics.write_text(text[:len(text) // 2])  # a torn copy

    from scheduler.config import load_run_config

    assert run(load_run_config(str(run_dir / "config.yaml")), quiet_console(), resume_dir=str(run_dir),
               report=False) == 0
    after = events_of(run_dir)
    (notice,) = [e for e in after if e["event"] == "notice" and "damaged" in e["text"]]
    assert str(metrics) in notice["text"]
    assert list((run_dir / "fold_4").glob("metrics.json.damaged-*"))
    starts = [e for e in after if e["event"] == "fold_started"]
    assert [e["start_step"] for e in starts] == [0, 4]  # resumed at its end: scored, not retrained
    assert not [e for e in after if e["event"] == "step_done" and e["attempt"] == 2]
    assert json.loads(metrics.read_text())["step"] == 4
    s = summarize(str(run_dir))
    fault_record(scenario="a torn metrics.json, then --resume", folds_finished="1/1", steps_lost=s["steps_lost"],
                 events_lost=s["events_lost"], detect_s="at --resume")
