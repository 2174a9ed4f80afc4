"""Where folds run: the device kind, the Ray resource request, and whether it can be met.

Ray waits forever on a request no node can satisfy, so the driver checks the alive
nodes' resources itself before submitting anything.
"""

import math

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


def resource_request(placement, cpus_per_fold, folds_per_gpu=1):
    """Ray resource amounts for one fold: one device (on GPUs 1/folds_per_gpu of one),
    plus CPUs for its input pipeline."""
    request = {"CPU": cpus_per_fold}
    if placement == "npu":
        request[NPU] = 1  # always a whole chip: the Ascend runtime wants one process per chip
    elif placement == "gpu":
        request["GPU"] = gpu_share(folds_per_gpu)
    return request


# Ray books resources in units of 1/10000 and truncates a finer request (both 2.7.2 and
# 2.60 book 1/7 GPU as 0.1428), so 1/N rounded down here is what Ray books: N of them fit
# on one GPU, and the plan shows the amount Ray really uses.
RAY_RESOURCE_UNIT = 10000
# Each process on a GPU has its own CUDA context, with cuDNN's and cuBLAS's kernels loaded:
# a few hundred MB outside TensorFlow's allocator, which per_process_gpu_memory_fraction
# does not count. 5% of the GPU per fold (0.8 GB of a 16 GB V100) keeps room for it; N folds
# capped at exactly 1/N each would together ask more than the card has.
CUDA_CONTEXT_HEADROOM = 0.05


def gpu_share(folds_per_gpu):
    """The GPU amount one fold asks Ray for: 1, or 1/folds_per_gpu in Ray's units."""
    if folds_per_gpu <= 1:
        return 1
    return math.floor(RAY_RESOURCE_UNIT / folds_per_gpu) / RAY_RESOURCE_UNIT


def gpu_memory_fraction(folds_per_gpu):
    """TensorFlow's per_process_gpu_memory_fraction for a fold that shares its GPU with
    folds_per_gpu - 1 others; 0 (allow_growth alone) for a GPU to itself."""
    if folds_per_gpu <= 1:
        return 0.0
    return round(1.0 / folds_per_gpu - CUDA_CONTEXT_HEADROOM, 4)


def placement_note(placement, folds_per_gpu):
    """One line when scheduler.folds_per_gpu does not apply to where the folds run, else "".
    scheduler.device npu with folds_per_gpu > 1 is refused when the configuration is read;
    `auto` that lands on NPUs or CPUs only says so: a configuration kept for whatever
    cluster it meets should run on each, one fold per chip where chips cannot be shared."""
    if folds_per_gpu <= 1 or placement == "gpu":
        return ""
    if placement == "npu":
        return ("scheduler.folds_per_gpu %d applies to GPUs only and is ignored: the folds are placed on NPUs, "
                "one fold per chip (the Ascend runtime wants one process per chip)" % folds_per_gpu)
    return "scheduler.folds_per_gpu %d applies to GPUs only and is ignored: the folds are placed on CPUs" % (
        folds_per_gpu)


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
