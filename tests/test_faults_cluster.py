"""The fault matrix, part 2: a retry that no node can place (ray.cluster_utils.Cluster).

The only NPU host dies while its fold runs; the retry can never be placed. The driver
must notice (not wait forever as Ray would) and fail the fold naming the missing
resource after scheduler.unplaceable_timeout_s.
"""

import json

import pytest
import ray
from ray.cluster_utils import Cluster

from conftest import EventTail, quiet_console, run_config, summarize, write_faults
from scheduler.driver import NPU_SYSTEM_CONFIG, run, ray_version

pytestmark = pytest.mark.faults
STORE = 80 * 1024 * 1024
UNPLACEABLE_S = 6.0


@pytest.fixture
def cluster():
    head = {"num_cpus": 0, "object_store_memory": STORE}
    if ray_version() < (2, 10):
        head["_system_config"] = NPU_SYSTEM_CONFIG
    cluster = Cluster(initialize_head=True, head_node_args=head)
    ray.init(address=cluster.address, log_to_driver=False)
    # One host with an NPU, one with CPUs only.
    npu_host = cluster.add_node(num_cpus=1, resources={"NPU": 1}, object_store_memory=STORE)
    cluster.add_node(num_cpus=1, object_store_memory=STORE)
    cluster.wait_for_nodes()
    yield cluster, npu_host
    ray.shutdown()
    cluster.shutdown()


def test_a_retry_no_node_can_place_fails_naming_the_resource(prepared, tmp_path, cluster, monkeypatch,
                                                               fault_record):
    cluster, npu_host = cluster
    run_dir = tmp_path / "run"
    config = run_config(prepared, run_dir, [0], train={"max_steps": 20, "checkpoint_every_steps": 10},
                        scheduler={"device": "npu", "unplaceable_timeout_s": UNPLACEABLE_S})
    write_faults(tmp_path, [{"fold": 0, "attempt": 1, "event": "checkpoint_saved", "step": 10, "action": "hold"}],
                 monkeypatch)
    removed = []

    def remove_npu_host(event):
        if not removed and event["event"] == "checkpoint_saved":
            removed.append(event)
            cluster.remove_node(npu_host)

    tail = EventTail(run_dir, remove_npu_host)
    try:
        assert run(config, quiet_console(), report=False) == 1
    finally:
        tail.close()
    assert removed
    s = summarize(run_dir)
    assert s["failed"] == [0] and s["attempts"] == {0: 2}
    (retry,) = [e for e in s["events"] if e["event"] == "fold_retrying"]
    (waiting,) = [e for e in s["events"] if e["event"] == "notice" and "waits for a node" in e["text"]]
    (failed,) = [e for e in s["events"] if e["event"] == "fold_failed"]
    assert "NPU: 1" in waiting["text"] and "NPU: 1" in failed["reason"] and "no alive node" in failed["reason"]
    detect = failed["time"] - retry["time"]
    assert detect >= UNPLACEABLE_S
    results = json.load(open(str(run_dir / "results.json")))
    assert results["folds"][0]["state"] == "failed"
    fault_record(scenario="the only NPU host dies; the retry cannot be placed (unplaceable_timeout_s %g)"
                 % UNPLACEABLE_S, folds_finished="0/1 (failed, naming {CPU: 1, NPU: 1})",
                 steps_lost="-", events_lost=s["events_lost"], detect_s=round(detect, 1))
