"""Checkpoints written by the reference's train.py load here (lmtcnn.checkpoint_names).

The reference's names are spelt out below as facts (ivclab/agegenderLMTCNN model.py: slim
layers under `multitaskdpcnn/`, heads under `ageoutput/` and `genderoutput/`), not taken
from the code under test. A checkpoint is written in those names with the extra
variables their train.py saves (global step, learning rate, Momentum slots, loss
averages), restored, and compared with this project's own restore of the same weights.
"""

import os

import numpy as np
import pytest

from conftest import tiny_config
from lmtcnn.checkpoint_names import reference_name, restore_network
from lmtcnn.errors import UserError
from lmtcnn.evaluate import evaluate_checkpoint
from lmtcnn.model import build_lmtcnn
from lmtcnn.tfcompat import tf
from lmtcnn.train import train

BN = ("beta", "moving_mean", "moving_variance")
REFERENCE = {  # our name (without lmtcnn/) -> the reference's
    "conv1/weights": "multitaskdpcnn/conv1/weights",
    "conv1/biases": "multitaskdpcnn/conv1/biases",
    "fc1/weights": "multitaskdpcnn/full1/weights",
    "fc1/biases": "multitaskdpcnn/full1/biases",
    "fc2/weights": "multitaskdpcnn/full2/weights",
    "fc2/biases": "multitaskdpcnn/full2/biases",
    "age_logits/weights": "ageoutput/ageweights",
    "age_logits/biases": "ageoutput/agebiases",
    "gender_logits/weights": "genderoutput/genderweights",
    "gender_logits/biases": "genderoutput/genderbiases",
}
for i in (1, 2):
    REFERENCE["separable%d/depthwise/weights" % i] = "multitaskdpcnn/convdp%d/depthwise_conv/depthwise_weights" % i
    REFERENCE["separable%d/depthwise/biases" % i] = "multitaskdpcnn/convdp%d/depthwise_conv/biases" % i
    REFERENCE["separable%d/pointwise/weights" % i] = "multitaskdpcnn/convdp%d/pointwise_conv/weights" % i
    REFERENCE["separable%d/pointwise/biases" % i] = "multitaskdpcnn/convdp%d/pointwise_conv/biases" % i
    for s in BN:
        REFERENCE["separable%d/depthwise/bn/%s" % (i, s)] = "multitaskdpcnn/convdp%d/dw_batch_norm/%s" % (i, s)
        REFERENCE["separable%d/pointwise/bn/%s" % (i, s)] = "multitaskdpcnn/convdp%d/pw_batch_norm/%s" % (i, s)
PARAMETERS = {"LMTCNN-1-1": 7488426, "LMTCNN-2-1": 7614634}


def network(model_type, size):
    """(graph, images placeholder, (age, gender) logits, network variables) with BN moving averages."""
    graph = tf.Graph()
    with graph.as_default():
        images = tf.placeholder(tf.float32, [4, size, size, 3])
        age, gender, _ = build_lmtcnn(images, model_type, is_training=False)
        variables = [v for v in tf.global_variables() if v.op.name.startswith("lmtcnn/")]
    return graph, images, (age, gender), variables


def random_weights(variables, seed):
    rng = np.random.RandomState(seed)
    values = {}
    for v in variables:
        value = rng.normal(0, 0.05, v.shape.as_list()).astype(np.float32)
        if v.op.name.endswith("moving_variance"):
            value = np.abs(value) + 0.5  # a variance, and not the initial 1
        values[v.op.name] = value
    return values


def save(values, prefix, names, extras=True):
    """Write `values` ({our name: array}) under `names(our name)`, plus what the reference's
    train.py keeps beside the network when `extras`."""
    with tf.Graph().as_default():
        var_list = {names(n): tf.Variable(value) for n, value in values.items()}
        if extras:
            var_list["Variable"] = tf.Variable(1000, dtype=tf.int32)  # its global step
            var_list["OptimizeLoss/learning_rate"] = tf.Variable(0.01)
            var_list["cross_entropy_age/avg"] = tf.Variable(1.5)
            var_list["add_8/avg"] = tf.Variable(3.0)
            for n, value in values.items():
                if "moving_" not in n:
                    var_list["OptimizeLoss/%s/Momentum" % names(n)] = tf.Variable(np.zeros_like(value))
                    # Slots as a plain MomentumOptimizer names them, under the variable's own scope.
                    var_list["%s/Momentum" % names(n)] = tf.Variable(np.zeros_like(value))
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            tf.train.Saver(var_list).save(sess, prefix, write_meta_graph=False)
    return prefix


def as_reference(name):
    return REFERENCE[name[len("lmtcnn/"):]]


def outputs_after_restore(model_type, size, prefix, batch):
    graph, images, logits, variables = network(model_type, size)
    with graph.as_default(), tf.Session() as sess:
        mapping = restore_network(sess, variables, prefix)
        return sess.run(logits, {images: batch}), mapping, variables


