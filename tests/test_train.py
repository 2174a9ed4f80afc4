"""`lmtcnn.train.train` on the synthetic prepared data: events, checkpoints, resume, metrics,
divergence, learning, warm start and a requested stop. Real TensorFlow on 64x64 inputs."""

import json
import os
import re
import shutil

import numpy as np
import pytest

from conftest import tiny_config
from lmtcnn.errors import TrainingDiverged, UserError
from lmtcnn.evaluate import evaluate_checkpoint
from lmtcnn.prepare import load_manifest
from lmtcnn.tfcompat import tf
from lmtcnn.train import train

FOLD = 1


class Run:
    pass


@pytest.fixture(scope="module")
def first_run(prepared, tmp_path_factory):
    """LMTCNN-1-1, fold 1, 6 steps of 16 images, a checkpoint every 4 steps."""
    run = Run()
    run.workdir = str(tmp_path_factory.mktemp("first") / "fold_1")
    run.config = tiny_config(prepared, max_steps=6, checkpoint_every_steps=4, log_every_steps=2)
    run.events = []
    run.metrics = train(run.config, FOLD, run.workdir, report=run.events.append)
    return run


def names(events):
    return [e["event"] for e in events]


def checkpoint_steps(workdir):
    found = set()
    for name in os.listdir(os.path.join(workdir, "checkpoints")):
        match = re.match(r"model\.ckpt-(\d+)\.index$", name)
        if match:
            found.add(int(match.group(1)))
    return found


