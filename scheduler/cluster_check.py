"""`python -m scheduler cluster-check [--address A] [CONFIG]`: can every host run it?

One small probe task is pinned to each alive node (hard node affinity, no CPU asked, so
it is placed even on a head started with 0 CPUs) and reports what a worker process there
sees: Python, Ray and TensorFlow versions, whether `npu_bridge` imports (only on nodes
that declare NPUs), and whether the configuration's data directory and run directory
root exist at the same absolute path. On Ray < 2.10, a node with two NPUs or more also
runs two tasks of one NPU each at once, to see whether Ray hands them distinct NPU
instances (it does only when the head lists NPU in `custom_unit_instance_resources`).

The probes run on the nodes; everything after them (`find_problems`, `node_cells`) is
pure functions over their plain-dict results, tested without Ray.
"""

import collections
import importlib
import os
import platform
import shutil
import socket
import tempfile
import time
import uuid

from lmtcnn.errors import UserError

# A probe imports TensorFlow: seconds on a warm host, a minute on a cold disk or NFS.
PROBE_TIMEOUT_S = 180.0
# How long each of the two NPU tasks waits for the other to hold its NPU too; only a
# busy node (a run holding its NPUs) makes them wait this long.
NPU_TOGETHER_S = 30.0
NATIVE_NPU_RAY = (2, 10)  # Ray knows NPU as an accelerator from here on
MANIFEST = "manifest.json"  # lmtcnn.prepare.MANIFEST; importing prepare would load its image stack
BRIDGE_MODULE = "npu_bridge.npu_init"  # what lmtcnn.device imports to train on an NPU


def _one_line(error):
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:160]


# ---- on the node ---------------------------------------------------------------------

def probe_node(paths, npus, marker=""):
    """What a worker on this node sees. `paths`: {"data"|"runs": absolute path}; `npus`:
    the NPUs the node declares (npu_bridge is imported only then); `marker`: the file the
    driver left in the run directory root."""
    import ray

    seen = {"host": socket.gethostname(), "python": platform.python_version(), "ray": ray.__version__,
            "tf": "", "tf_error": "", "npu_bridge": None, "paths": {}}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the worker's log, not the user's terminal
    try:
        import tensorflow

        seen["tf"] = str(tensorflow.__version__)
    except Exception as e:  # a broken install raises more than ImportError (protobuf: TypeError)
        seen["tf_error"] = "%s: %s" % (type(e).__name__, _one_line(e))
    if npus:
        try:
            importlib.import_module(BRIDGE_MODULE)
            seen["npu_bridge"] = ""
        except Exception as e:
            seen["npu_bridge"] = "%s: %s" % (type(e).__name__, _one_line(e))
    for role, path in paths.items():
        seen["paths"][role] = check_data_dir(path) if role == "data" else check_run_root(path, marker)
    return seen


def check_data_dir(path):
    """{"state": ok | missing | unreadable | unprepared, "detail": why}."""
    if not os.path.isdir(path):
        return {"state": "missing", "detail": ""}
    if not os.access(path, os.R_OK | os.X_OK):
        return {"state": "unreadable", "detail": "no read permission"}
    if not os.path.isfile(os.path.join(path, MANIFEST)):
        return {"state": "unprepared", "detail": ""}
    return {"state": "ok", "detail": ""}


def check_run_root(path, marker=""):
    """{"state": ok | missing | elsewhere | unwritable, "detail": why}. `marker`: a file the
    driver made there; without it this node has a directory of that name, but not the
    driver's (a local disk instead of the share). A file is created and deleted."""
    if not os.path.isdir(path):
        return {"state": "missing", "detail": ""}
    if marker and not os.path.exists(os.path.join(path, marker)):
        return {"state": "elsewhere", "detail": ""}
    try:
        fd, name = tempfile.mkstemp(prefix=".cluster-check-", dir=path)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        return {"state": "unwritable", "detail": e.strerror or type(e).__name__}
    return {"state": "ok", "detail": ""}


def npu_instance(token, index, wait_s):
    """The NPU this task was given, read as a fold reads it (fold_task.device_index), and
    whether the other task held one at the same time: only then do equal ids mean Ray
    hands out no distinct instances. The two tasks share the node's temp directory."""
    from scheduler.fold_task import device_index

    device = device_index("npu")
    barrier_dir = os.path.join(tempfile.gettempdir(), "lmtcnn-npu-check-%s" % token)
    os.makedirs(barrier_dir, exist_ok=True)
    open(os.path.join(barrier_dir, "%d.in" % index), "w").close()
    together = _wait_for(barrier_dir, ".in", wait_s)
    # Leave only after the other saw us too, or it would time out alone.
    open(os.path.join(barrier_dir, "%d.seen" % index), "w").close()
    if index == 0:
        _wait_for(barrier_dir, ".seen", 5.0)
        shutil.rmtree(barrier_dir, ignore_errors=True)
    return {"id": device, "together": together}


