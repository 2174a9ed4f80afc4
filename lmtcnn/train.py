"""Train and evaluate one fold on one device: `train(config, fold, workdir, report)`.

The same function runs from `python -m lmtcnn train`, from a test and inside a Ray
task; it holds no global state and reports progress only through `report`.
What it writes into the work directory: see lmtcnn.workdir.
"""

import glob
import os
import time

import numpy as np

from lmtcnn import events, workdir as layout
from lmtcnn.device import activate_device, precision_plan, resolve_device, session_config
from lmtcnn.errors import TrainingDiverged, UserError
from lmtcnn.checkpoint_names import map_variables, read_shapes
from lmtcnn.evaluate import batch_norm_label, evaluate_split, find_checkpoint
from lmtcnn.files import write_json_atomic
from lmtcnn.graph import CPU_OPS_FOR_FOLDS, build_training_graph
from lmtcnn.input_pipeline import find_corrupt_record
from lmtcnn.prepare import check_fold_data, fold_test_fingerprint, load_manifest, split_files
from lmtcnn.tfcompat import VERSION, tf


def total_steps(train_config, train_images):
    """Steps of the run, with the seed's meaning: epochs > 0 replaces max_steps by
    epochs * (train_images // batch_size); otherwise max_steps."""
    if train_config.epochs > 0:
        return max(train_config.epochs * (train_images // train_config.batch_size), 1)
    return train_config.max_steps


def train(config, fold, workdir, report=events.log_report, stop_requested=None):
    """Train fold `fold` (test fold k of the prepared data) and evaluate it on its test split.

    Args:
      config: lmtcnn.config.Config.
      fold: 0..4.
      workdir: the fold's directory; restarting into it resumes from its last checkpoint.
      report: callable(event dict) receiving lmtcnn.events records.
      stop_requested: optional callable -> bool, polled every step; True stops cleanly
        (checkpoint saved, FOLD_STOPPED reported, KeyboardInterrupt raised).
    Returns: the test metrics dict (see lmtcnn.metrics.compute_metrics) plus step, wall_s.
    Raises: UserError for bad data or device, TrainingDiverged for a NaN/Inf loss,
      KeyboardInterrupt when stopped (after saving a checkpoint).
    """
    started = time.time()
    try:
        return _train(config, fold, workdir, report, stop_requested, started)
    except KeyboardInterrupt:
        raise  # reported as FOLD_STOPPED where the step is known
    except Exception as e:
        report(events.make(events.FOLD_FAILED, reason="%s: %s" % (type(e).__name__, e)))
        raise


def _train(config, fold, workdir, report, stop_requested, started):
    device = resolve_device(config.train.device)
    activate_device(device)
    manifest = load_manifest(config.data.data_dir)
    counts = check_fold_data(config, manifest, fold)
    train_files, train_count = split_files(config.data.data_dir, fold, "train")
    steps = total_steps(config.train, train_count)
    os.makedirs(workdir, exist_ok=True)

    ckpt_dir = layout.checkpoints(workdir)
    # A resumed attempt shuffles differently from the first (same seed, other offset), so
    # it does not replay the images the first attempt began with.
    seed = config.train.seed + 1000 * fold + max(_latest_step(ckpt_dir), 0)
    precision = precision_plan(device, config.train.precision, config.train.npu_precision_mode)
    graph = build_training_graph(config, train_files, manifest["image_size"], seed=seed,
                                 loss_scaling=precision.loss_scaling, cpu_ops=device == "cpu" and CPU_OPS_FOR_FOLDS,
                                 train_images=train_count, accelerator=device in ("npu", "gpu"))
    tf_config = session_config(device, config.train.cpu_threads, config.train.npu_precision_mode,
                               gpu_memory_fraction=config.train.gpu_memory_fraction,
                               precision=config.train.precision)
    with graph.tf_graph.as_default(), tf.Session(config=tf_config) as sess:
        sess.run(tf.global_variables_initializer())
        start_step = _restore_or_warm_start(sess, graph, ckpt_dir, config.train.pretrained_checkpoint, report)
        writer = tf.summary.FileWriter(layout.tensorboard(workdir), graph=None)
        if start_step:
            # TensorBoard drops what an earlier attempt logged after this step.
            writer.add_session_log(tf.SessionLog(status=tf.SessionLog.START), start_step)
        report(events.make(events.FOLD_STARTED, device=device, start_step=start_step, total_steps=steps,
                           train_images=train_count, tf_version=VERSION))
        if precision.message:
            report(events.make(events.MESSAGE, text=precision.message))
        try:
            _run_steps(sess, graph, config, fold, workdir, start_step, steps, writer, report, stop_requested,
                       counts["val"])
            step = _save_unless_saved(sess, graph, ckpt_dir, report)
            graph.weights_saver.save(sess, layout.final_weights(workdir), write_meta_graph=False)
            report(events.make(events.EVAL_STARTED, step=int(step), split="test", images=counts["test"]))
            metrics = evaluate_split(sess, graph, config, fold, "test")
        except tf.errors.DataLossError as e:
            damaged = _damaged_data(config, fold, e)
            if damaged is None:
                raise
            raise damaged
        except KeyboardInterrupt:
            # Stopped (Ctrl-C on the scheduler, or stop_requested): keep the progress.
            step = _save_unless_saved(sess, graph, ckpt_dir, report)
            report(events.make(events.FOLD_STOPPED, step=step))
            raise
        finally:
            writer.close()
    metrics.update(step=int(step), wall_s=round(time.time() - started, 1), device=device,
                   batch_norm=batch_norm_label(config.eval), augment=config.train.augment,
                   model_type=config.model.type,
                   # What this fold was scored on: runs compare only on the same test sets.
                   test_fingerprint=fold_test_fingerprint(config.data.data_dir, fold, manifest))
    write_json_atomic(layout.metrics_file(workdir), metrics)
    report(events.make(events.FOLD_FINISHED, step=int(step), metrics=metrics, wall_s=metrics["wall_s"]))
    return metrics


def _run_steps(sess, graph, config, fold, workdir, start_step, steps, writer, report, stop_requested, val_images):
    tc = config.train
    ckpt_dir = layout.checkpoints(workdir)
    # One fixed fetch list every step: on the NPU a new fetch set recompiles the graph,
    # so summaries are written from these Python values, not from summary ops.
    fetches = [graph.step_after, graph.loss, graph.learning_rate]
    step = start_step
    window_start, window_step = None, step
    while step < steps:
        if stop_requested is not None and stop_requested():
            raise KeyboardInterrupt("stop requested")
        step, loss, lr = sess.run(fetches)
        if not np.isfinite(loss):
            raise TrainingDiverged("fold %d: loss is %s at step %d; lower train.learning_rate or "
                                   "train.clip_norm" % (fold, loss, step))
        if window_start is None:
            # The first step includes graph compilation: time from its end.
            window_start, window_step = time.time(), step
        if step % tc.log_every_steps == 0 or step == steps:
            now = time.time()
            rate = (step - window_step) * tc.batch_size / max(now - window_start, 1e-9)
            window_start, window_step = now, step
            report(events.make(events.STEP_DONE, step=int(step), total_steps=steps, loss=float(loss),
                               learning_rate=float(lr), images_per_s=round(rate, 2)))
        if step % tc.summary_every_steps == 0:
            writer.add_summary(tf.Summary(value=[tf.Summary.Value(tag="loss", simple_value=float(loss)),
                                                 tf.Summary.Value(tag="learning_rate", simple_value=float(lr))]),
                               step)
        if step % tc.checkpoint_every_steps == 0 and step < steps:
            _save_checkpoint(sess, graph, ckpt_dir, report, step)
        if tc.eval_every_steps and step % tc.eval_every_steps == 0 and step < steps:
            report(events.make(events.EVAL_STARTED, step=int(step), split="val", images=val_images))
            metrics = evaluate_split(sess, graph, config, fold, "val")
            report(events.make(events.EVAL_DONE, step=int(step), split="val", metrics=metrics))
            window_start, window_step = time.time(), step  # images/s measures training only
            writer.add_summary(tf.Summary(value=[
                tf.Summary.Value(tag="val/" + k, simple_value=metrics[k])
                for k in ("age_top1", "age_top2", "age_one_off", "gender")]), step)


def step_saved(sess, graph):
    return int(sess.run(graph.global_step))


def _latest_step(ckpt_dir):
    candidates = checkpoint_candidates(ckpt_dir)
    return candidates[0][1] if candidates else -1


def checkpoint_candidates(ckpt_dir):
    """[(prefix, step)] of the checkpoints on disk, newest first. The files are the truth:
    TF's `checkpoint` index may lag behind (a crash between a save and its update) or be
    damaged itself."""
    found = []
    for index in glob.glob(os.path.join(glob.escape(ckpt_dir), "model.ckpt-*.index")):
        prefix = index[:-len(".index")]
        step = prefix.rsplit("-", 1)[1]
        if step.isdigit():
            found.append((prefix, int(step)))
    return sorted(found, key=lambda item: item[1], reverse=True)


def _damaged_data(config, fold, error):
    """The UserError naming the record file that fails its checksums, or None when every
    file reads (a transient read error, worth a retry)."""
    files = []
    for role in ("train", "val", "test"):
        files += split_files(config.data.data_dir, fold, role)[0]
    corrupt = find_corrupt_record(sorted(set(files)))
    if corrupt is None:
        return None
    return UserError("%s: %s; the prepared data is damaged: prepare it again into a new directory "
                     "(python -m lmtcnn prepare)" % corrupt)


def _save_checkpoint(sess, graph, ckpt_dir, report, step):
    # Saver writes each file under a temporary name and renames it, and only then updates
    # the `checkpoint` index, so a crash mid-save leaves the previous checkpoint usable.
    path = graph.saver.save(sess, os.path.join(ckpt_dir, "model.ckpt"), global_step=step, write_meta_graph=False)
    report(events.make(events.CHECKPOINT_SAVED, step=int(step), path=path))


def _save_unless_saved(sess, graph, ckpt_dir, report):
    """Checkpoint the current step unless a checkpoint of it exists; returns the step."""
    step = step_saved(sess, graph)
    if step > _latest_step(ckpt_dir):
        _save_checkpoint(sess, graph, ckpt_dir, report, step)
    return step


def _restore_or_warm_start(sess, graph, ckpt_dir, pretrained, report):
    """Resume from the work directory's newest readable checkpoint, else warm start, else
    start fresh. A checkpoint whose files cannot be read (torn, cut short, missing a part)
    is moved aside as `*.unreadable` and the one before it is used; the report says so.
    A readable checkpoint of another model is the user's error; any other failure (a
    device or filesystem hiccup) is raised as it is, for a retry."""
    candidates = checkpoint_candidates(ckpt_dir)
    unreadable = []
    for number, (prefix, step) in enumerate(candidates):
        problem = _unreadable(sess, graph, prefix)
        if problem:
            unreadable.append("%s (%s)" % (os.path.basename(prefix), problem))
            _move_aside(prefix)
            continue
        kept = [p for p, _ in reversed(candidates[number:])]  # oldest first, as the Saver keeps them
        # Let train.keep_checkpoints also prune the checkpoints of earlier attempts, and
        # point TF's index (what `lmtcnn eval` follows) at a checkpoint that exists.
        graph.saver.recover_last_checkpoints(kept)
        tf.train.update_checkpoint_state(ckpt_dir, prefix, all_model_checkpoint_paths=kept)
        if unreadable:
            report(events.make(events.MESSAGE, unreadable=unreadable, text=(
                "unreadable checkpoint %s moved aside (*.unreadable); resumed from the one before it, %s"
                % ("; ".join(unreadable), prefix))))
        else:
            report(events.make(events.MESSAGE, text="resumed from %s" % prefix))
        return step_saved(sess, graph)
    if unreadable:
        report(events.make(events.MESSAGE, unreadable=unreadable, text=(
            "no readable checkpoint (%s moved aside as *.unreadable); training starts again from step 0"
            % "; ".join(unreadable))))
        sess.run(tf.global_variables_initializer())  # a failed restore may have set some variables
    if pretrained:
        _warm_start(sess, graph, pretrained, report)
    return 0


# What damaged checkpoint files raise: a bad index (DataLossError), a data file cut short
# (OutOfRangeError), a data file gone (NotFoundError, once the index names every variable).
_DAMAGED = (tf.errors.DataLossError, tf.errors.OutOfRangeError, tf.errors.NotFoundError)


def _unreadable(sess, graph, prefix):
    """Restore `prefix`; None when it worked, else what damaged its files. UserError for
    an intact checkpoint of another model."""
    try:
        shapes = tf.train.NewCheckpointReader(prefix).get_variable_to_shape_map()
    except _DAMAGED as e:
        return _describe(e)
    wanted = {v.op.name: v.shape.as_list() for v in tf.global_variables()}
    other = sorted(name for name, shape in wanted.items() if name not in shapes or list(shapes[name]) != shape)
    if other:
        raise UserError("%s: a checkpoint of another model or recipe (%d variables missing or shaped "
                        "differently, e.g. %s); resume with the same model keys, or train into another "
                        "work directory" % (prefix, len(other), other[0]))
    try:
        graph.saver.restore(sess, prefix)
    except _DAMAGED as e:
        return _describe(e)
    return None


def _describe(error):
    # TF 2 heads its messages with "Graph execution error:"; the next line says what happened.
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.strip().endswith(":")]
    return "%s: %s" % (type(error).__name__, (lines or [""])[0][:200])


def _move_aside(prefix):
    for path in glob.glob(glob.escape(prefix) + ".*"):
        if not path.endswith(".unreadable"):
            os.replace(path, path + ".unreadable")


def _warm_start(sess, graph, pretrained, report):
    """Restore the network variables `pretrained` holds with matching shapes, in our naming
    or the reference's (lmtcnn.checkpoint_names); report the others by name."""
    source = find_checkpoint(pretrained, what="train.pretrained_checkpoint")
    mapping = map_variables(graph.model_variables, read_shapes(source, "train.pretrained_checkpoint"))
    if not mapping.matched:
        raise UserError("train.pretrained_checkpoint %s: no variable matches this model" % pretrained)
    tf.train.Saver(mapping.matched).restore(sess, source)
    restored = sorted(v.op.name for v in mapping.matched.values())
    parameters = sum(int(v.shape.num_elements()) for v in mapping.matched.values() if v.trainable)
    report(events.make(events.MESSAGE, text=(
        "warm start from %s (%s names): restored %d variables (%d trainable parameters); not in checkpoint: %s; "
        "shape differs: %s; in the checkpoint, not used: %s" % (
            source, mapping.naming, len(restored), parameters, ", ".join(mapping.missing) or "none",
            ", ".join(mapping.mismatched) or "none", ", ".join(mapping.unused) or "none")),
        restored=restored, missing=mapping.missing, mismatched=mapping.mismatched, unused=mapping.unused,
        naming=mapping.naming, parameters=parameters))