def variables(prefix):
    reader = tf.train.NewCheckpointReader(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def test_events_checkpoints_metrics_and_final_weights(first_run):
    events = first_run.events
    assert names(events) == ["fold_started", "step_done", "step_done", "checkpoint_saved", "step_done",
                             "checkpoint_saved", "eval_started", "fold_finished"]
    started = events[0]
    assert started["start_step"] == 0 and started["total_steps"] == 6 and started["device"] == "cpu"
    manifest = load_manifest(first_run.config.data.data_dir)
    assert started["train_images"] == manifest["folds"][str(FOLD)]["train"]["count"]
    assert [e["step"] for e in events if e["event"] == "step_done"] == [2, 4, 6]
    # The evaluation says how many images it reads: the driver's stall allowance scales with it.
    (evaluation,) = [e for e in events if e["event"] == "eval_started"]
    assert evaluation["split"] == "test" and evaluation["images"] == manifest["folds"][str(FOLD)]["test"]["count"]
    assert all(np.isfinite(e["loss"]) and e["learning_rate"] == pytest.approx(0.01)
               for e in events if e["event"] == "step_done")
    saved = [e for e in events if e["event"] == "checkpoint_saved"]
    assert [e["step"] for e in saved] == [4, 6]
    for e in saved:
        assert os.path.exists(e["path"] + ".index")
        assert e["path"].startswith(os.path.join(first_run.workdir, "checkpoints"))
    assert checkpoint_steps(first_run.workdir) == {4, 6}
    assert events[-1]["step"] == 6 and events[-1]["metrics"] == first_run.metrics

    with open(os.path.join(first_run.workdir, "metrics.json")) as f:
        assert json.load(f) == first_run.metrics
    assert first_run.metrics["step"] == 6 and first_run.metrics["model_type"] == "LMTCNN-1-1"
    assert first_run.metrics["batch_norm"] == "moving averages"

    # final/ holds the network and its BN statistics, nothing of the optimizer.
    final = variables(os.path.join(first_run.workdir, "final", "model.ckpt"))
    assert final and all(name.startswith("lmtcnn/") for name in final)
    assert "lmtcnn/separable1/pointwise/bn/moving_mean" in final
    assert not [n for n in final if "Momentum" in n or "global_step" in n]
    # ... and they are the weights of the last checkpoint.
    last = variables(os.path.join(first_run.workdir, "checkpoints", "model.ckpt-6"))
    assert last["global_step"] == 6
    for name, value in final.items():
        np.testing.assert_array_equal(value, last[name])
    # The BN moving averages moved away from their initial (0, 1).
    assert np.abs(final["lmtcnn/separable1/pointwise/bn/moving_mean"]).max() > 0


def test_training_again_into_the_workdir_resumes(first_run, tmp_path):
    # A copy of the fold directory (as another host or a later attempt sees it).
    workdir = str(tmp_path / "fold_1")
    shutil.copytree(first_run.workdir, workdir)
    events = []
    config = tiny_config(first_run.config.data.data_dir, max_steps=10, checkpoint_every_steps=4, log_every_steps=2)
    metrics = train(config, FOLD, workdir, report=events.append)
    started = [e for e in events if e["event"] == "fold_started"]
    assert len(started) == 1 and started[0]["start_step"] == 6 and started[0]["total_steps"] == 10
    resumed = [e["text"] for e in events if e["event"] == "message" and "resumed" in e["text"]]
    assert len(resumed) == 1 and os.path.join(workdir, "checkpoints", "model.ckpt-6") in resumed[0]
    assert [e["step"] for e in events if e["event"] == "step_done"] == [8, 10]
    assert [e["step"] for e in events if e["event"] == "checkpoint_saved"] == [8, 10]
    # keep_checkpoints (3) also prunes what the earlier attempt left: 4 is gone.
    assert checkpoint_steps(workdir) == {6, 8, 10}
    assert metrics["step"] == 10
    assert variables(os.path.join(workdir, "checkpoints", "model.ckpt-10"))["global_step"] == 10
    # The original directory is untouched.
    assert checkpoint_steps(first_run.workdir) == {4, 6}
    # Finished: a third call does no step and keeps the step count.
    events = []
    assert train(config, FOLD, workdir, report=events.append)["step"] == 10
    assert "step_done" not in names(events) and "checkpoint_saved" not in names(events)


def test_test_metrics_count_every_image_once_and_match_a_later_evaluation(first_run):
    manifest = load_manifest(first_run.config.data.data_dir)
    test_count = manifest["folds"][str(FOLD)]["test"]["count"]
    assert test_count % first_run.config.eval.batch_size != 0  # the padded last batch is exercised
    m = first_run.metrics
    assert m["count"] == test_count
    assert sum(map(sum, m["age_confusion"])) == test_count

    again = evaluate_checkpoint(first_run.config, FOLD, first_run.workdir)
    assert again["checkpoint"] == os.path.join(first_run.workdir, "final", "model.ckpt")
    for key in ("count", "age_top1", "age_top2", "age_one_off", "gender", "age_confusion"):
        assert again[key] == m[key], key

    val = evaluate_checkpoint(first_run.config, FOLD, first_run.workdir, "val")
    assert val["count"] == manifest["folds"][str(FOLD)]["val"]["count"] and val["split"] == "val"


def test_nan_loss_raises_training_diverged_naming_the_step(prepared, tmp_path):
    events = []
    config = tiny_config(prepared, learning_rate=1e12, clip_norm=0.0, max_steps=30, log_every_steps=1,
                         checkpoint_every_steps=100)
    workdir = str(tmp_path / "fold_0")
    with pytest.raises(TrainingDiverged) as e:
        train(config, 0, workdir, report=events.append)
    match = re.search(r"at step (\d+)", str(e.value))
    assert match, str(e.value)
    last_good = max([ev["step"] for ev in events if ev["event"] == "step_done"] or [0])
    assert int(match.group(1)) == last_good + 1
    assert "fold 0" in str(e.value)
    assert not os.path.exists(os.path.join(workdir, "metrics.json"))


def test_validation_during_training_reports_what_the_checkpoint_scores(prepared, tmp_path):
    config = tiny_config(prepared, max_steps=4, checkpoint_every_steps=2, log_every_steps=2, eval_every_steps=2)
    workdir = str(tmp_path / "fold_1")
    events = []
    train(config, FOLD, workdir, report=events.append)
    assert names(events) == ["fold_started", "step_done", "checkpoint_saved", "eval_started", "eval_done",
                             "step_done", "checkpoint_saved", "eval_started", "fold_finished"]
    val_count = load_manifest(prepared)["folds"][str(FOLD)]["val"]["count"]
    started, done = events[3], events[4]
    assert (started["split"], started["step"], started["images"]) == ("val", 2, val_count)
    assert done["split"] == "val" and done["metrics"]["count"] == val_count
    # The weights evaluated at step 2 are the ones its checkpoint holds.
    again = evaluate_checkpoint(config, FOLD, os.path.join(workdir, "checkpoints", "model.ckpt-2"), "val")
    for key in ("age_top1", "age_top2", "gender", "age_confusion"):
        assert again[key] == done["metrics"][key], key


def test_a_short_run_clearly_beats_chance(prepared, tmp_path):
    # 250 steps: at 150 the age accuracy ranged 0.27-0.47 over repeated runs; at 250 it is
    # 0.65-0.97. One decoding thread makes the input order, and so the result, repeatable.
    config = tiny_config(prepared, batch_size=32, max_steps=250, cpu_threads=2, preprocess_threads=1,
                         checkpoint_every_steps=1000, log_every_steps=50, summary_every_steps=50)
    assert config.model.image_size == 64 and config.model.batch_norm_decay == 0.9
    events = []
    m = train(config, 0, str(tmp_path / "fold_0"), report=events.append)
    losses = [e["loss"] for e in events if e["event"] == "step_done"]
    assert losses[-1] < losses[0]
    assert m["age_top1"] > 0.35, m    # chance 0.125
    assert m["gender"] > 0.75, m      # chance 0.5


def test_warm_start_reports_what_it_could_not_restore(first_run, tmp_path):
    source = os.path.join(first_run.workdir, "final")
    events = []
    config = tiny_config(first_run.config.data.data_dir, max_steps=1, log_every_steps=1, learning_rate=1e-9,
                         pretrained_checkpoint=source, seed=7)
    config.model.type = "LMTCNN-2-1"
    train(config, FOLD, str(tmp_path / "w21"), report=events.append)
    (message,) = [e for e in events if e["event"] == "message"]
    assert names(events)[:2] == ["message", "fold_started"] and events[1]["start_step"] == 0
    differ = {"separable1/pointwise/weights", "separable1/pointwise/biases", "separable1/pointwise/bn/beta",
              "separable1/pointwise/bn/moving_mean", "separable1/pointwise/bn/moving_variance",
              "separable2/depthwise/weights", "separable2/depthwise/biases", "separable2/depthwise/bn/beta",
              "separable2/depthwise/bn/moving_mean", "separable2/depthwise/bn/moving_variance",
              "separable2/pointwise/weights"}
    assert {m.split()[0] for m in message["mismatched"]} == {"lmtcnn/" + n for n in differ}
    assert message["missing"] == []
    for name in differ:
        assert "lmtcnn/" + name in message["text"]
    assert "lmtcnn/fc1/weights" in message["restored"] and "lmtcnn/conv1/weights" in message["restored"]
    assert not set(message["restored"]) & {"lmtcnn/" + n for n in differ}
    # A restored layer starts from the source's weights (the learning rate is ~0 here).
    before, after = variables(os.path.join(source, "model.ckpt")), variables(
        os.path.join(str(tmp_path / "w21"), "final", "model.ckpt"))
    np.testing.assert_allclose(after["lmtcnn/conv1/weights"], before["lmtcnn/conv1/weights"], atol=1e-6)
    assert after["lmtcnn/separable1/pointwise/weights"].shape == (1, 1, 96, 512)


def test_matching_warm_start_restores_everything(first_run, tmp_path):
    source = os.path.join(first_run.workdir, "final")
    events = []
    config = tiny_config(first_run.config.data.data_dir, max_steps=1, log_every_steps=1, learning_rate=1e-9,
                         pretrained_checkpoint=source, seed=7)
    train(config, FOLD, str(tmp_path / "w11"), report=events.append)
    (message,) = [e for e in events if e["event"] == "message"]
    before = variables(os.path.join(source, "model.ckpt"))
    assert sorted(message["restored"]) == sorted(before)
    assert message["missing"] == [] and message["mismatched"] == []
    after = variables(os.path.join(str(tmp_path / "w11"), "final", "model.ckpt"))
    for name in ("lmtcnn/conv1/weights", "lmtcnn/fc1/weights", "lmtcnn/age_logits/weights"):
        np.testing.assert_allclose(after[name], before[name], atol=1e-6)


def test_warm_start_from_nothing_is_a_user_error(prepared, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    config = tiny_config(prepared, max_steps=1, pretrained_checkpoint=str(empty))
    with pytest.raises(UserError, match="pretrained_checkpoint"):
        train(config, FOLD, str(tmp_path / "w"), report=lambda e: None)


def test_stop_request_saves_a_checkpoint_interrupts_and_resumes(prepared, tmp_path):
    events = []

    def stop_requested():
        return any(e["event"] == "step_done" and e["step"] >= 2 for e in events)

    workdir = str(tmp_path / "fold_2")
    config = tiny_config(prepared, max_steps=50, log_every_steps=1, checkpoint_every_steps=100)
    with pytest.raises(KeyboardInterrupt):
        train(config, 2, workdir, report=events.append, stop_requested=stop_requested)
    assert names(events)[-2:] == ["checkpoint_saved", "fold_stopped"]
    assert events[-1]["step"] == 2 and events[-2]["step"] == 2
    assert [e["step"] for e in events if e["event"] == "step_done"] == [1, 2]
    assert checkpoint_steps(workdir) == {2}
    assert variables(os.path.join(workdir, "checkpoints", "model.ckpt-2"))["global_step"] == 2
    assert not os.path.exists(os.path.join(workdir, "metrics.json"))

    # Training again into the same directory carries on from the stop.
    events = []
    config = tiny_config(prepared, max_steps=4, log_every_steps=1, checkpoint_every_steps=100)
    metrics = train(config, 2, workdir, report=events.append)
    (started,) = [e for e in events if e["event"] == "fold_started"]
    assert started["start_step"] == 2
    assert [e["step"] for e in events if e["event"] == "step_done"] == [3, 4]
    assert metrics["step"] == 4 and os.path.exists(os.path.join(workdir, "metrics.json"))


def test_recipe_switches_are_recorded_with_the_metrics(first_run, tmp_path):
    """train.augment none (the Ascend port's training view) and eval.batch_norm batch (the
    reference's scoring) train and evaluate, and say so in metrics.json."""
    config = tiny_config(first_run.config.data.data_dir, max_steps=2, checkpoint_every_steps=2)
    config.train.augment = "none"
    config.eval.batch_norm = "batch"
    workdir = str(tmp_path / "fold_1")
    metrics = train(config, FOLD, workdir, report=lambda e: None)
    with open(os.path.join(workdir, "metrics.json")) as f:
        saved = json.load(f)
    assert saved["augment"] == "none"
    assert saved["batch_norm"] == "test-batch statistics (batches of 16, as the reference)"
    test_count = load_manifest(config.data.data_dir)["folds"][str(FOLD)]["test"]["count"]
    assert saved["count"] == metrics["count"] == test_count
    # Re-scoring the same weights with the moving averages is one command away.
    config.eval.batch_norm = "moving"
    again = evaluate_checkpoint(config, FOLD, workdir)
    assert again["batch_norm"] == "moving averages" and again["count"] == metrics["count"]
    assert first_run.metrics["augment"] == "authors"
