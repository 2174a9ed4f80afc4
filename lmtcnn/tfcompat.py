"""TensorFlow's v1 graph API on both lanes: TF 1.15 (Ascend hosts) and TF 2.x.

Every module that builds graphs imports `tf` from here, and only `tf.nn` ops,
`get_variable` and `tf.data` are used, because `tf.compat.v1.layers`, `tf.contrib` and
`tf.estimator` are gone on TF 2.16+ and the Ascend adapter supports the plain ops.
"""

import logging
import os

# TF's C++ start-up chatter would bury the progress lines; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow.compat.v1 as tf  # noqa: E402

tf.logging.set_verbosity(tf.logging.ERROR)
# TF 2's TFLite converter logs through absl at INFO, which the commands' root logger would print.
logging.getLogger("absl").setLevel(logging.WARNING)

VERSION = tf.VERSION if hasattr(tf, "VERSION") else tf.version.VERSION
