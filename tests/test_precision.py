"""train.precision: the config rules, what it sets per device, and real CPU training with it."""

import numpy as np
import pytest

from conftest import tiny_config
from lmtcnn.config import Config, build_config
from lmtcnn.device import precision_plan, session_config
from lmtcnn.errors import UserError
from lmtcnn.tfcompat import tf
from lmtcnn.train import train
from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig


def train_config(**train):
    return build_config({"train": train}, Config)


def npu_mode(config):
    (npu,) = [o for o in config.graph_options.rewrite_options.custom_optimizers if o.name == "NpuOptimizer"]
    return npu.parameter_map["precision_mode"].s if "precision_mode" in npu.parameter_map else None


def test_precision_defaults_to_fp32_and_takes_mixed():
    assert train_config().train.precision == "fp32"
    assert train_config(precision="mixed").train.precision == "mixed"
    for mode in ("allow_mix_precision", "allow_mix_precision_fp16", "allow_mix_precision_bf16"):
        assert train_config(precision="mixed", npu_precision_mode=mode).train.npu_precision_mode == mode
    # fp32 leaves npu_precision_mode as it was: configs that set it keep working.
    assert train_config(npu_precision_mode="allow_mix_precision").train.precision == "fp32"


def test_unknown_precision_is_one_line_naming_the_key():
    with pytest.raises(UserError) as e:
        train_config(precision="fp16")
    message = str(e.value)
    assert "train.precision" in message and "fp32, mixed" in message and "\n" not in message


def test_mixed_with_a_non_mixed_npu_mode_is_refused_with_the_fix():
    with pytest.raises(UserError) as e:
        train_config(precision="mixed", npu_precision_mode="force_fp32")
    message = str(e.value)
    assert "\n" not in message
    assert "train.precision" in message and "npu_precision_mode force_fp32" in message
    assert "leave npu_precision_mode empty" in message and "precision fp32" in message


def test_npu_mixed_runs_as_allow_mix_precision_unless_a_mixed_mode_is_named():
    assert npu_mode(session_config("npu", 0, "", precision="mixed")) == b"allow_mix_precision"
    assert npu_mode(session_config("npu", 0, "allow_mix_precision_bf16", precision="mixed")) == \
        b"allow_mix_precision_bf16"
    # fp32 keeps the chip's default, or the mode given.
    assert npu_mode(session_config("npu", 0, "", precision="fp32")) is None
    assert npu_mode(session_config("npu", 0, "force_fp32")) == b"force_fp32"
    config = session_config("npu", 0, "", precision="mixed")
    assert config.graph_options.rewrite_options.auto_mixed_precision != RewriterConfig.ON
    assert not precision_plan("npu", "mixed").loss_scaling


def test_gpu_mixed_turns_on_the_rewrite_and_loss_scaling():
    config = session_config("gpu", 2, precision="mixed")
    assert config.graph_options.rewrite_options.auto_mixed_precision == RewriterConfig.ON
    assert config.gpu_options.allow_growth
    assert precision_plan("gpu", "mixed").loss_scaling
    fp32 = session_config("gpu", 2)
    assert fp32.graph_options.rewrite_options.auto_mixed_precision != RewriterConfig.ON
    assert not precision_plan("gpu", "fp32").loss_scaling and precision_plan("gpu", "fp32").message is None


def test_cpu_mixed_trains_in_float32_and_says_so():
    plan = precision_plan("cpu", "mixed")
    assert not plan.loss_scaling and not plan.gpu_mixed_precision and plan.npu_precision_mode == ""
    assert "float32" in plan.message and "\n" not in plan.message
    assert session_config("cpu", 1, precision="mixed") == session_config("cpu", 1)
    assert precision_plan("cpu", "fp32").message is None


def test_a_cpu_fold_with_precision_mixed_finishes(prepared, tmp_path):
    events = []
    config = tiny_config(prepared, max_steps=4, checkpoint_every_steps=4, precision="mixed")
    metrics = train(config, 1, str(tmp_path / "fold_1"), report=events.append)
    assert metrics["step"] == 4
    messages = [e["text"] for e in events if e["event"] == "message"]
    assert len(messages) == 1 and "train.precision mixed" in messages[0] and "float32" in messages[0]
    assert all(np.isfinite(e["loss"]) for e in events if e["event"] == "step_done")


def test_dynamic_loss_scaling_trains_on_the_cpu(prepared):
    """The GPU's optimizer wrapper, run on the CPU in float32: the graph builds with the
    clipping and BN updates, steps advance, the loss stays finite and the weights move."""
    from lmtcnn.graph import build_training_graph
    from lmtcnn.prepare import split_files

    config = tiny_config(prepared)
    files, _ = split_files(prepared, 1, "train")
    graph = build_training_graph(config, files, 256, loss_scaling=True)
    with graph.tf_graph.as_default(), tf.Session(config=session_config("cpu", 1)) as sess:
        sess.run(tf.global_variables_initializer())
        weights = graph.model_variables[0]
        before = sess.run(weights)
        for expected in (1, 2, 3):
            step, loss = sess.run([graph.step_after, graph.loss])
            assert step == expected and np.isfinite(loss)
        assert not np.allclose(before, sess.run(weights))
