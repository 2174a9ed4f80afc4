"""The training graph of one fold: input, network, loss, optimizer, eval tower, savers."""

import collections
import os

from lmtcnn import input_pipeline
from lmtcnn.model import WEIGHT_DECAY_COLLECTION, build_lmtcnn
from lmtcnn.tfcompat import VERSION, tf

# With cpu_ops, the batch-norm kernel: TF 2's fused (oneDNN) kernel ran BN alone about 4x
# faster than the ops of tf.nn.moments, TF 1.15's did not; bench/step_speed.py times both.
FUSED_BN_ON_CPU = not VERSION.startswith("1.")
# Whether a CPU fold trains with cpu_ops: on TF 2 the step was faster with them in every
# round of bench/step_speed.py; on TF 1.15 no faster beyond the noise, so its ops stay.
CPU_OPS_FOR_FOLDS = not VERSION.startswith("1.")

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


def build_training_graph(config, train_files, stored_size, seed=0, inputs=None, loss_scaling=False, cpu_ops=False,
                         train_images=0, accelerator=False):
    """Graph for training `config` on `train_files`, plus a BN-moving-average eval tower.

    inputs: optional callable() -> (images, ages, genders) that makes the training batch
      in the graph instead of the input pipeline over `train_files`: the benchmarks train
      the same network on placeholders or on a batch held in variables.
    loss_scaling: wrap the optimizer in dynamic loss scaling (GPU mixed precision: the
      float16 gradients of small losses would underflow without it); see
      lmtcnn.device.precision_plan.
    cpu_ops: train with other formulations of LRN and batch norm (lmtcnn.model.build_lmtcnn's
      lrn_as_matmul, fused_batch_norm; the same values to float rounding) that stepped
      faster on a CPU with TF 2 (CPU_OPS_FOR_FOLDS). Accelerators keep TF's own ops.
    train_images: the training split's image count, for train.cache auto (0: unknown, no cache).
    accelerator: the fold trains on an NPU or GPU, where train.cache auto caches (not on a CPU).
    """
    tc, mc = config.train, config.model
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(seed)
        global_step = tf.train.get_or_create_global_step()
        if inputs is None:
            images, ages, genders = input_pipeline.train_batches(
                train_files, tc.batch_size, mc.image_size, stored_size, tc.shuffle_buffer, decoding_threads(tc),
                seed, augment=tc.augment == "authors", cache=input_pipeline.choose_cache(
                    tc.cache, tc.augment == "authors", train_images, mc.image_size, stored_size, tc.cache_memory_mb,
                    accelerator=accelerator))
        else:
            images, ages, genders = inputs()
        age_logits, gender_logits, _ = build_lmtcnn(images, mc.type, is_training=True,
                                                    dropout_prob=mc.dropout_prob, bn_decay=mc.batch_norm_decay,
                                                    lrn_as_matmul=cpu_ops, fused_batch_norm=cpu_ops and FUSED_BN_ON_CPU)
        # The network's variables (weights, BN statistics), taken before the optimizer adds
        # its Momentum slots under the same "lmtcnn/" scope.
        model_variables = [v for v in tf.global_variables() if v.op.name.startswith("lmtcnn/")]
        loss = multitask_loss(age_logits, gender_logits, ages, genders, tc)
        learning_rate = tf.train.exponential_decay(tc.learning_rate, global_step, tc.steps_per_decay,
                                                   tc.decay_rate, staircase=True)
        optimizer = tf.train.MomentumOptimizer(learning_rate, tc.momentum)
        if loss_scaling:
            # The loss is scaled up before the gradients and they are scaled back down; a
            # step whose gradients overflow is skipped (global_step stays, the scale
            # halves), so a fold counts only the updates it applied. TF's own
            # enable_mixed_precision_graph_rewrite does this too but also switches the
            # rewrite on for every later session of the process; the rewrite is asked for
            # in this fold's session config instead (lmtcnn.device.session_config).
            optimizer = tf.train.experimental.MixedPrecisionLossScaleOptimizer(optimizer, "dynamic")
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
