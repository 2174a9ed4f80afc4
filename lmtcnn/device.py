"""Which device a fold trains on, and the TensorFlow session configuration for it.

`npu_bridge` (CANN's TF plugin on Ascend hosts) is imported only when the device is an
NPU; every other machine runs without it. The Ascend runtime picks the chip from
ASCEND_DEVICE_ID (logical) within ASCEND_RT_VISIBLE_DEVICES, which the scheduler sets
before TensorFlow loads; standalone, the user's environment applies unchanged.
"""

import collections
import glob
import importlib.util

from lmtcnn.errors import UserError


def npu_present():
    """An Ascend device node exists and the TF adapter can be imported."""
    return bool(glob.glob("/dev/davinci[0-9]*")) and importlib.util.find_spec("npu_bridge") is not None


def gpu_present():
    from lmtcnn.tfcompat import tf

    # Lists devices without creating them, so the session's allow_growth still applies.
    return bool(tf.config.experimental.list_physical_devices("GPU"))


def resolve_device(requested):
    """'auto' -> npu, then gpu, then cpu; an explicit device must exist (else UserError)."""
    if requested == "auto":
        if npu_present():
            return "npu"
        return "gpu" if gpu_present() else "cpu"
    if requested == "npu":
        if importlib.util.find_spec("npu_bridge") is None:
            raise UserError("train.device npu: npu_bridge is not importable; source CANN's set_env.sh "
                            "(/usr/local/Ascend/ascend-toolkit/set_env.sh) in a TF 1.15 environment, "
                            "or choose device cpu/gpu")
        if not glob.glob("/dev/davinci[0-9]*"):
            raise UserError("train.device npu: no /dev/davinci<N> device on this host; choose cpu/gpu/auto")
    if requested == "gpu" and not gpu_present():
        raise UserError("train.device gpu: TensorFlow sees no CUDA GPU on this host "
                        "(check CUDA_VISIBLE_DEVICES and the CUDA build of TensorFlow); choose cpu/auto")
    return requested


def activate_device(device):
    """Load the NPU adapter before any graph is built (it registers its ops and passes)."""
    if device == "npu":
        importlib.import_module("npu_bridge.npu_init")


# The oneDNN bfloat16 rewrite made this network's CPU step slower than float32 on the
# machines measured (bench/step_speed.py, docs/BENCHMARKS.md), so the CPU trains in float32.
CPU_BFLOAT16 = False

PrecisionPlan = collections.namedtuple("PrecisionPlan", "npu_precision_mode gpu_mixed_precision loss_scaling message")


def precision_plan(device, precision="fp32", npu_precision_mode=""):
    """What `train.precision` does on `device` (config validation has refused a mixed
    precision with a non-mixed npu_precision_mode).

    NPU: precision_mode npu_precision_mode if given, else allow_mix_precision for mixed,
      else empty (the chip's default). GPU mixed: TF's automatic mixed precision rewrite
      (session config) and dynamic loss scaling (the optimizer). CPU mixed: float32, with
      a message saying so.
    """
    mixed = precision == "mixed"
    if device == "npu":
        return PrecisionPlan(npu_precision_mode or ("allow_mix_precision" if mixed else ""), False, False, None)
    if device == "gpu" and mixed:
        return PrecisionPlan("", True, True, None)
    if mixed and not CPU_BFLOAT16:
        return PrecisionPlan("", False, False, (
            "train.precision mixed: the CPU trains in float32 (bfloat16 stepped slower than float32 here, "
            "docs/BENCHMARKS.md); mixed precision applies on a GPU or an NPU"))
    return PrecisionPlan("", False, False, None)


def session_config(device, cpu_threads=0, npu_precision_mode="", gpu_memory_fraction=0.0, precision="fp32"):
    """A tf.ConfigProto for `device`.

    precision: train.precision, mapped per device by precision_plan.

    GPU: memory grows as needed; with gpu_memory_fraction > 0 it grows no further than
    that share of the GPU's memory, so folds that share one GPU cannot starve each other.

    NPU: the NpuOptimizer custom graph pass in offline mode, with TF's remapping and
    memory-optimisation rewrites off (they conflict with the adapter's graph partitioning)
    and soft placement for ops the NPU lacks. Building it needs no npu_bridge, so it is
    tested on every machine.
    """
    from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig

    from lmtcnn.tfcompat import tf

    config = tf.ConfigProto(allow_soft_placement=True)
    if cpu_threads:
        config.intra_op_parallelism_threads = cpu_threads
        config.inter_op_parallelism_threads = cpu_threads
    if device == "npu":
        npu = config.graph_options.rewrite_options.custom_optimizers.add()
        npu.name = "NpuOptimizer"
        npu.parameter_map["use_off_line"].b = True
        npu_precision_mode = precision_plan(device, precision, npu_precision_mode).npu_precision_mode
        if npu_precision_mode:
            npu.parameter_map["precision_mode"].s = tf.compat.as_bytes(npu_precision_mode)
        config.graph_options.rewrite_options.remapping = RewriterConfig.OFF
        config.graph_options.rewrite_options.memory_optimization = RewriterConfig.OFF
    elif device == "gpu":
        config.gpu_options.allow_growth = True
        if precision_plan(device, precision).gpu_mixed_precision:
            # The graph rewrite casts to float16 what is safe to (TF's allow list); the
            # optimizer's loss scaling is built with the graph (lmtcnn.graph).
            config.graph_options.rewrite_options.auto_mixed_precision = RewriterConfig.ON
        if gpu_memory_fraction:
            # A cap, not a reservation: allow_growth still takes memory only as it is used.
            config.gpu_options.per_process_gpu_memory_fraction = gpu_memory_fraction
    else:
        config.device_count["GPU"] = 0
    return config
