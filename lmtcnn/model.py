"""LMTCNN-1-1 and LMTCNN-2-1 from `tf.nn` ops (the table: docs/REFERENCE.md).

"-a-b" are the width multipliers of the two depthwise-separable blocks (256*a, 384*b).
`build_lmtcnn` returns the age and gender logits and records every layer's output shape
and parameter count, which `summary` prints.
"""

import collections

from lmtcnn.tfcompat import tf

NUM_AGES = 8
NUM_GENDERS = 2
WIDTHS = {"LMTCNN-1-1": (256, 384), "LMTCNN-2-1": (512, 384)}
BN_DECAY = 0.999  # the reference; short runs need less (model.batch_norm_decay)
BN_EPSILON = 1e-3
LRN_RADIUS, LRN_BIAS, LRN_ALPHA, LRN_BETA = 5, 1.0, 1e-4, 0.75
WEIGHT_DECAY_COLLECTION = "lmtcnn_decayed_weights"  # conv and FC kernels, not heads or biases

Layer = collections.namedtuple("Layer", "name shape params")


class _Recorder:
    def __init__(self):
        self.layers = []
        self._seen = set()

    def add(self, name, tensor):
        # Parameters created under this layer's scope and not counted yet.
        params = 0
        for v in tf.trainable_variables():
            if v.op.name.startswith(tf.get_variable_scope().name + "/" + name + "/") or \
                    v.op.name.startswith(name + "/"):
                if v.op.name not in self._seen:
                    self._seen.add(v.op.name)
                    params += int(v.shape.num_elements())
        self.layers.append(Layer(name, tuple(tensor.shape.as_list()), params))
        return tensor


def build_lmtcnn(images, model_type, is_training, dropout_prob=0.0, bn_decay=BN_DECAY, test_batch_weights=None,
                 lrn_as_matmul=False, fused_batch_norm=False):
    """The network on a batch of standardised NHWC float images.

    Args:
      images: float32 [batch, side, side, 3].
      model_type: "LMTCNN-1-1" or "LMTCNN-2-1".
      is_training: Python bool: batch statistics and moving-average updates (True), or
        the moving averages (False: what evaluation must use).
      dropout_prob: probability of dropping an FC activation while training.
      bn_decay: moving-average decay of the BN statistics.
      test_batch_weights: with is_training False, float [batch]: normalise with the
        statistics of this batch instead of the moving averages, counting each image by
        its weight (0 for padding). The reference evaluates this way (it never passes
        is_training); kept to reproduce its published numbers.
      lrn_as_matmul: compute the LRN as a matrix product with a band of ones (the same
        sums, so the same values to float rounding); its gradient is then two matrix
        products, which ran faster on the CPU than TF's own LRNGrad (bench/step_speed.py).
        Off for the graphs that are exported: an NPU or TFLite has its own LRN kernel.
      fused_batch_norm: training BN through TF's fused kernel (the same batch statistics
        and normalisation, to float rounding); faster where TF's build makes it so.
    Returns: (age_logits [batch, 8], gender_logits [batch, 2], layers: list of Layer).
    """
    width1, width2 = WIDTHS[model_type]
    rec = _Recorder()
    with tf.variable_scope("lmtcnn", reuse=tf.AUTO_REUSE):
        x = rec.add("conv1", _conv(images, "conv1", 7, 96, stride=4, padding="VALID"))
        x = rec.add("pool1", tf.nn.max_pool(x, [1, 3, 3, 1], [1, 2, 2, 1], "VALID"))
        lrn = _lrn_as_matmul if lrn_as_matmul else tf.nn.local_response_normalization
        x = rec.add("norm1", lrn(x, depth_radius=LRN_RADIUS, bias=LRN_BIAS, alpha=LRN_ALPHA, beta=LRN_BETA))
        bn = (is_training, bn_decay, test_batch_weights, fused_batch_norm)
        x = rec.add("separable1", _separable(x, "separable1", width1, 1, bn))
        x = rec.add("separable2", _separable(x, "separable2", width2, 2, bn))
        x = rec.add("pool2", tf.nn.max_pool(x, [1, 3, 3, 1], [1, 2, 2, 1], "VALID"))
        flat = int(x.shape[1]) * int(x.shape[2]) * int(x.shape[3])
        x = rec.add("flatten", tf.reshape(x, [-1, flat]))
        x = rec.add("fc1", _dropout(_fc(x, "fc1", 512, 0.005, 1.0), dropout_prob, is_training))
        x = rec.add("fc2", _dropout(_fc(x, "fc2", 512, 0.005, 1.0), dropout_prob, is_training))
        age = rec.add("age_logits", _fc(x, "age_logits", NUM_AGES, 0.01, 0.0, relu=False))
        gender = rec.add("gender_logits", _fc(x, "gender_logits", NUM_GENDERS, 0.01, 0.0, relu=False))
    return age, gender, rec.layers


def _conv(x, name, size, filters, stride, padding):
    with tf.variable_scope(name):
        kernel = tf.get_variable("weights", [size, size, int(x.shape[-1]), filters],
                                 initializer=tf.glorot_uniform_initializer())
        bias = tf.get_variable("biases", [filters], initializer=tf.zeros_initializer())
        _decay(kernel)
        return tf.nn.relu(tf.nn.conv2d(x, kernel, [1, stride, stride, 1], padding) + bias)


