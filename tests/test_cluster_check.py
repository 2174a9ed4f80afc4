"""`python -m scheduler cluster-check`: the problem-finding logic on hand-made probe
results, and the whole command on real Ray nodes (ray.cluster_utils.Cluster plus one
node started with `ray start` in a mount namespace of its own, which is what makes it
a host that really does not see the data)."""

import io
import json
import os
import subprocess
import sys
import time

import pytest
import ray
from ray.cluster_utils import Cluster
from rich.console import Console

from scheduler.__main__ import main
from scheduler.cluster_check import find_problems, node_cells, node_names, nodes_table, unchecked_npu_ids
from scheduler.driver import NPU_SYSTEM_CONFIG, ray_version

STORE = 80 * 1024 * 1024
DRIVER = {"python": "3.7.16", "ray": "2.7.2", "paths": {"data": "/data/adience", "runs": "/mnt/nfs/runs"}}
OK = {"state": "ok", "detail": ""}


def probe(**changes):
    seen = {"host": "npu-1", "python": "3.7.16", "ray": "2.7.2", "tf": "1.15.5", "tf_error": "", "npu_bridge": None,
            "paths": {"data": dict(OK), "runs": dict(OK)}}
    seen.update(changes)
    return seen


def node(ip, node_id, **resources):
    return {"NodeID": node_id, "NodeManagerAddress": ip, "Resources": resources or {"CPU": 4.0}}


def problems_of(*pairs):
    """find_problems over (node, result) pairs."""
    nodes = [n for n, _ in pairs]
    results = {n["NodeID"]: r for n, r in pairs}
    return find_problems(DRIVER, nodes, results, node_names(nodes))


def result(probe_result, error="", npu_ids=None):
    return {"probe": probe_result, "error": error, "npu_ids": npu_ids}


def test_a_healthy_cluster_has_no_problems():
    assert problems_of((node("10.0.0.1", "a" * 8), result(probe())),
                       (node("10.0.0.2", "b" * 8, NPU=8.0, CPU=192.0),
                        result(probe(npu_bridge=""), npu_ids={"ids": [0, 1], "together": True}))) == []


def test_versions_differing_from_the_driver_are_named_with_their_fix():
    found = problems_of((node("10.0.0.1", "a" * 8), result(probe())),
                        (node("10.0.0.7", "b" * 8), result(probe(python="3.7.9", ray="2.7.1"))))
    assert found == [
        "node 10.0.0.7: Python 3.7.9 differs from the driver's 3.7.16: install the same Python on every host "
        "(cluster/README.md)",
        "node 10.0.0.7: Ray 2.7.1 differs from the driver's 2.7.2: install ray==2.7.2 on every host "
        "(requirements.txt)"]


def test_tensorflow_is_compared_between_the_nodes():
    found = problems_of((node("10.0.0.1", "a" * 8), result(probe())),
                        (node("10.0.0.2", "b" * 8), result(probe())),
                        (node("10.0.0.3", "c" * 8), result(probe(tf="1.15.0"))),
                        (node("10.0.0.4", "d" * 8), result(probe(tf="", tf_error="ImportError: no module"))))
    assert len(found) == 2
    assert found[0].startswith("node 10.0.0.3: TensorFlow 1.15.0 differs from 1.15.5 on the other nodes")
    assert found[1].startswith("node 10.0.0.4: TensorFlow does not import (ImportError: no module)")


def test_two_tensorflows_without_a_majority_are_one_line():
    found = problems_of((node("10.0.0.1", "a" * 8), result(probe())),
                        (node("10.0.0.2", "b" * 8), result(probe(tf="1.15.0"))))
    assert found == ["TensorFlow differs between the nodes (1.15.5 on 10.0.0.1; 1.15.0 on 10.0.0.2): install the "
                     "same TensorFlow on every host"]


def test_npu_bridge_missing_on_an_npu_node():
    (line,) = problems_of((node("10.0.0.2", "b" * 8, NPU=8.0),
                           result(probe(npu_bridge="ModuleNotFoundError: No module named 'npu_bridge'"))))
    assert line.startswith("node 10.0.0.2: npu_bridge does not import (ModuleNotFoundError")
    assert "set_env.sh" in line


