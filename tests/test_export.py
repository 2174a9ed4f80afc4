"""`python -m lmtcnn export` on a trained 64x64 fold: every format this TensorFlow makes,
each checked against the checkpoint and timed; the frozen graph's interface; a
checkpoint in the reference's names; bad input; no npu_bridge. Real TensorFlow and
files, 64x64 inputs."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from conftest import ROOT
from exported_fold import FOLD, int8_here, run_main
from lmtcnn.export import INT8_STEP, _agreement, parse_formats
from lmtcnn.inference import TFLiteModel, checkpoint_model, frozen_graph_model, saved_model
from lmtcnn.input_pipeline import input_images
from lmtcnn.prepare import load_manifest, split_files
from lmtcnn.synth import face_photo
from lmtcnn.tfcompat import tf


@pytest.fixture(scope="module")
def fold_test_images(exported):
    data_dir = exported.config.data.data_dir
    files, _ = split_files(data_dir, FOLD, "test")
    return input_images(files, 64, 8, load_manifest(data_dir)["image_size"])[0]


def test_every_format_is_written_checked_and_timed(exported):
    assert exported.status == 0, exported.stderr
    report = exported.report
    rows = {row["format"]: row for row in report["formats"]}
    assert list(rows) == ["checkpoint"] + exported.formats
    assert rows["checkpoint"]["path"] == os.path.join(exported.workdir, "final", "model.ckpt")
    test_count = load_manifest(exported.config.data.data_dir)["folds"][str(FOLD)]["test"]["count"]
    assert report["parity"]["images"] == min(256, test_count) and report["latency_runs"] == 3
    assert report["source"]["fold"] == FOLD and report["source"]["config"] == os.path.join(exported.run_dir,
                                                                                           "config.yaml")
    # The checks mean something: the network's answers depend on the face.
    assert rows["checkpoint"]["age_accuracy"] > 0.8 and rows["checkpoint"]["gender_accuracy"] > 0.8
    for name in exported.formats:
        row = rows[name]
        assert row["passed"] and row["latency_ms"] > 0
        assert os.path.dirname(row["path"]) == exported.out
        assert row["bytes"] > 100000
        for task in ("age", "gender"):
            assert row[task]["top1_agreement"] >= 0.97
            if name != "tflite-int8":
                assert row[task]["max_abs_diff"] <= 1e-4
    assert os.path.getsize(rows["frozen"]["path"]) == rows["frozen"]["bytes"]
    if int8_here():
        # int8 weights: about a quarter of the float model's size.
        assert rows["tflite-int8"]["bytes"] < 0.4 * rows["tflite"]["bytes"]
    # The printed table has a row per format, the ATC command and where the report went.
    lines = exported.stdout.splitlines()
    for name in ["checkpoint"] + exported.formats:
        assert any(line.split()[:1] == [name] for line in lines), name
    atc = report["atc"]
    assert atc in exported.stdout
    assert atc.startswith("atc --model=%s " % rows["frozen"]["path"])
    for flag in ("--framework=3", '--input_shape="image:1,64,64,3"', '--out_nodes="age_probs:0;gender_probs:0"',
                 "--soc_version=Ascend310", "--output=%s" % os.path.join(exported.out, "lmtcnn")):
        assert flag in atc.split(" ")
    assert "wrote %s" % os.path.join(exported.out, "export.json") in exported.stdout


def test_the_frozen_graph_takes_uint8_pixels_and_normalises_with_moving_averages(exported, fold_test_images):
    graph_def = tf.GraphDef()
    with open(exported.paths["frozen"], "rb") as f:
        graph_def.ParseFromString(f.read())
    ops = {node.op for node in graph_def.node}
    # No variables, no assertions (converters stumble on them), no batch statistics.
    assert not ops & {"VariableV2", "VarHandleOp", "ReadVariableOp", "Assert"}
    (placeholder,) = [node for node in graph_def.node if node.op == "Placeholder"]
    assert placeholder.name == "image" and placeholder.attr["dtype"].type == tf.uint8.as_datatype_enum
    assert [d.size for d in placeholder.attr["shape"].shape.dim] == [-1, 64, 64, 3]
    model = frozen_graph_model(exported.paths["frozen"])
    try:
        age, gender = model.predict(fold_test_images)
        alone = model.predict(fold_test_images[:1])
    finally:
        model.close()
    assert age.shape == (8, 8) and gender.shape == (8, 2)
    np.testing.assert_allclose(age.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(gender.sum(1), 1, atol=1e-5)
    # An image's probabilities do not depend on the others in its batch: batch norm uses
    # the moving averages, not the batch's statistics.
    np.testing.assert_allclose(alone[0][0], age[0], atol=1e-6)
    np.testing.assert_allclose(alone[1][0], gender[0], atol=1e-6)


def test_tflite_models_take_one_uint8_face(exported, fold_test_images):
    names = ["tflite"] + (["tflite-int8"] if int8_here() else [])
    for name in names:
        model = TFLiteModel(exported.paths[name])
        assert model.image_size == 64 and model.input["dtype"] == np.uint8
        assert list(model.input["shape"]) == [1, 64, 64, 3]
        age, gender = model.predict(fold_test_images)
        assert age.shape == (8, 8) and gender.shape == (8, 2)
        np.testing.assert_allclose(age.sum(1), 1, atol=0.02)
    if int8_here():
        interpreter = TFLiteModel(exported.paths["tflite-int8"]).interpreter
        kinds = [d["dtype"] for d in interpreter.get_tensor_details()]
        assert kinds.count(np.int8) > kinds.count(np.float32)


def test_the_saved_model_answers_as_the_checkpoint(exported, fold_test_images):
    reference = checkpoint_model(exported.config.model, exported.report["source"]["checkpoint"])
    model = saved_model(exported.paths["savedmodel"])
    try:
        for want, got in zip(reference.predict(fold_test_images), model.predict(fold_test_images)):
            np.testing.assert_allclose(got, want, atol=1e-6)
    finally:
        model.close()
        reference.close()


def test_int8_agreement_counts_ties_within_one_output_step():
    want = np.array([[0.50, 0.30, 0.20],
                     [0.40, 0.40 - INT8_STEP / 2, 0.20 + INT8_STEP / 2],  # top two within a step: a tie
                     [0.40, 0.35, 0.25]])
    got = np.array([[0.51, 0.29, 0.20],
                    [0.39, 0.41, 0.20],   # picks the tied second: agrees, counted as a tie
                    [0.30, 0.45, 0.25]])  # picks a class 0.05 below the best: disagrees
    result = _agreement(want, got)
    assert result["top1_agreement"] == pytest.approx(1 / 3)
    assert result["ties"] == 1 and result["top1_agreement_with_ties"] == pytest.approx(2 / 3)
    assert result["max_abs_diff"] == pytest.approx(0.10)


def test_default_formats_follow_what_this_tensorflow_can_make():
    formats, notes = parse_formats(None)
    if int8_here():
        assert formats == ["frozen", "tflite", "tflite-int8"] and notes == []
    else:
        assert formats == ["frozen", "tflite"]
        assert len(notes) == 1 and "tflite-int8 not made" in notes[0] and "TensorFlow 2" in notes[0]
    assert parse_formats("savedmodel, frozen,frozen") == (["savedmodel", "frozen"], [])


def test_a_checkpoint_in_the_reference_names_exports_the_same_network(exported, fold_test_images, tmp_path):
    from test_reference_checkpoint import as_reference, save

    reader = tf.train.NewCheckpointReader(exported.report["source"]["checkpoint"])
    values = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    # Their run directory: no fold_<k> around it and no configuration beside it.
    prefix = save(values, str(tmp_path / "LMTCNN-1-1-run" / "checkpoint-6"), as_reference)
    out = tmp_path / "reference-export"
    status, stdout, stderr = run_main(["export", "--checkpoint", prefix, "--config", os.path.join(
        exported.run_dir, "config.yaml"), "--fold", FOLD, "--out", out, "--format", "frozen", "--latency-runs", 1])
    assert status == 0, stderr
    with open(str(out / "export.json")) as f:
        report = json.load(f)
    assert report["source"]["checkpoint"] == prefix and report["source"]["naming"] == "reference"
    assert exported.report["source"]["naming"] == "lmtcnn"
    assert report["passed"]
    theirs, ours = frozen_graph_model(str(out / "lmtcnn.pb")), frozen_graph_model(exported.paths["frozen"])
    try:
        for a, b in zip(theirs.predict(fold_test_images), ours.predict(fold_test_images)):
            np.testing.assert_array_equal(a, b)
    finally:
        theirs.close()
        ours.close()


def refused(args):
    status, out, err = run_main(args)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_bad_input_is_one_line_naming_it_and_exit_2(exported, tmp_path):
    out = str(tmp_path / "out")
    line = refused(["export", "--workdir", str(tmp_path / "nothing"), "--out", out])
    assert "--workdir %s" % (tmp_path / "nothing") in line and "no checkpoint" in line
    line = refused(["export", "--workdir", exported.workdir, "--out", out, "--format", "frozen,onnx"])
    assert "--format onnx" in line and "frozen,tflite,tflite-int8,savedmodel" in line
    # A checkpoint outside any fold directory: no configuration found, then no fold known.
    alone = tmp_path / "alone"
    shutil.copytree(os.path.join(exported.workdir, "final"), str(alone))
    line = refused(["export", "--checkpoint", str(alone / "model.ckpt"), "--out", out])
    assert "no configuration found" in line and "--config FILE" in line
    line = refused(["export", "--checkpoint", str(alone / "model.ckpt"), "--out", out, "--config",
                    os.path.join(exported.run_dir, "config.yaml")])
    assert "--fold K" in line
    if not int8_here():
        line = refused(["export", "--workdir", exported.workdir, "--out", out, "--format", "tflite-int8"])
        assert "TensorFlow 1.15" in line and "tf2 lane" in line
    assert not os.path.exists(out)
    # A configuration of another model: the restore names what does not fit.
    line = refused(["export", "--workdir", exported.workdir, "--out", out, "--set", "model.type=LMTCNN-2-1"])
    assert "does not hold this network" in line


def test_a_format_outside_its_tolerance_fails_the_export_and_keeps_the_files(exported, tmp_path, monkeypatch):
    import lmtcnn.export

    # A tolerance no conversion meets: TFLite's float kernels round differently from TensorFlow's.
    monkeypatch.setattr(lmtcnn.export, "FLOAT_TOLERANCE", 1e-12)
    out = tmp_path / "out"
    status, stdout, stderr = run_main(["export", "--workdir", exported.workdir, "--out", out, "--format", "tflite",
                                       "--latency-runs", 1])
    assert status == 1
    (line,) = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert line.startswith("error: tflite differs from the checkpoint by up to ") and str(out) in line
    assert "FAILED" in stdout
    with open(str(out / "export.json")) as f:
        report = json.load(f)
    assert not report["passed"] and not report["formats"][1]["passed"]
    assert os.path.isfile(str(out / "lmtcnn.tflite"))


NPU_PROBE = textwrap.dedent("""
    import json, sys
    from lmtcnn.__main__ import main
    statuses = [main(%r), main(%r)]
    after_commands = sorted(m for m in sys.modules if m.split(".")[0] == "npu_bridge")
    from lmtcnn.device import activate_device
    activate_device("npu")  # what a training on an Ascend host does: the probe must see it
    after_activation = sorted(m for m in sys.modules if m.split(".")[0] == "npu_bridge")
    print(json.dumps({"statuses": statuses, "after_commands": after_commands, "after_activation": after_activation}))
