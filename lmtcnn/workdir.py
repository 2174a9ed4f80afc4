"""Where one fold's training writes, in its work directory (no TensorFlow needed to read it).

  checkpoints/   model.ckpt-<step>.* and TF's `checkpoint` index: the resume point
  tensorboard/   scalar summaries
  final/         the trained weights without optimizer state (model.ckpt.*)
  metrics.json   test metrics, written last: its presence means the fold is finished
"""

import os


def checkpoints(workdir):
    return os.path.join(workdir, "checkpoints")


def tensorboard(workdir):
    return os.path.join(workdir, "tensorboard")


def final_weights(workdir):
    return os.path.join(workdir, "final", "model.ckpt")


def metrics_file(workdir):
    return os.path.join(workdir, "metrics.json")