def _wait_for(directory, suffix, wait_s):
    deadline = time.time() + wait_s
    while time.time() < deadline:
        try:
            if sum(name.endswith(suffix) for name in os.listdir(directory)) >= 2:
                return True
        except OSError:  # the other task already removed the directory: it saw both of us
            return True
        time.sleep(0.05)
    return False


# ---- on the driver -------------------------------------------------------------------

def run_probes(nodes, paths, check_npu_ids, marker=""):
    """{node id: {"probe": dict | None, "error": str, "npu_ids": ...}} for every node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def pinned(function, node_id, **options):
        return ray.remote(max_calls=1)(function).options(
            num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            **options)

    refs, npu_refs = {}, {}
    for node in nodes:
        node_id, npus = node["NodeID"], int(node["Resources"].get("NPU", 0))
        # max_calls=1: the worker that imported TensorFlow exits instead of serving later tasks.
        refs[node_id] = pinned(probe_node, node_id).remote(paths, npus, marker)
        if check_npu_ids and npus >= 2:
            token = uuid.uuid4().hex[:12]  # the node's temp directory is found there, not here
            npu_refs[node_id] = [pinned(npu_instance, node_id, resources={"NPU": 1}).remote(token, i, NPU_TOGETHER_S)
                                 for i in (0, 1)]
    everything = list(refs.values()) + [r for pair in npu_refs.values() for r in pair]
    ready, late = ray.wait(everything, num_returns=len(everything), timeout=PROBE_TIMEOUT_S)
    for ref in late:  # e.g. NPU tasks queued behind a run that holds the NPUs
        ray.cancel(ref, force=True)
    ready = set(ready)
    results = {}
    for node in nodes:
        node_id = node["NodeID"]
        probe, error = _get(refs[node_id], ready)
        result = {"probe": probe, "error": error, "npu_ids": None}
        if node_id in npu_refs:
            answers = [_get(ref, ready) for ref in npu_refs[node_id]]
            if all(answer for answer, _ in answers):
                result["npu_ids"] = {"ids": [a["id"] for a, _ in answers],
                                     "together": all(a["together"] for a, _ in answers)}
            else:
                result["npu_ids"] = {"ids": [], "together": False,
                                     "error": next(e for a, e in answers if not a)}
        results[node_id] = result
    return results


def _get(ref, ready):
    import ray

    if ref not in ready:
        return None, "no answer in %d s" % PROBE_TIMEOUT_S
    try:
        return ray.get(ref), ""
    except Exception as e:  # the task failed, its worker died, or the node went away
        return None, "%s: %s" % (type(e).__name__, _one_line(e))


def node_names(nodes):
    """{node id: name}: the IP, with the node id's start where several nodes share an IP
    (several raylets on one host)."""
    counts = collections.Counter(n.get("NodeManagerAddress", "?") for n in nodes)
    return {n["NodeID"]: n.get("NodeManagerAddress", "?") if counts[n.get("NodeManagerAddress", "?")] == 1
            else "%s#%s" % (n.get("NodeManagerAddress", "?"), n["NodeID"][:6]) for n in nodes}


PATH_FIXES = {
    ("data", "missing"): "data directory {path} not visible: mount it at the same path on every host or copy it "
                         "there",
    ("data", "unreadable"): "data directory {path} not readable ({detail}): let the user running Ray read it",
    ("data", "unprepared"): "data directory {path} has no " + MANIFEST + ": copy the prepared data there, or "
                            "prepare it (`python -m lmtcnn prepare --adience-dir DIR --out {path}`)",
    ("runs", "missing"): "run directory root {path} does not exist: mount the shared filesystem at the same path "
                         "on every host (or mkdir -p it there); folds on this host would stage in $TMPDIR and "
                         "survive no host loss",
    ("runs", "elsewhere"): "run directory root {path} is another directory than the driver's (a file made there "
                           "is not seen): mount the shared filesystem at the same path on every host",
    ("runs", "unwritable"): "run directory root {path} not writable ({detail}): fix its permissions or mount it "
                            "read-write",
}


def find_problems(driver, nodes, results, names):
    """One line per problem, each with its fix. `driver`: {"python", "ray"}; `nodes`: alive
    nodes as ray.nodes() gives them; `results`: run_probes' answers; `names`: node_names."""
    problems = []
    answered = [(n, results[n["NodeID"]]["probe"]) for n in nodes if results[n["NodeID"]]["probe"]]
    usual_tf = usual_version([p["tf"] for _, p in answered if p["tf"]])
    if not usual_tf and len({p["tf"] for _, p in answered if p["tf"]}) > 1:  # no majority to hold the others to
        problems.append("TensorFlow differs between the nodes (%s): install the same TensorFlow on every host" % (
            "; ".join("%s on %s" % (p["tf"], names[n["NodeID"]]) for n, p in answered if p["tf"])))
    for node in nodes:
        name, result = names[node["NodeID"]], results[node["NodeID"]]
        probe = result["probe"]
        say = lambda text: problems.append("node %s: %s" % (name, text))  # noqa: E731
        if probe is None:
            say("a probe task found no worker there (%s): check the host with `ray status` and its "
                "/tmp/ray/session_latest/logs/raylet.out" % result["error"])
            continue
        if probe["python"] != driver["python"]:
            say("Python %s differs from the driver's %s: install the same Python on every host "
                "(cluster/README.md)" % (probe["python"], driver["python"]))
        if probe["ray"] != driver["ray"]:
            say("Ray %s differs from the driver's %s: install ray==%s on every host (requirements.txt)"
                % (probe["ray"], driver["ray"], driver["ray"]))
        if probe["tf_error"]:
            say("TensorFlow does not import (%s): install the lane's TensorFlow (requirements.txt) into the "
                "Python that runs Ray there" % probe["tf_error"])
        elif usual_tf and probe["tf"] != usual_tf:
            say("TensorFlow %s differs from %s on the other nodes: install the same TensorFlow on every host"
                % (probe["tf"], usual_tf))
        if probe["npu_bridge"]:
            say("npu_bridge does not import (%s): source CANN's set_env.sh "
                "(/usr/local/Ascend/ascend-toolkit/set_env.sh) before `ray start`, as cluster/start-*.sh do, in "
                "a TF 1.15 Python that sees CANN's TF plugin" % probe["npu_bridge"])
        for role, found in sorted(probe["paths"].items()):
            fix = PATH_FIXES.get((role, found["state"]))
            if fix:
                say(fix.format(path=driver["paths"][role], detail=found["detail"]))
        ids = result["npu_ids"]
        if ids and ids["together"] and len(set(ids["ids"])) < len(ids["ids"]):
            say("NPU ids not distinct (two tasks of one NPU each both got NPU %s): start the head with "
                "cluster/start-head.sh (it sets custom_unit_instance_resources)" % ids["ids"][0])
    return problems