def test_duplicate_npu_ids_only_when_both_tasks_held_an_npu_at_once():
    npu_node = node("10.0.0.2", "b" * 8, NPU=8.0)
    (line,) = problems_of((npu_node, result(probe(npu_bridge=""), npu_ids={"ids": [0, 0], "together": True})))
    assert line == ("node 10.0.0.2: NPU ids not distinct (two tasks of one NPU each both got NPU 0): start the head "
                    "with cluster/start-head.sh (it sets custom_unit_instance_resources)")
    # One after the other they may well get the same NPU: no problem, but said to be unchecked.
    apart = result(probe(npu_bridge=""), npu_ids={"ids": [0, 0], "together": False})
    assert problems_of((npu_node, apart)) == []
    assert unchecked_npu_ids([npu_node], {npu_node["NodeID"]: apart}, node_names([npu_node])) == [
        "node 10.0.0.2: NPU ids not checked: two tasks of one NPU each did not run at the same time "
        "(its NPUs busy?)"]


def test_path_problems():
    paths = {"data": {"state": "missing", "detail": ""},
             "runs": {"state": "unwritable", "detail": "Read-only file system"}}
    found = problems_of((node("10.0.0.7", "b" * 8), result(probe(paths=paths))))
    assert found == [
        "node 10.0.0.7: data directory /data/adience not visible: mount it at the same path on every host or copy "
        "it there",
        "node 10.0.0.7: run directory root /mnt/nfs/runs not writable (Read-only file system): fix its permissions "
        "or mount it read-write"]
    unprepared = {"data": {"state": "unprepared", "detail": ""}, "runs": {"state": "elsewhere", "detail": ""}}
    found = problems_of((node("10.0.0.7", "b" * 8), result(probe(paths=unprepared))))
    assert "has no manifest.json" in found[0] and "--out /data/adience" in found[0]
    assert "another directory than the driver's" in found[1]


def test_a_node_without_an_answer_is_a_problem_and_nodes_sharing_an_ip_are_told_apart():
    found = problems_of((node("10.0.0.1", "a1" * 14), result(probe())),
                        (node("10.0.0.1", "b2" * 14), result(None, error="no answer in 180 s")))
    assert found == ["node 10.0.0.1#b2b2b2: a probe task found no worker there (no answer in 180 s): check the host "
                     "with `ray status` and its /tmp/ray/session_latest/logs/raylet.out"]


def test_the_table_fits_80_columns_with_every_cell_whole():
    n = node("192.168.100.107", "b" * 8, NPU=8.0, CPU=192.0)
    cells = node_cells(n, result(probe(host="ascend-worker-07", npu_bridge=""),
                                 npu_ids={"ids": [0, 1], "together": True}), DRIVER, "1.15.5", False)
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(nodes_table([("192.168.100.107", cells)]))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    for word in ("192.168.100.107", "3.7.16", "2.7.2", "1.15.5", "8 NPU, 192 CPU", "0,1"):
        assert word in lines[-1]


# ---- the command on real nodes --------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    head = {"num_cpus": 0, "object_store_memory": STORE}
    if ray_version() < (2, 10):
        head["_system_config"] = NPU_SYSTEM_CONFIG  # as cluster/start-head.sh starts it
    cluster = Cluster(initialize_head=True, head_node_args=head)
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The prepared data (only its manifest is looked at) and a run directory root, each
    below a directory of its own so a node can be kept from seeing it; a configuration
    naming them."""
    root = tmp_path_factory.mktemp("site")
    data = root / "share" / "data"
    data.mkdir(parents=True)
    (data / "manifest.json").write_text("{}")
    runs = root / "runs"
    runs.mkdir()
    config = root / "check.yaml"
    config.write_text("name: check\ndata:\n  data_dir: %s\nscheduler:\n  runs_root: %s\n" % (data, runs))
    return {"root": root, "data": str(data), "runs": str(runs), "config": str(config)}


def check(capsys, *argv):
    status = main(["cluster-check"] + list(argv))
    out = capsys.readouterr().out
    return status, out


def rows(out):
    """The table's rows (below its header rule), split into cells."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("─")) + 1
    told = ("node ", "no ", "paths ", "NPU ", "TensorFlow ")  # the lines after the table
    return [line.split() for line in lines[start:] if line and not line.startswith(told)]


def unshare_works():
    try:
        return subprocess.run(["unshare", "-m", "true"], stderr=subprocess.DEVNULL).returncode == 0
    except OSError:
        return False


