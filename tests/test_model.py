"""The two networks against the paper's layer table and parameter counts (docs/REFERENCE.md)."""

import subprocess
import sys

import pytest

from conftest import ROOT
from lmtcnn.model import summary

SHAPES_227 = {
    "conv1": (56, 56, 96),
    "pool1": (27, 27, 96),
    "norm1": (27, 27, 96),
    "separable2": (14, 14, 384),
    "pool2": (6, 6, 384),
    "flatten": (13824,),
    "fc1": (512,),
    "fc2": (512,),
    "age_logits": (8,),
    "gender_logits": (2,),
}


@pytest.fixture(scope="module", params=[("LMTCNN-1-1", 7488426, 256), ("LMTCNN-2-1", 7614634, 512)],
                ids=["1-1", "2-1"])
def network(request):
    model_type, total, width1 = request.param
    layers, counted = summary(model_type, 227)
    return model_type, total, width1, {layer.name: layer for layer in layers}, counted, layers


def test_trainable_parameters_match_the_paper(network):
    model_type, total, _, _, counted, layers = network
    assert counted == total
    # Every parameter is attributed to exactly one layer of the table.
    assert sum(layer.params for layer in layers) == total


def test_layer_output_shapes_at_227(network):
    _, _, width1, by_name, _, layers = network
    assert [layer.name for layer in layers] == ["conv1", "pool1", "norm1", "separable1", "separable2", "pool2",
                                                "flatten", "fc1", "fc2", "age_logits", "gender_logits"]
    for name, shape in SHAPES_227.items():
        assert by_name[name].shape[1:] == shape, name
    assert by_name["separable1"].shape[1:] == (27, 27, width1)


def test_layer_parameters_at_227(network):
    _, _, width1, by_name, _, _ = network
    assert by_name["fc1"].params == 7078400          # 13824 * 512 + 512
    assert by_name["conv1"].params == 7 * 7 * 3 * 96 + 96
    # depthwise 3x3 (+bias) and pointwise 1x1 (+bias), BN with centre and no scale.
    assert by_name["separable1"].params == (9 * 96 + 96 + 96) + (96 * width1 + width1 + width1)
    assert by_name["separable2"].params == (9 * width1 + width1 + width1) + (width1 * 384 + 384 + 384)
    assert by_name["fc2"].params == 512 * 512 + 512
    assert by_name["age_logits"].params == 512 * 8 + 8
    assert by_name["gender_logits"].params == 512 * 2 + 2
    for name in ("pool1", "norm1", "pool2", "flatten"):
        assert by_name[name].params == 0


def test_smaller_input_shrinks_only_the_flatten_and_fc1():
    layers, total = summary("LMTCNN-1-1", 64)
    by_name = {layer.name: layer for layer in layers}
    flat = by_name["flatten"].shape[1]
    assert flat < 13824
    # 64 -> conv 15 -> pool 7 -> separable 7 -> stride 2: 4 -> pool 1: 1x1x384.
    assert by_name["pool2"].shape[1:] == (1, 1, 384) and flat == 384
    assert by_name["fc1"].params == flat * 512 + 512
    assert total == 7488426 - 7078400 + flat * 512 + 512


def test_cli_summary_prints_the_count():
    done = subprocess.run([sys.executable, "-m", "lmtcnn", "summary", "--model-type", "LMTCNN-2-1"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "trainable parameters: 7614634" in lines
    assert any(line.split()[:2] == ["separable1", "27x27x512"] for line in lines)
    assert any(line.split()[:2] == ["flatten", "13824"] for line in lines)


def test_test_batch_statistics_ignore_padding():
    """eval.batch_norm batch (the reference's way): each batch is normalised with its own
    statistics, over its real images only, so padding the last batch changes nothing."""
    import numpy as np

    from lmtcnn.model import build_lmtcnn
    from lmtcnn.tfcompat import tf

    rng = np.random.RandomState(0)
    real = rng.normal(0, 1, (3, 64, 64, 3)).astype(np.float32)
    with tf.Graph().as_default():
        images = tf.placeholder(tf.float32, [None, 64, 64, 3])
        weights = tf.placeholder(tf.float32, [None])
        age, _, _ = build_lmtcnn(images, "LMTCNN-1-1", is_training=False, test_batch_weights=weights)
        moving, _, _ = build_lmtcnn(images, "LMTCNN-1-1", is_training=False)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            alone = sess.run(age, {images: real, weights: np.ones(3)})
            padded = sess.run(age, {images: np.concatenate([real, np.zeros((5, 64, 64, 3), np.float32)]),
                                    weights: np.array([1, 1, 1, 0, 0, 0, 0, 0], np.float32)})
            other_batch = sess.run(age, {images: real[:2], weights: np.ones(2)})
            with_moving = sess.run(moving, {images: real})
    np.testing.assert_allclose(padded[:3], alone, rtol=1e-4, atol=1e-5)
    assert not np.allclose(other_batch, alone[:2], atol=1e-5)  # the statistics are the batch's own
    assert not np.allclose(with_moving, alone, atol=1e-5)
