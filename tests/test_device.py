"""Device choice and session configuration (the NPU config is built without npu_bridge)."""

import importlib.util

import pytest

from lmtcnn.device import gpu_present, npu_present, resolve_device, session_config
from lmtcnn.errors import UserError
from lmtcnn.tfcompat import tf
from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig

NO_NPU_BRIDGE = importlib.util.find_spec("npu_bridge") is None


def npu_optimizers(config):
    return [o for o in config.graph_options.rewrite_options.custom_optimizers if o.name == "NpuOptimizer"]


def test_npu_config_follows_the_ascend_recipe():
    config = session_config("npu", 0, "allow_fp32_to_fp16")
    assert isinstance(config, tf.ConfigProto)
    (npu,) = npu_optimizers(config)
    assert npu.parameter_map["use_off_line"].b is True
    assert npu.parameter_map["precision_mode"].s == b"allow_fp32_to_fp16"
    rewrite = config.graph_options.rewrite_options
    assert rewrite.remapping == RewriterConfig.OFF
    assert rewrite.memory_optimization == RewriterConfig.OFF
    assert config.allow_soft_placement
    # The NPU must not get the CPU-only "hide GPUs" setting.
    assert "GPU" not in config.device_count
    # The proto survives serialisation (it is what TensorFlow receives).
    assert tf.ConfigProto.FromString(config.SerializeToString()) == config


def test_npu_precision_mode_only_when_given():
    config = session_config("npu")
    (npu,) = npu_optimizers(config)
    assert "precision_mode" not in npu.parameter_map
    assert set(npu.parameter_map) == {"use_off_line"}


def test_cpu_config_hides_gpus_and_sets_threads():
    config = session_config("cpu", 3)
    assert config.device_count["GPU"] == 0
    assert config.intra_op_parallelism_threads == 3 and config.inter_op_parallelism_threads == 3
    assert config.allow_soft_placement
    assert not npu_optimizers(config)
    assert config.graph_options.rewrite_options.remapping != RewriterConfig.OFF
    # 0 threads leaves TensorFlow's own choice.
    default = session_config("cpu", 0)
    assert default.intra_op_parallelism_threads == 0 and default.inter_op_parallelism_threads == 0


def test_cpu_config_runs_a_session():
    with tf.Graph().as_default():
        total = tf.reduce_sum(tf.constant([1.0, 2.0, 3.0]))
        with tf.Session(config=session_config("cpu", 1)) as sess:
            assert sess.run(total) == 6.0
            assert not [d for d in sess.list_devices() if d.device_type == "GPU"]


def test_gpu_config_grows_memory():
    config = session_config("gpu", 2)
    assert config.gpu_options.allow_growth
    assert "GPU" not in config.device_count and not npu_optimizers(config)


@pytest.mark.skipif(not NO_NPU_BRIDGE, reason="npu_bridge is importable on this host")
def test_npu_without_bridge_is_a_user_error():
    with pytest.raises(UserError) as e:
        resolve_device("npu")
    assert "npu_bridge" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.skipif(not NO_NPU_BRIDGE, reason="npu_bridge is importable on this host")
def test_auto_is_cpu_without_npu_or_gpu():
    assert not npu_present()
    if gpu_present():
        pytest.skip("a GPU is visible here")
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(UserError, match="gpu"):
        resolve_device("gpu")