def _separable(x, name, filters, stride, bn):
    """Depthwise 3x3 (+bias, ReLU) -> BN -> pointwise 1x1 (+bias, ReLU) -> BN."""
    channels = int(x.shape[-1])
    with tf.variable_scope(name):
        with tf.variable_scope("depthwise"):
            kernel = tf.get_variable("weights", [3, 3, channels, 1], initializer=tf.glorot_uniform_initializer())
            bias = tf.get_variable("biases", [channels], initializer=tf.zeros_initializer())
            _decay(kernel)
            x = tf.nn.relu(tf.nn.depthwise_conv2d(x, kernel, [1, stride, stride, 1], "SAME") + bias)
            x = _batch_norm(x, *bn)
        with tf.variable_scope("pointwise"):
            kernel = tf.get_variable("weights", [1, 1, channels, filters], initializer=tf.glorot_uniform_initializer())
            bias = tf.get_variable("biases", [filters], initializer=tf.zeros_initializer())
            _decay(kernel)
            x = tf.nn.relu(tf.nn.conv2d(x, kernel, [1, 1, 1, 1], "VALID") + bias)
            return _batch_norm(x, *bn)


def _lrn_as_matmul(x, depth_radius, bias, alpha, beta):
    """tf.nn.local_response_normalization, written as ops with cheaper gradients: each
    channel's sum of squares over its window of 2r+1 channels is the product of the
    squares with a [depth, depth] band of ones."""
    depth = int(x.shape[-1])
    rows = tf.range(depth)[:, None]
    band = tf.cast(tf.abs(rows - tf.transpose(rows)) <= depth_radius, x.dtype)
    sums = tf.reshape(tf.matmul(tf.reshape(tf.square(x), [-1, depth]), band), tf.shape(x))
    return x * tf.pow(bias + alpha * sums, -beta)


def _batch_norm(x, is_training, decay, test_batch_weights=None, fused=False):
    """BN with centre (beta) and no scale, as the reference; moving averages in UPDATE_OPS."""
    channels = int(x.shape[-1])
    with tf.variable_scope("bn"):
        beta = tf.get_variable("beta", [channels], initializer=tf.zeros_initializer())
        moving_mean = tf.get_variable("moving_mean", [channels], initializer=tf.zeros_initializer(),
                                      trainable=False)
        moving_var = tf.get_variable("moving_variance", [channels], initializer=tf.ones_initializer(),
                                     trainable=False)
        if is_training and fused:
            y, mean, var = tf.nn.fused_batch_norm(x, tf.ones([channels], x.dtype), beta, epsilon=BN_EPSILON,
                                                  is_training=True)
            # The fused kernel returns the variance with Bessel's correction (n / (n - 1));
            # the moving average keeps the plain batch variance, as tf.nn.moments gives it.
            count = float(x.shape[:3].num_elements())
            _update_moving(moving_mean, moving_var, mean, var * ((count - 1) / count), decay)
            return y
        if is_training:
            mean, var = tf.nn.moments(x, [0, 1, 2])
            _update_moving(moving_mean, moving_var, mean, var, decay)
        elif test_batch_weights is not None:
            weights = tf.reshape(test_batch_weights, [-1, 1, 1, 1])
            mean, var = tf.nn.weighted_moments(x, [0, 1, 2], weights)
        else:
            mean, var = moving_mean, moving_var
        return tf.nn.batch_normalization(x, mean, var, beta, None, BN_EPSILON)


def _update_moving(moving_mean, moving_var, mean, var, decay):
    tf.add_to_collection(tf.GraphKeys.UPDATE_OPS, tf.assign(moving_mean, decay * moving_mean + (1 - decay) * mean))
    tf.add_to_collection(tf.GraphKeys.UPDATE_OPS, tf.assign(moving_var, decay * moving_var + (1 - decay) * var))


def _fc(x, name, units, stddev, bias_init, relu=True):
    with tf.variable_scope(name):
        weights = tf.get_variable("weights", [int(x.shape[-1]), units],
                                  initializer=tf.truncated_normal_initializer(stddev=stddev))
        bias = tf.get_variable("biases", [units], initializer=tf.constant_initializer(bias_init))
        if relu:  # the two heads carry no weight decay, as in the reference
            _decay(weights)
        y = tf.matmul(x, weights) + bias
        return tf.nn.relu(y) if relu else y


def _dropout(x, prob, is_training):
    # Static choice: with prob 0 (the seed's default) no dropout op enters the graph.
    if not is_training or prob <= 0:
        return x
    return tf.nn.dropout(x, rate=prob)


def _decay(weights):
    if weights not in tf.get_collection(WEIGHT_DECAY_COLLECTION):
        tf.add_to_collection(WEIGHT_DECAY_COLLECTION, weights)


def summary(model_type, image_size=227):
    """(layers, trainable parameter count) of the network for one input of `image_size`."""
    with tf.Graph().as_default():
        images = tf.placeholder(tf.float32, [1, image_size, image_size, 3], name="images")
        _, _, layers = build_lmtcnn(images, model_type, is_training=False)
        total = sum(int(v.shape.num_elements()) for v in tf.trainable_variables())
    return layers, total


def format_summary(model_type, image_size=227):
    layers, total = summary(model_type, image_size)
    lines = ["%s, input %dx%dx3" % (model_type, image_size, image_size),
             "%-16s %-22s %12s" % ("layer", "output", "parameters")]
    for layer in layers:
        shape = "x".join(str(d) for d in layer.shape[1:])
        lines.append("%-16s %-22s %12s" % (layer.name, shape, "{:,}".format(layer.params) if layer.params else "-"))
    lines.append("trainable parameters: %d" % total)
    return "\n".join(lines)
