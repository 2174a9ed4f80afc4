"""`lmtcnn.prepare`: fold files -> records stored once, split lists and a manifest that agree.

A fresh synthetic release (30 faces per fold) with one image deleted and one overwritten
with garbage, prepared once for the module.
"""

import collections
import csv
import glob
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import ROOT, snapshot
from lmtcnn.adience import AGE_GROUPS, read_fold
from lmtcnn.errors import UserError
from lmtcnn.prepare import prepare, split_files
from lmtcnn.tfcompat import tf

# The authors' record format (REFERENCE.md), spelt out here rather than imported.
REFERENCE_KEYS = {"image/encoded", "image/filename", "image/ageclass/label", "image/genderclass/label",
                  "image/height", "image/width"}
ROLES = ("train", "val", "test")


class Release:
    pass


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    from lmtcnn.synth import synthesize

    r = Release()
    base = tmp_path_factory.mktemp("release")
    r.raw, r.out = str(base / "raw"), str(base / "prepared")
    r.synth = synthesize(r.raw, per_fold=30, seed=0)
    # The fold files as written, read independently of lmtcnn.adience.
    r.rows = {}
    for k in range(5):
        with open(os.path.join(r.raw, "fold_%d_data.txt" % k), encoding="utf-8", newline="") as f:
            r.rows[k] = list(csv.reader(f, delimiter="\t"))[1:]
    r.labelled = {}  # name -> (fold, age, gender)
    for k, rows in r.rows.items():
        for user, image, face_id, age, gender in (row[:5] for row in rows):
            if age in AGE_GROUPS and gender in ("m", "f"):
                r.labelled["%s/landmark_aligned_face.%s.%s" % (user, face_id, image)] = \
                    (k, AGE_GROUPS.index(age), "mf".index(gender))
    names = sorted(r.labelled)
    r.deleted, r.garbage = names[3], names[40]
    r.garbage_path = os.path.join(r.raw, "aligned", r.garbage)
    r.deleted_path = os.path.join(r.raw, "aligned", r.deleted)
    os.remove(r.deleted_path)
    with open(r.garbage_path, "wb") as f:
        f.write(b"this is not a JPEG \x00\xff\xd8" * 20)
    r.kept = {n: v for n, v in r.labelled.items() if n not in (r.deleted, r.garbage)}
    r.manifest = prepare(r.raw, r.out, workers=2)
    return r


def read_records(paths):
    """[(filename, age, gender, feature keys, height, width, jpeg)] from TFRecord files."""
    out = []
    for path in paths:
        for record in tf.io.tf_record_iterator(path):
            feature = tf.train.Example.FromString(record).features.feature
            out.append((feature["image/filename"].bytes_list.value[0].decode(),
                        feature["image/ageclass/label"].int64_list.value[0],
                        feature["image/genderclass/label"].int64_list.value[0],
                        set(feature.keys()),
                        feature["image/height"].int64_list.value[0],
                        feature["image/width"].int64_list.value[0],
                        feature["image/encoded"].bytes_list.value[0]))
    return out


def read_list(path):
    with open(path, encoding="utf-8") as f:
        return [line.split() for line in f if line.strip()]


def test_broken_images_are_skipped_and_listed(release):
    assert release.manifest["skipped_images"] == {"missing": 1, "undecodable": 1}
    with open(os.path.join(release.out, "skipped.txt"), encoding="utf-8") as f:
        lines = sorted(line.rstrip("\n").split("\t") for line in f if line.strip())
    assert lines == [["missing", release.deleted_path], ["undecodable", release.garbage_path]]


def test_dropped_rows_match_the_messy_rows(release):
    expected = collections.Counter()
    for rows in release.rows.values():
        for row in rows:
            if row[3] not in AGE_GROUPS:
                expected["age not a standard group"] += 1
            elif row[4] not in ("m", "f"):
                expected["gender not m/f"] += 1
    assert len(expected) == 2  # the seed gives both kinds
    assert release.manifest["dropped_rows"] == dict(expected)
    assert sum(expected.values()) == release.synth["messy_rows"]
    assert release.manifest["images"] == release.synth["images"] - release.synth["messy_rows"] - 2


def test_each_readable_labelled_image_is_stored_once_in_the_reference_format(release):
    records = read_records(sorted(glob.glob(os.path.join(release.out, "records", "*.tfrecord"))))
    names = collections.Counter(r[0] for r in records)
    assert max(names.values()) == 1
    assert set(names) == set(release.kept) and len(records) == release.manifest["images"]
    assert not glob.glob(os.path.join(release.out, "records", "*.tmp"))
    for name, age, gender, keys, height, width, jpeg in records:
        assert keys == REFERENCE_KEYS
        assert (age, gender) == release.kept[name][1:]
        assert (height, width) == (256, 256)
        assert jpeg[:2] == b"\xff\xd8"
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (256, 256, 3)