def usual_version(versions):
    """The version most of `versions` are, when more than half are; else ""."""
    counts = collections.Counter(versions).most_common(2)
    if not counts or (len(counts) == 2 and counts[0][1] * 2 <= len(versions)):
        return ""
    return counts[0][0]


def unchecked_npu_ids(nodes, results, names):
    """Notes for nodes whose two NPU tasks did not hold an NPU at the same time (its NPUs
    busy with a run, or a task failed): their ids tell nothing, which is no problem found."""
    lines = []
    for node in nodes:
        ids = results[node["NodeID"]]["npu_ids"]
        if ids and (ids.get("error") or not ids["together"]):
            lines.append("node %s: NPU ids not checked: two tasks of one NPU each did not run at the same time (%s)"
                         % (names[node["NodeID"]], ids.get("error") or "its NPUs busy?"))
    return lines


def _state_cell(found):
    return {"ok": "ok", "missing": "missing", "elsewhere": "not shared", "unreadable": "no read", "unprepared": "no manif.",
            "unwritable": "read-only" if found["detail"] == "Read-only file system" else "no write"}[found["state"]]


def node_cells(node, result, driver, usual_tf, native_npu):
    """The table's cells of one node, with the columns of HEADER."""
    resources = node["Resources"]
    devices = ", ".join("%g %s" % (resources[k], k) for k in ("NPU", "GPU", "CPU") if resources.get(k)) or "none"
    probe = result["probe"]
    if probe is None:
        return [probe_host(result), "?", "?", "?", devices, "?", "?", "?", "?"]
    npus = resources.get("NPU", 0)
    bridge = "-" if probe["npu_bridge"] is None else ("ok" if probe["npu_bridge"] == "" else "no")
    ids = result["npu_ids"]
    if native_npu:
        id_cell = "native" if npus else "-"
    elif not ids:
        id_cell = "-"  # fewer than two NPUs: nothing can collide
    elif ids.get("error") or not ids["together"]:
        id_cell = "busy?"
    else:
        id_cell = ",".join(str(i) for i in ids["ids"])
    paths = probe["paths"]
    return [probe["host"], _mark(probe["python"], driver["python"]), _mark(probe["ray"], driver["ray"]),
            _mark(probe["tf"], usual_tf) if probe["tf"] else "[red]error[/]", devices,
            bridge if bridge != "no" else "[red]no[/]",
            _path_cell(paths.get("data")), _path_cell(paths.get("runs")), id_cell]


def probe_host(result):
    return (result["probe"] or {}).get("host", "?")


def _mark(value, expected):
    return value if value == expected or not expected else "[red]%s[/]" % value


