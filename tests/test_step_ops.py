"""The CPU training step's formulations of LRN and batch norm (lmtcnn.model's
lrn_as_matmul and fused_batch_norm) compute what TF's own ops compute, values and
gradients, to float rounding: they may change a step's speed, never the model."""

import numpy as np

from lmtcnn import model
from lmtcnn.tfcompat import tf


def values_and_gradients(build, shape, scale, seed=0):
    rng = np.random.RandomState(seed)
    with tf.Graph().as_default():
        x = tf.constant((rng.randn(*shape) * scale).astype(np.float32))
        weights = tf.constant(rng.randn(*shape).astype(np.float32))
        outputs = build(x)
        grad = tf.gradients(tf.reduce_sum(outputs[0] * weights), x)[0]
        with tf.Session() as sess:
            return sess.run(list(outputs) + [grad])


def close(a, b, rtol):
    assert np.abs(a - b).max() <= rtol * np.abs(b).max(), np.abs(a - b).max() / np.abs(b).max()


def test_lrn_as_matmul_equals_tf_lrn():
    params = dict(depth_radius=model.LRN_RADIUS, bias=model.LRN_BIAS, alpha=model.LRN_ALPHA, beta=model.LRN_BETA)
    # Pixel-like magnitudes (after conv1 and pooling), where alpha * sum is not negligible.
    ours = values_and_gradients(lambda x: (model._lrn_as_matmul(x, **params),), [4, 9, 9, 96], 40.0)
    tfs = values_and_gradients(lambda x: (tf.nn.local_response_normalization(x, **params),), [4, 9, 9, 96], 40.0)
    for a, b in zip(ours, tfs):
        close(a, b, 1e-5)


def test_fused_batch_norm_equals_moments_with_the_same_moving_averages():
    def run(fused):
        rng = np.random.RandomState(1)
        with tf.Graph().as_default():
            x = tf.constant((rng.randn(8, 5, 5, 16) * 3 + 1).astype(np.float32))
            weights = tf.constant(rng.randn(8, 5, 5, 16).astype(np.float32))
            y = model._batch_norm(x, True, 0.5, None, fused)
            grad = tf.gradients(tf.reduce_sum(y * weights), x)[0]
            moving = [v for v in tf.global_variables() if "moving" in v.op.name]
            with tf.Session() as sess:
                sess.run(tf.global_variables_initializer())
                values = sess.run([y, grad] + tf.get_collection(tf.GraphKeys.UPDATE_OPS))
                return values + sess.run(moving)

    # Output, gradient, the two update results and the moving mean and variance after them.
    for a, b in zip(run(True), run(False)):
        close(a, b, 1e-5)
