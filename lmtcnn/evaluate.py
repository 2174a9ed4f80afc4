"""Evaluation of a fold: on a live session during training, or from a saved checkpoint."""

import collections
import os

import numpy as np

from lmtcnn import workdir as layout
from lmtcnn.checkpoint_names import restore_network
from lmtcnn.device import activate_device, resolve_device, session_config
from lmtcnn.errors import UserError
from lmtcnn.graph import build_eval_tower
from lmtcnn.metrics import compute_metrics
from lmtcnn.prepare import load_manifest, split_files
from lmtcnn.tfcompat import tf

EvalGraph = collections.namedtuple("EvalGraph", "tf_graph eval_iterator eval_files eval_padding eval_outputs "
                                               "model_variables")


def evaluate_split(sess, graph, config, fold, role):
    """Metrics of the current weights (BN moving averages) on `role` of test fold `fold`."""
    files, count = split_files(config.data.data_dir, fold, role)
    if count == 0:
        raise UserError("%s: fold %d has no %s images" % (config.data.data_dir, fold, role))
    padding = (-count) % config.eval.batch_size
    sess.run(graph.eval_iterator.initializer, {graph.eval_files: files, graph.eval_padding: padding})
    outputs = []
    while True:
        try:
            outputs.append(sess.run(graph.eval_outputs))
        except tf.errors.OutOfRangeError:
            break
    age_logits, gender_logits, ages, genders, valid = (np.concatenate(parts) for parts in zip(*outputs))
    keep = valid > 0.5
    if keep.sum() != count:
        raise RuntimeError("evaluation read %d images of %s, the manifest lists %d" % (keep.sum(), role, count))
    return compute_metrics(age_logits[keep], gender_logits[keep], ages[keep], genders[keep])


def batch_norm_label(eval_config):
    """How test-time batch norm normalised, in the words metrics.json and the tables use."""
    if eval_config.batch_norm == "batch":
        return "test-batch statistics (batches of %d, as the reference)" % eval_config.batch_size
    return "moving averages"


def build_eval_graph(config, stored_size):
    """An evaluation-only graph and the network variables a checkpoint must fill."""
    graph = tf.Graph()
    with graph.as_default():
        iterator, files, padding, outputs = build_eval_tower(config, stored_size)
        variables = [v for v in tf.global_variables() if v.op.name.startswith("lmtcnn/")]
    return EvalGraph(graph, iterator, files, padding, outputs, variables)


def find_checkpoint(path, what="--checkpoint"):
    """A checkpoint prefix from a prefix, a fold work directory or a checkpoints/ folder
    (also the reference's run directory, whose `checkpoint` index names checkpoint-<step>)."""
    if os.path.isdir(path):
        if os.path.exists(layout.final_weights(path) + ".index"):
            return layout.final_weights(path)
        for folder in (path, layout.checkpoints(path)):
            latest = _latest_in_index(folder) or _newest_on_disk(folder)
            if latest:
                return latest
    elif os.path.exists(path + ".index"):
        return path
    raise UserError("%s %s: no checkpoint here; pass a checkpoint prefix (model.ckpt-1000) or a fold "
                    "directory holding final/ or checkpoints/" % (what, path))


def _latest_in_index(folder):
    """What TF's `checkpoint` index in `folder` names, if it exists here. (TF 1.15 raises
    for an index naming a directory that does not exist on this machine.)"""
    try:
        return tf.train.latest_checkpoint(folder)
    except tf.errors.OpError:
        return None


def _newest_on_disk(folder):
    """The newest `<prefix>.index` in `folder` by its step: a copied run directory whose
    `checkpoint` index names absolute paths of another machine (TF 1's Saver writes them)."""
    import glob
    import re

    found = []
    for index in glob.glob(os.path.join(glob.escape(folder), "*.index")):
        step = re.search(r"-(\d+)\.index$", index)
        found.append((int(step.group(1)) if step else -1, os.path.getmtime(index), index[:-len(".index")]))
    return max(found)[2] if found else None


def evaluate_checkpoint(config, fold, checkpoint, role="test"):
    """Metrics of `checkpoint` on `role` of test fold `fold`, on the configured device."""
    device = resolve_device(config.train.device)
    activate_device(device)
    prefix = find_checkpoint(checkpoint)
    graph = build_eval_graph(config, load_manifest(config.data.data_dir)["image_size"])
    with graph.tf_graph.as_default(), tf.Session(config=session_config(
            device, config.train.cpu_threads, config.train.npu_precision_mode)) as sess:
        mapping = restore_network(sess, graph.model_variables, prefix)
        metrics = evaluate_split(sess, graph, config, fold, role)
    metrics.update(checkpoint=prefix, checkpoint_naming=mapping.naming, split=role, fold=fold, device=device,
                   batch_norm=batch_norm_label(config.eval))
    return metrics
