"""Several real Ray nodes on this machine (ray.cluster_utils.Cluster): losing a node."""

import json

import pytest
import ray
from ray.cluster_utils import Cluster

from conftest import EventTail, quiet_console, run_config, summarize
from scheduler import rundir
from scheduler.driver import run

STORE = 80 * 1024 * 1024


@pytest.fixture
def cluster():
    # The head holds only the driver and the progress channel (0 CPUs): folds run on
    # the two worker nodes, each with room for one fold.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": STORE})
    ray.init(address=cluster.address, log_to_driver=False)  # before add_node, or remove_node refuses
    workers = [cluster.add_node(num_cpus=1, object_store_memory=STORE) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def node_of(workers, node_id):
    """The cluster_utils node whose raylet has `node_id` (2.7.2's Node has no node_id)."""
    sockets = {n["NodeID"]: n["RayletSocketName"] for n in ray.nodes()}
    return next(w for w in workers if w.raylet_socket_name == sockets[node_id])


# In the fault matrix (`make test-faults`) alone: a multi-node cluster and a lost node cost
# half a minute, and `make test` must stay under 10 minutes a lane.
@pytest.mark.faults
def test_fold_of_a_lost_node_finishes_on_another(prepared, tmp_path, cluster, monkeypatch, fault_record):
    cluster, workers = cluster
    run_dir = tmp_path / "run"
    config = run_config(prepared, run_dir, [0, 1], train={"max_steps": 40, "checkpoint_every_steps": 10})
    # Fold 0 waits after its checkpoint at step 10 until its node is gone (no race with
    # the speed of training); the hold applies to the first attempt only.
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps([{"fold": 0, "attempt": 1, "event": "checkpoint_saved", "step": 10,
                                   "action": "hold"}]))
    monkeypatch.setenv("LMTCNN_FAULTS", str(faults))
    removed = []

    def remove_node_after_checkpoint(event):
        if not removed and event["event"] == "checkpoint_saved" and event["fold"] == 0:
            removed.append(event)
            cluster.remove_node(node_of(workers, event["node_id"]))

    tail = EventTail(run_dir, remove_node_after_checkpoint)
    try:
        assert run(config, quiet_console(), report=False) == 0
    finally:
        tail.close()
    assert removed and removed[0]["step"] == 10

    events = rundir.read_events(str(run_dir))
    retry = [e for e in events if e["event"] == "fold_retrying"]
    assert len(retry) == 1 and retry[0]["fold"] == 0
    starts = [e for e in events if e["event"] == "fold_started" and e["fold"] == 0]
    assert [e["attempt"] for e in starts] == [1, 2]
    assert starts[1]["node_id"] != removed[0]["node_id"]
    assert starts[1]["start_step"] == 10
    assert any(e["event"] == "notice" and "nodes" in e["text"] for e in events)
    results = json.load(open(str(run_dir / "results.json")))
    assert [r["state"] for r in results["folds"]] == ["done", "done"]
    assert results["folds"][0]["attempts"] == 2
    s = summarize(str(run_dir))
    # Held at its checkpoint when the node went: nothing past it to lose.
    assert s["steps_lost"] == 0 and s["events_repeated"] == 0
    fault_record(scenario="a node is lost mid-fold (its fold held at its checkpoint)", folds_finished="2/2",
                 steps_lost=s["steps_lost"], events_lost=s["events_lost"], detect_s="at once (Ray reports the node)")