def _path_cell(found):
    if found is None:
        return "-"
    cell = _state_cell(found)
    return cell if cell == "ok" else "[red]%s[/]" % cell


HEADER = ["host", "node", "Python", "Ray", "TF", "devices", "bridge", "data", "runs", "NPU ids"]


def nodes_table(rows):
    """`rows`: (name, cells) pairs. Fits 80 columns when host names are short; narrower,
    the host column goes (the node's IP names it in the problem lines too)."""
    from scheduler.widths import Fitted

    return Fitted([_table(rows, HEADER)], [_table(rows, [h for h in HEADER if h != "host"])])


def _table(rows, shown):
    from rich import box
    from rich.table import Table

    from scheduler.widths import add_column

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0))  # one space between columns
    for header in shown:
        add_column(table, header)
    for name, cells in rows:
        full = dict(zip(HEADER, [cells[0], name] + cells[1:]))
        table.add_row(*[full[h] for h in shown])
    return table


def cluster_check_command(args, console):
    """Exit status 0 when every node can run the configuration, 1 when not."""
    import ray

    from scheduler.driver import cluster_address, connect, ray_version

    config = None
    if args.config:
        from scheduler.config import load_run_config

        config = load_run_config(args.config)
    address = cluster_address(args.address or (config.scheduler.address if config else ""))
    say = lambda text: console.print(text, highlight=False, soft_wrap=True)  # noqa: E731
    paths = run_paths(config) if config else {}
    started = connect(address, config.scheduler.local_npus if config else -1,
                      config.scheduler.local_cpus if config else 0)
    try:
        from scheduler.placement import alive_nodes

        nodes = sorted(alive_nodes(), key=lambda n: (n.get("NodeManagerAddress", ""), n["NodeID"]))
        native = ray_version() >= NATIVE_NPU_RAY
        driver = {"python": platform.python_version(), "ray": ray.__version__, "paths": paths}
        say("%s: %d alive node%s; driver: Python %s, Ray %s" % (
            address or "a local Ray instance", len(nodes), "" if len(nodes) == 1 else "s", driver["python"],
            driver["ray"]))
        with RunRootMarker(paths.get("runs")) as marker:
            results = run_probes(nodes, paths, not native, marker)
    finally:
        if started:
            ray.shutdown()
    names = node_names(nodes)
    usual_tf = usual_version([r["probe"]["tf"] for r in results.values() if r["probe"] and r["probe"]["tf"]])
    rows = [(names[n["NodeID"]], node_cells(n, results[n["NodeID"]], driver, usual_tf, native)) for n in nodes]
    console.print(nodes_table(rows))
    for line in notes(address, config, paths, native, ray.__version__) + unchecked_npu_ids(nodes, results, names):
        say(line)
    problems = find_problems(driver, nodes, results, names)
    for line in problems:
        say(line)
    if not problems:
        say("no problems: every node can run %s" % (args.config or "the folds (paths not checked)"))
    return 1 if problems else 0


class RunRootMarker:
    """A file the driver leaves in the run directory root while the probes look for it: a
    node that sees it sees the driver's directory. The root is made if missing, as `run`
    would make it; a root the driver cannot write is left to the probes to report."""

    def __init__(self, root):
        self.root, self.name = root, ""

    def __enter__(self):
        if self.root:
            try:
                os.makedirs(self.root, exist_ok=True)
                fd, path = tempfile.mkstemp(prefix=".cluster-check-driver-", dir=self.root)
                os.close(fd)
                self.name = os.path.basename(path)
            except OSError:
                pass
        return self.name

    def __exit__(self, *exc):
        if self.name:
            try:
                os.unlink(os.path.join(self.root, self.name))
            except OSError:
                pass


def run_paths(config):
    """The paths every node must see, absolute as the driver hands them to the folds: the
    data directory and the directory the run directory is made in."""
    root = os.path.dirname(os.path.abspath(config.scheduler.run_dir)) if config.scheduler.run_dir \
        else config.scheduler.runs_root
    return {"data": os.path.abspath(config.data.data_dir), "runs": os.path.abspath(root)}


def notes(address, config, paths, native, version):
    """What was not checked, and why; no problem in themselves."""
    lines = []
    if not address:
        lines.append("no cluster address: checked a local Ray instance (give --address HEAD:6379, "
                     "scheduler.address or $RAY_ADDRESS for the cluster)")
    if config:
        lines.append("paths as every node must see them: data %s, run directories in %s" % (paths["data"],
                                                                                           paths["runs"]))
    else:
        lines.append("paths not checked: give the configuration, e.g. `python -m scheduler cluster-check "
                     "configs/cv5.yaml`")
    if native:
        lines.append("NPU ids: Ray %s hands out NPUs natively (no custom_unit_instance_resources needed): "
                     "not checked" % version)
    return lines
