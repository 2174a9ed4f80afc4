"""`python -m lmtcnn predict` on drawn photos OpenCV's face cascade really finds: one face,
two faces, none; with every model format, --annotate, --no-detect, unreadable files, and
the readable lines on a terminal. Real TensorFlow, OpenCV and files."""

import json
import os
import pty
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import ROOT
from exported_fold import FOLD, int8_here, run_main
from lmtcnn.adience import AGE_GROUPS, GENDERS
from lmtcnn.faces import read_photo, whole_photo
from lmtcnn.inference import checkpoint_model
from lmtcnn.input_pipeline import input_images
from lmtcnn.prepare import load_manifest, split_files
from lmtcnn.synth import face_photo

# (width, height, faces as (centre x, centre y, face width, BGR skin)); checked to be found
# by the cascade on OpenCV 4.6 and 4.14.
PHOTOS = {
    "one.jpg": (640, 480, [(320, 230, 160, (150, 180, 220))]),
    "two.png": (800, 500, [(230, 250, 150, (120, 150, 200)), (570, 240, 170, (90, 120, 160))]),
    "none.jpg": (640, 480, []),
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name, (width, height, faces) in PHOTOS.items():
        paths[name] = str(folder / name)
        assert cv2.imwrite(paths[name], face_photo(width, height, faces, seed=0))
    return paths


def predict(*args):
    status, out, err = run_main(["predict"] + list(args))
    return status, [json.loads(line) for line in out.splitlines()], err


def model_paths(exported):
    paths = [exported.paths["frozen"], exported.paths["tflite"], exported.paths["savedmodel"], exported.workdir]
    return paths + ([exported.paths["tflite-int8"]] if int8_here() else [])


def check_face(face, photo_size, int8=False):
    # An int8 model's softmax comes in steps of 1/256: its 8 probabilities may each be half a step off.
    total = 8 / 512.0 if int8 else 2e-3
    assert set(face) == {"file", "face", "faces", "box", "age", "gender"}
    x, y, w, h = face["box"]
    assert 0 <= x and 0 <= y and x + w <= photo_size[0] and y + h <= photo_size[1] and w > 0 and h > 0
    age, gender = face["age"], face["gender"]
    assert list(age["probabilities"]) == list(AGE_GROUPS) and list(gender["probabilities"]) == list(GENDERS)
    assert sum(age["probabilities"].values()) == pytest.approx(1, abs=total)
    assert sum(gender["probabilities"].values()) == pytest.approx(1, abs=total)
    first, second = age["top2"]
    assert age["group"] == first["group"] in AGE_GROUPS and age["probability"] == first["probability"]
    assert first["probability"] == max(age["probabilities"].values()) >= second["probability"]
    assert second["group"] != first["group"] and second["probability"] == age["probabilities"][second["group"]]
    assert gender["label"] in GENDERS and gender["probability"] == max(gender["probabilities"].values())


def test_each_face_is_one_json_line_with_every_model_format(exported, photos):
    names = list(PHOTOS)
    for model in model_paths(exported):
        status, lines, err = predict(*[photos[n] for n in names] + ["--model", model])
        assert status == 0, err
        assert [(line["file"], line["faces"]) for line in lines] == [
            (photos["one.jpg"], 1), (photos["two.png"], 2), (photos["two.png"], 2), (photos["none.jpg"], 0)], model
        assert lines[-1] == {"file": photos["none.jpg"], "faces": 0}
        for line in lines[:3]:
            width, height, _ = PHOTOS[os.path.basename(line["file"])]
            check_face(line, (width, height), int8="int8" in model)
        assert [line["face"] for line in lines[:3]] == [1, 1, 2]


def test_boxes_sit_on_the_drawn_faces(exported, photos):
    status, lines, err = predict(photos["one.jpg"], photos["two.png"], "--model", exported.paths["frozen"])
    assert status == 0, err
    drawn = [PHOTOS["one.jpg"][2][0]] + PHOTOS["two.png"][2]
    for line, (cx, cy, width, _) in zip(lines, drawn):
        x, y, w, h = line["box"]
        assert x < cx < x + w and y < cy < y + h
        assert 0.7 * width < w < 1.6 * width


def test_an_unreadable_photo_is_one_error_line_and_the_others_still_run(exported, photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_text("this is no image")
    missing = str(tmp_path / "missing.png")
    status, lines, err = predict(str(broken), photos["one.jpg"], missing, photos["none.jpg"], "--model",
                                 exported.paths["tflite"])
    assert status == 1
    assert [line["file"] for line in lines] == [photos["one.jpg"], photos["none.jpg"]]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert errors == ["error: %s: not an image OpenCV can decode (JPEG, PNG, ...)" % broken,
                      "error: %s: cannot read it (No such file or directory)" % missing]


def test_annotate_writes_each_photo_with_its_boxes(exported, photos, tmp_path):
    out = tmp_path / "annotated"
    status, lines, err = predict(*list(photos.values()) + ["--model", exported.paths["frozen"], "--annotate",
                                                           str(out)])
    assert status == 0, err
    assert sorted(os.listdir(str(out))) == sorted(PHOTOS)
    for name, path in photos.items():
        original, annotated = cv2.imread(path), cv2.imread(str(out / name))
        assert annotated.shape == original.shape
        changed = np.abs(annotated.astype(int) - original.astype(int)).max(axis=2) > 60
        boxes = [line["box"] for line in lines if line["file"] == path and line["faces"]]
        if not boxes:
            assert not changed.any()  # writing a JPEG again changes pixels a little, never by 60
        for x, y, w, h in boxes:
            assert changed[y:y + h, x].mean() > 0.9  # the frame's left edge is drawn


def test_no_detect_takes_each_photo_as_one_face(exported, photos):
    status, lines, err = predict(*list(photos.values()) + ["--no-detect", "--model", exported.paths["tflite"]])
    assert status == 0, err
    assert [(line["file"], line["face"], line["faces"]) for line in lines] == [(p, 1, 1) for p in photos.values()]
    for line in lines:
        width, height, _ = PHOTOS[os.path.basename(line["file"])]
        assert line["box"] == [0, 0, width, height]
        check_face(line, (width, height))


def test_no_detect_classifies_the_pixels_as_rgb(exported, tmp_path):
    """Test images of the fold, saved as PNGs at the model's input size, reach the model as
    the RGB pixels it was trained on, and `predict --no-detect` gives what the checkpoint
    gives them."""
    data_dir = exported.config.data.data_dir
    files, _ = split_files(data_dir, FOLD, "test")
    images = input_images(files, 64, 4, load_manifest(data_dir)["image_size"])[0]
    paths = []
    for number, image in enumerate(images):
        paths.append(str(tmp_path / ("test%d.png" % number)))
        cv2.imwrite(paths[-1], cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    for path, image in zip(paths, images):
        np.testing.assert_array_equal(whole_photo(read_photo(path)[0], 64), image)
    status, lines, err = predict(*paths + ["--no-detect", "--model", exported.workdir])
    assert status == 0, err
    model = checkpoint_model(exported.config.model, exported.report["source"]["checkpoint"])
    try:
        want, swapped = model.predict(images), model.predict(images[..., ::-1].copy())
    finally:
        model.close()
    for task, probs in zip(("age", "gender"), want):
        got = np.array([list(line[task]["probabilities"].values()) for line in lines])
        assert np.abs(got - probs).max() <= 1e-4
    assert np.abs(want[0] - swapped[0]).max() > 0.01  # the model does see the difference


def test_bad_model_or_annotate_directory_is_one_line_and_exit_2(exported, photos, tmp_path):
    for args, words in (
            (["--model", str(tmp_path / "nothing.tflite")], "no such file or directory"),
            (["--model", photos["one.jpg"]], "no checkpoint here"),
            (["--model", exported.paths["tflite"], "--annotate", photos["one.jpg"]], "cannot create this directory"),
            # The photos' own folder: their annotated copies would replace them.
            (["--model", exported.paths["tflite"], "--annotate", os.path.dirname(photos["one.jpg"])],
             "which its annotated copy would replace")):
        before = open(photos["one.jpg"], "rb").read()
        status, out, err = run_main(["predict", photos["one.jpg"]] + args)
        lines = err.strip().splitlines()
        assert status == 2 and out == "" and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0]
        assert open(photos["one.jpg"], "rb").read() == before


READABLE = """
import sys
from lmtcnn.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_terminal_gets_a_readable_line_before_each_json_line(exported, photos):
    master, slave = pty.openpty()
    with open(os.devnull, "w") as devnull:
        process = subprocess.Popen([sys.executable, "-c", READABLE, "predict", photos["two.png"], photos["none.jpg"],
                                    "--model", exported.paths["tflite"]], stdout=slave, stderr=devnull,
                                   cwd=ROOT)
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert process.wait() == 0
    lines = output.decode().replace("\r\n", "\n").strip().split("\n")
    assert len(lines) == 6
    texts, records = lines[0::2], [json.loads(line) for line in lines[1::2]]
    for text, record in zip(texts[:2], records[:2]):
        first, second = record["age"]["top2"]
        gender = {"m": "male", "f": "female"}[record["gender"]["label"]]
        assert text == "%s face %d/2 at %d,%d %dx%d: age %s %.0f%% (then %s %.0f%%), %s %.0f%%" % (
            photos["two.png"], record["face"], *record["box"], first["group"], 100 * first["probability"],
            second["group"], 100 * second["probability"], gender, 100 * record["gender"]["probability"])
    assert texts[2] == "%s: no face found" % photos["none.jpg"]


def test_labels_follow_the_model_not_its_rounded_probabilities():
    from lmtcnn.predict import describe_face

    face = describe_face("x.jpg", 1, 1, (0, 0, 9, 9), [0.1, 0.29999, 0.30001, 0.1, 0.1, 0.05, 0.05, 0.1],
                         [0.49996, 0.50004])
    assert [item["group"] for item in face["age"]["top2"]] == [AGE_GROUPS[2], AGE_GROUPS[1]]
    assert face["gender"]["label"] == GENDERS[1] and face["gender"]["probabilities"] == {"m": 0.5, "f": 0.5}


def test_annotate_writes_a_photo_of_an_unwritable_type_as_png_and_spares_linked_photos(exported, photos,
                                                                                      tmp_path):
    jfif = tmp_path / "download.jfif"  # a JPEG as browsers save it; OpenCV reads it, cannot write .jfif
    shutil.copy(photos["one.jpg"], str(jfif))
    out = tmp_path / "annotated"
    status, lines, err = predict(str(jfif), photos["none.jpg"], "--model", exported.paths["tflite"],
                                 "--annotate", str(out))
    assert status == 0, err
    assert sorted(os.listdir(str(out))) == ["download.png", "none.jpg"]
    assert [line["faces"] for line in lines] == [1, 0]
    # A link to a photo, annotated into the folder the photo really is in: refused.
    links = tmp_path / "links"
    links.mkdir()
    os.symlink(photos["one.jpg"], str(links / "one.jpg"))
    before = open(photos["one.jpg"], "rb").read()
    status, out_text, err = run_main(["predict", str(links / "one.jpg"), "--model", exported.paths["tflite"],
                                      "--annotate", os.path.dirname(photos["one.jpg"])])
    assert status == 2 and "would replace" in err and open(photos["one.jpg"], "rb").read() == before