@pytest.mark.parametrize("model_type", ["LMTCNN-1-1", "LMTCNN-2-1"])
def test_every_parameter_and_bn_statistic_loads_from_reference_names(model_type, tmp_path):
    _, _, _, variables = network(model_type, 227)
    assert {v.op.name[len("lmtcnn/"):] for v in variables} == set(REFERENCE)
    assert all(reference_name(v.op.name) == as_reference(v.op.name) for v in variables)
    values = random_weights(variables, seed=3)
    ours = save(values, str(tmp_path / "ours" / "model.ckpt"), lambda n: n, extras=False)
    theirs = save(values, str(tmp_path / "reference" / "checkpoint-1000"), as_reference)

    batch = np.random.RandomState(0).normal(0, 1, (4, 227, 227, 3)).astype(np.float32)
    (age_a, gender_a), mine, _ = outputs_after_restore(model_type, 227, ours, batch)
    (age_b, gender_b), mapping, variables = outputs_after_restore(model_type, 227, theirs, batch)
    assert mine.naming == "lmtcnn" and mapping.naming == "reference"
    assert mapping.missing == [] and mapping.mismatched == [] and mapping.unused == []
    restored = list(mapping.matched.values())
    assert sum(int(v.shape.num_elements()) for v in restored if v.trainable) == PARAMETERS[model_type]
    assert sum(1 for v in restored if "moving_" in v.op.name) == 8  # 4 BN layers x mean, variance
    np.testing.assert_array_equal(age_a, age_b)
    np.testing.assert_array_equal(gender_a, gender_b)
    assert np.abs(age_a).max() > 0


def test_a_checkpoint_of_the_other_model_is_refused_naming_what_differs(tmp_path):
    _, _, _, variables = network("LMTCNN-2-1", 227)
    prefix = save(random_weights(variables, 1), str(tmp_path / "checkpoint-5"), as_reference)
    graph, _, _, variables = network("LMTCNN-1-1", 227)
    with graph.as_default(), tf.Session() as sess:
        with pytest.raises(UserError) as e:
            restore_network(sess, variables, prefix)
    text = str(e.value)
    assert "shape differs" in text and "lmtcnn/separable1/pointwise/weights [1, 1, 96, 512]!=[1, 1, 96, 256]" in text
    assert "model.type" in text and "\n" not in text


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
    """A briefly trained fold and its final weights rewritten in the reference's names."""
    workdir = str(tmp_path_factory.mktemp("trained") / "fold_1")
    config = tiny_config(prepared, max_steps=4, checkpoint_every_steps=4)
    train(config, 1, workdir, report=lambda e: None)
    reader = tf.train.NewCheckpointReader(os.path.join(workdir, "final", "model.ckpt"))
    values = {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}
    reference = save(values, str(tmp_path_factory.mktemp("reference") / "checkpoint-4"), as_reference)
    return config, workdir, reference


def test_eval_of_a_reference_checkpoint_equals_eval_of_our_own(trained, tmp_path):
    config, workdir, reference = trained
    config.train.preprocess_threads = 0  # as configs/cv5.yaml: one per core
    ours = evaluate_checkpoint(config, 1, workdir)
    # Their run directory, copied from another machine: its `checkpoint` index names an
    # absolute path that is not here; the newest checkpoint on disk is taken.
    run_dir = tmp_path / "LMTCNN-1-1-run"
    run_dir.mkdir()
    for name in os.listdir(os.path.dirname(reference)):
        os.link(os.path.join(os.path.dirname(reference), name), str(run_dir / name))
    (run_dir / "checkpoint").write_text('model_checkpoint_path: "/home/them/LMTCNN-1-1-run/checkpoint-4"\n')
    theirs = evaluate_checkpoint(config, 1, str(run_dir))
    assert theirs["checkpoint"] == str(run_dir / "checkpoint-4")
    assert theirs["checkpoint_naming"] == "reference" and ours["checkpoint_naming"] == "lmtcnn"
    for key in ("count", "age_top1", "age_top2", "age_one_off", "gender", "age_confusion"):
        assert theirs[key] == ours[key], key


def test_warm_start_from_a_reference_checkpoint_restores_everything(trained, tmp_path):
    config, workdir, reference = trained
    events = []
    warm = tiny_config(config.data.data_dir, max_steps=1, learning_rate=1e-9, pretrained_checkpoint=reference)
    train(warm, 1, str(tmp_path / "warm"), report=events.append)
    (message,) = [e for e in events if e["event"] == "message"]
    assert message["naming"] == "reference"
    assert message["missing"] == [] and message["mismatched"] == [] and message["unused"] == []
    assert len(message["restored"]) == len(REFERENCE)
    assert "reference names" in message["text"]