""")


def test_export_and_predict_never_load_npu_bridge(exported, tmp_path):
    # An importable npu_bridge, as on an Ascend host, and the run's configuration saying
    # train.device npu: neither may bring the adapter (it patches every TF session).
    fake = tmp_path / "site" / "npu_bridge"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "npu_init.py").write_text("")
    config = tmp_path / "npu.yaml"
    with open(os.path.join(exported.run_dir, "config.yaml")) as f:
        config.write_text(f.read().replace("device: cpu", "device: npu"))
    assert "device: npu" in config.read_text()
    export = ["export", "--workdir", exported.workdir, "--config", str(config), "--out", str(tmp_path / "out"),
              "--format", "frozen", "--latency-runs", "1"]
    photo = str(tmp_path / "face.png")
    cv2.imwrite(photo, face_photo(200, 240, [(100, 110, 90, (150, 180, 220))]))
    predict = ["predict", "--no-detect", "--model", exported.workdir, "--config", str(config), photo]
    paths = [str(tmp_path / "site"), ROOT, os.environ.get("PYTHONPATH")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    done = subprocess.run([sys.executable, "-c", NPU_PROBE % (export, predict)], cwd=str(tmp_path), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["statuses"] == [0, 0]
    assert result["after_commands"] == []
    assert "npu_bridge" in result["after_activation"]
