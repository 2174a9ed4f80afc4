"""The one event vocabulary: the trainer emits these, the scheduler's channel carries
them, the dashboard draws them and `events.jsonl` stores them.

Events are flat JSON-able dicts with an "event" name in the past tense. The trainer
fills the fields below; the scheduler adds `fold`, `attempt`, `host`, `device` and `time`.
"""

import logging
import time

FOLD_STARTED = "fold_started"          # device, start_step, total_steps, train_images
STEP_DONE = "step_done"                # step, total_steps, loss, learning_rate, images_per_s
EVAL_STARTED = "eval_started"          # step, split, images (the first may compile a graph on an NPU)
EVAL_DONE = "eval_done"                # step, split, metrics
CHECKPOINT_SAVED = "checkpoint_saved"  # step, path
FOLD_STOPPED = "fold_stopped"          # step (interrupted; a checkpoint holds it; None: before training)
FOLD_FINISHED = "fold_finished"        # step, metrics, wall_s
FOLD_FAILED = "fold_failed"            # reason, step
MESSAGE = "message"                    # text (warm-start report, notices)


def make(event, **fields):
    fields["event"] = event
    fields.setdefault("time", time.time())
    return fields


_log = logging.getLogger("lmtcnn")


def log_report(event):
    """The default `report` callable of `lmtcnn.train`: one log line per event."""
    kind = event["event"]
    if kind == STEP_DONE:
        _log.info("step %d  loss %.4f  lr %.2g  %.1f images/s", event["step"], event["loss"],
                  event["learning_rate"], event["images_per_s"])
    elif kind in (EVAL_DONE, FOLD_FINISHED):
        m = event["metrics"]
        _log.info("%s step %d: %s age top-1 %.2f%%  top-2 %.2f%%  1-off %.2f%%  gender %.2f%%  (%d images)",
                  kind, event["step"], event.get("split", "test"), 100 * m["age_top1"], 100 * m["age_top2"],
                  100 * m["age_one_off"], 100 * m["gender"], m["count"])
    elif kind == FOLD_STARTED:
        _log.info("training on %s from step %d to %d (%d training images)", event["device"],
                  event["start_step"], event["total_steps"], event["train_images"])
    else:
        _log.info("%s %s", kind, {k: v for k, v in event.items() if k not in ("event", "time")})
