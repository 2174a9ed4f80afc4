"""Where folds run: the device kind, the Ray resource request, and whether it can be met.

Ray waits forever on a request no node can satisfy, so the driver checks the alive
nodes' resources itself before submitting anything.
"""

from lmtcnn.errors import UserError

NPU = "NPU"  # a custom resource on Ray 2.7.2 (`--resources '{"NPU": 8}'`), native on 2.10+


def alive_nodes():
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def choose_placement(requested, nodes):
    """'auto' -> npu when any node offers NPUs, then gpu, then cpu; else `requested`."""
    if requested != "auto":
        return requested
    if any(n["Resources"].get(NPU, 0) >= 1 for n in nodes):
        return "npu"
    if any(n["Resources"].get("GPU", 0) >= 1 for n in nodes):
        return "gpu"
    return "cpu"


def resource_request(placement, cpus_per_fold):
    """Ray resource amounts for one fold: one device, plus CPUs for its input pipeline."""
    request = {"CPU": cpus_per_fold}
    if placement == "npu":
        request[NPU] = 1
    elif placement == "gpu":
        request["GPU"] = 1
    return request


def task_options(request):
    options = {"num_cpus": request.get("CPU", 0), "num_gpus": request.get("GPU", 0)}
    custom = {k: v for k, v in request.items() if k not in ("CPU", "GPU")}
    if custom:
        options["resources"] = custom
    return options


def feasible(request, nodes):
    """Whether some node of `nodes` could ever hold `request` at once."""
    return any(all(node["Resources"].get(k, 0) >= v for k, v in request.items()) for node in nodes)


def describe_offers(nodes):
    return "; ".join(
        "%s: %s" % (n.get("NodeManagerAddress", "?"),
                    ", ".join("%s %g" % (k, v) for k, v in sorted(n["Resources"].items())
                              if k in ("CPU", "GPU", NPU)) or "nothing")
        for n in nodes) or "no alive node"


def check_feasible(request, nodes, where):
    """UserError unless some alive node could ever hold `request` at once."""
    if feasible(request, nodes):
        return
    raise UserError("scheduler.device/cpus_per_fold: no node of %s can hold one fold's request %s (nodes offer %s); "
                    "start hosts with cluster/start-*.sh, or set scheduler.device / scheduler.cpus_per_fold "
                    "to what the cluster has" % (where, format_request(request), describe_offers(nodes)))


def format_request(request):
    return "{%s}" % ", ".join("%s: %g" % kv for kv in sorted(request.items()))