def test_lists_agree_with_manifest_and_raw_folds(release):
    kept = release.kept
    for k in range(5):
        members = {}
        for role in ROLES:
            path = os.path.join(release.out, "lists", "test_fold_is_%d" % k, "agegender_%s.txt" % role)
            entries = read_list(path)
            assert len(entries) == release.manifest["folds"][str(k)][role]["count"]
            for name, age, gender in entries:
                assert (int(age), int(gender)) == kept[name][1:]
            members[role] = [e[0] for e in entries]
            assert len(set(members[role])) == len(members[role])
        train, val, test = (set(members[role]) for role in ROLES)
        assert not (train & val or train & test or val & test)
        assert train | val | test == set(kept)
        assert test == {n for n, v in kept.items() if v[0] == k}
        assert val and len(val) < len(train)


def test_record_files_of_a_split_hold_exactly_that_split(release):
    for k in range(5):
        for role in ROLES:
            files, count = split_files(release.out, k, role)
            listed = {e[0] for e in read_list(os.path.join(release.out, "lists", "test_fold_is_%d" % k,
                                                           "agegender_%s.txt" % role))}
            names = [r[0] for r in read_records(files)]
            assert len(names) == count and set(names) == listed


def test_preparing_twice_is_refused_and_changes_nothing(release):
    before = snapshot(release.out)
    with pytest.raises(UserError, match="already prepared"):
        prepare(release.raw, release.out, workers=1)
    assert snapshot(release.out) == before


def test_missing_fold_file_is_one_line(release, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for k in range(4):
        shutil.copy(os.path.join(release.raw, "fold_%d_data.txt" % k), str(raw))
    with pytest.raises(UserError) as e:
        prepare(str(raw), str(tmp_path / "out"), workers=1)
    message = str(e.value)
    assert "fold_4_data.txt" in message and "\n" not in message
    assert not os.path.exists(str(tmp_path / "out" / "manifest.json"))


def test_split_lists_reproduce_the_split(release, tmp_path):
    out = str(tmp_path / "from_lists")
    manifest = prepare(release.raw, out, workers=2, split_lists=os.path.join(release.out, "lists"))
    assert manifest["split"]["source"] == "lists"
    assert manifest["images"] == release.manifest["images"]
    # The broken images were never listed, so nothing is skipped this time.
    assert manifest["skipped_images"] == {}
    for k in range(5):
        for role in ROLES:
            assert manifest["folds"][str(k)][role]["count"] == release.manifest["folds"][str(k)][role]["count"]
            assert manifest["folds"][str(k)][role]["age_counts"] == \
                release.manifest["folds"][str(k)][role]["age_counts"]
            name = os.path.join("test_fold_is_%d" % k, "agegender_%s.txt" % role)
            assert sorted(read_list(os.path.join(out, "lists", name))) == \
                sorted(read_list(os.path.join(release.out, "lists", name)))


def test_split_lists_missing_file_is_a_user_error(release, tmp_path):
    lists = tmp_path / "lists"
    shutil.copytree(os.path.join(release.out, "lists"), str(lists))
    os.remove(str(lists / "test_fold_is_2" / "agegender_val.txt"))
    with pytest.raises(UserError, match="test_fold_is_2"):
        prepare(release.raw, str(tmp_path / "out"), workers=1, split_lists=str(lists))


def test_read_fold_sees_the_same_faces(release):
    # lmtcnn.adience agrees with this file's independent reading of the fold files.
    faces = {f.name: (f.fold, f.age, f.gender) for k in range(5) for f in read_fold(release.raw, k)[0]}
    assert faces == release.labelled


def test_cli_missing_adience_dir_exits_2_with_one_line(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "lmtcnn", "prepare", "--adience-dir", str(tmp_path / "nowhere"),
                           "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "nowhere" in lines[0] and "fold_0_data.txt" in lines[0]
    assert not out.exists()


def test_an_empty_validation_split_is_refused_when_evaluation_asks_for_it(release, tmp_path):
    import json as json_module

    from conftest import tiny_config
    from lmtcnn.prepare import check_fold_data

    manifest = json_module.load(open(os.path.join(release.out, "manifest.json")))
    manifest["folds"]["2"]["val"] = {"count": 0, "files": [], "age_counts": [0] * 8}
    config = tiny_config(release.out, eval_every_steps=50, batch_size=4)
    with pytest.raises(UserError) as e:
        check_fold_data(config, manifest, 2)
    assert "fold 2 has no validation images" in str(e.value) and "train.eval_every_steps" in str(e.value)
    config.train.eval_every_steps = 0
    assert check_fold_data(config, manifest, 2)["val"] == 0