@pytest.fixture
def other_host(cluster, site, tmp_path):
    """A node that is another host in what matters here, started with `ray start` in a
    mount namespace of its own (the scheduler's nodes share this machine's filesystem, so
    this is how one of them can really lack a mount): the data's parent is covered by an
    empty tmpfs, so the data directory does not exist there, and the run directory root
    is mounted read-only. Its Python finds another TensorFlow first on its path (a
    package reporting another version: no second TensorFlow build is installed here),
    as a host with its own TensorFlow would. It declares two NPUs and has no npu_bridge.
    The head node is the healthy one beside it: every probe of a real node imports
    TensorFlow, seconds each on TF 2, so no third node is started for a clean pass
    (the problem-finding of a healthy cluster is tested on plain results above)."""
    if not unshare_works():
        pytest.skip("needs `unshare -m` (root or CAP_SYS_ADMIN) to give one node its own mounts")
    stub = tmp_path / "other-site-packages" / "tensorflow"
    stub.mkdir(parents=True)
    other_tf = "1.15.0" if ray_version() < (2, 10) else "2.20.0"
    (stub / "__init__.py").write_text("__version__ = %r\n" % other_tf)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(stub.parent),
                                                                     os.environ.get("PYTHONPATH")])))
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    script = ('mount -t tmpfs none "$1" && mount --bind "$2" "$2" && mount -o remount,bind,ro "$2" && '
              'shift 2 && exec "$@"')
    before = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    process = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
         os.path.dirname(site["data"]), site["runs"], ray_cli, "start", "--address", cluster.address,
         "--num-cpus", "1", "--resources", json.dumps({"NPU": 2}), "--object-store-memory", str(STORE), "--block"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not ({n["NodeID"] for n in ray.nodes() if n["Alive"]} - before):
            assert process.poll() is None and time.time() < deadline, "the other host's node did not join"
            time.sleep(0.2)
        yield other_tf
    finally:
        process.terminate()  # `ray start --block` stops its node's processes on SIGTERM
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_a_node_that_cannot_see_the_data_nor_write_runs_and_has_another_tensorflow(cluster, site, other_host,
                                                                                    capsys):
    status, out = check(capsys, "--address", cluster.address, site["config"])
    assert status == 1, out
    table = rows(out)
    assert len(table) == 2  # the head and the other host
    odd = [cells for cells in table if other_host in cells]
    assert len(odd) == 1 and odd[0][-3:-1] == ["missing", "read-only"]
    assert odd[0][-4] == "no"  # npu_bridge where NPUs are declared (cells split at spaces: count from the end)
    # Ray hands out NPUs natively from 2.10; before, the head here lists NPU, so two tasks get two NPUs.
    assert odd[0][-1] == ("native" if ray_version() >= (2, 10) else "0,1")
    problems = [line for line in out.splitlines() if line.startswith("node ")]
    name = odd[0][1]
    # Two nodes, two TensorFlows: no majority, so one line names both.
    head_tf = next(cells[4] for cells in table if cells is not odd[0])
    tf_line = next(line for line in out.splitlines() if line.startswith("TensorFlow differs"))
    assert "%s on %s" % (other_host, name) in tf_line and head_tf in tf_line
    assert tf_line.endswith("install the same TensorFlow on every host")
    assert sorted(problems) == sorted([
        next(p for p in problems if p.startswith("node %s: npu_bridge does not import" % name)),
        "node %s: data directory %s not visible: mount it at the same path on every host or copy it there"
        % (name, site["data"]),
        "node %s: run directory root %s not writable (Read-only file system): fix its permissions or mount it "
        "read-write" % (name, site["runs"])])
    # The head passes every check, with the driver's own versions.
    head = [cells for cells in table if cells is not odd[0]]
    assert len(head) == 1 and head[0][-3:-1] == ["ok", "ok"]
    assert head[0][2] == "%d.%d.%d" % sys.version_info[:3] and head[0][3] == ray.__version__
    # The probe's file and the driver's marker are gone from the run directory root.
    assert os.listdir(site["runs"]) == []


def test_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys):
    assert main(["cluster-check", str(tmp_path / "nowhere.yaml")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: %s: no such configuration file" % (tmp_path / "nowhere.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("scheduler:\n  runs_rot: runs\n")
    assert main(["cluster-check", str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "runs_rot" in err[0] and str(bad) in err[0]
