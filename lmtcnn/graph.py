"""The training graph of one fold: input, network, loss, optimizer, eval tower, savers."""

import collections
import os

from lmtcnn import input_pipeline
from lmtcnn.model import WEIGHT_DECAY_COLLECTION, build_lmtcnn
from lmtcnn.tfcompat import tf

TrainingGraph = collections.namedtuple("TrainingGraph", [
    "tf_graph", "global_step", "train_op", "step_after", "loss", "learning_rate",
    "saver", "weights_saver", "model_variables",
    "eval_iterator", "eval_files", "eval_padding", "eval_outputs",
])


def decoding_threads(train_config):
    """train.preprocess_threads, where 0 means one per core of this host (the scheduler
    sets it to the fold's CPUs before the graph is built)."""
    return train_config.preprocess_threads or os.cpu_count() or 1


def multitask_loss(age_logits, gender_logits, ages, genders, train_config):
    """Mean CE(age) + mean CE(gender), 1:1, plus regularization_scale * weight decay."""
    age_ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=ages, logits=age_logits))
    gender_ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=genders, logits=gender_logits))
    decay = tf.add_n([train_config.weight_decay * tf.nn.l2_loss(w)
                      for w in tf.get_collection(WEIGHT_DECAY_COLLECTION)])
    return age_ce + gender_ce + train_config.regularization_scale * decay


def build_training_graph(config, train_files, stored_size, seed=0):
    """Graph for training `config` on `train_files`, plus a BN-moving-average eval tower."""
    tc, mc = config.train, config.model
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(seed)
        global_step = tf.train.get_or_create_global_step()
        images, ages, genders = input_pipeline.train_batches(
            train_files, tc.batch_size, mc.image_size, stored_size, tc.shuffle_buffer, decoding_threads(tc), seed,
            augment=tc.augment == "authors")
        age_logits, gender_logits, _ = build_lmtcnn(images, mc.type, is_training=True,
                                                    dropout_prob=mc.dropout_prob, bn_decay=mc.batch_norm_decay)
        # The network's variables (weights, BN statistics), taken before the optimizer adds
        # its Momentum slots under the same "lmtcnn/" scope.
        model_variables = [v for v in tf.global_variables() if v.op.name.startswith("lmtcnn/")]
        loss = multitask_loss(age_logits, gender_logits, ages, genders, tc)
        learning_rate = tf.train.exponential_decay(tc.learning_rate, global_step, tc.steps_per_decay,
                                                   tc.decay_rate, staircase=True)
        optimizer = tf.train.MomentumOptimizer(learning_rate, tc.momentum)
        grads, variables = zip(*optimizer.compute_gradients(loss))
        if tc.clip_norm > 0:
            grads, _ = tf.clip_by_global_norm(grads, tc.clip_norm)
        # BN moving averages move with every step, as in the reference.
        with tf.control_dependencies(tf.get_collection(tf.GraphKeys.UPDATE_OPS)):
            train_op = optimizer.apply_gradients(zip(grads, variables), global_step=global_step)
        # The step number after this step's update: a plain fetch of global_step may be
        # read before the increment (resource variables on TF 2).
        with tf.control_dependencies([train_op]):
            step_after = tf.identity(global_step.read_value())

        iterator, eval_files, eval_padding, eval_outputs = build_eval_tower(config, stored_size)

        # Relative paths in checkpoints/checkpoint: a moved or collected fold directory
        # resumes from its own files, not from wherever it was first written.
        saver = tf.train.Saver(max_to_keep=tc.keep_checkpoints, save_relative_paths=True)
        # Final weights: the network (with BN statistics) and nothing of the optimizer.
        weights_saver = tf.train.Saver(model_variables)
    return TrainingGraph(graph, global_step, train_op, step_after, loss, learning_rate, saver, weights_saver,
                         model_variables, iterator, eval_files, eval_padding, eval_outputs)


def build_eval_tower(config, stored_size):
    """The network on a fed split, in the current graph: BN with its moving averages, or
    with each test batch's own statistics (eval.batch_norm: batch, the reference's way).

    Returns (iterator, files placeholder, padding placeholder,
    (age_logits, gender_logits, ages, genders, valid)); see input_pipeline.eval_batches.
    """
    ec, mc = config.eval, config.model
    iterator, files, padding, (images, ages, genders, valid) = input_pipeline.eval_batches(
        ec.batch_size, mc.image_size, stored_size, decoding_threads(config.train))
    age_logits, gender_logits, _ = build_lmtcnn(images, mc.type, is_training=False, test_batch_weights=(
        valid if ec.batch_norm == "batch" else None))
    return iterator, files, padding, (age_logits, gender_logits, ages, genders, valid)
