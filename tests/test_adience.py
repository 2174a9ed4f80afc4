import collections
import os

import pytest

from lmtcnn import adience
from lmtcnn.errors import UserError


@pytest.mark.parametrize("text, index", [
    ("(0, 2)", 0), ("(25, 32)", 4), (" (60, 100) ", 7),
    ("None", None), ("35", None), ("(38, 42)", None), ("(8, 23)", None), ("(25, 23)", None), ("", None),
])
def test_age_labels(text, index):
    assert adience.parse_age(text) == index


@pytest.mark.parametrize("text, index", [("m", 0), ("f", 1), ("u", None), ("", None), ("None", None)])
def test_gender_labels(text, index):
    assert adience.parse_gender(text) == index


def test_fold_rows_are_kept_or_dropped_by_reason(tmp_path):
    header = "\t".join(adience.FOLD_HEADER)
    rows = ["u1\ta.jpg\t1\t(25, 32)\tf\t0\t0\t1\t1\t0\t0\t1",
            "u1\tb.jpg\t2\tNone\tf\t0\t0\t1\t1\t0\t0\t1",
            "u2\tc.jpg\t3\t(38, 42)\tm\t0\t0\t1\t1\t0\t0\t1",
            "u2\td.jpg\t4\t(48, 53)\tu\t0\t0\t1\t1\t0\t0\t1",
            "u3\te.jpg\t5\t(0, 2)\t\t0\t0\t1\t1\t0\t0\t1",
            "u3\tf.jpg\t6\t(0, 2)\tm\t0\t0\t1\t1\t0\t0\t1"]
    (tmp_path / "fold_0_data.txt").write_text("\n".join([header] + rows) + "\n")
    faces, dropped = adience.read_fold(str(tmp_path), 0)
    assert [(f.name, f.age, f.gender) for f in faces] == [
        ("u1/landmark_aligned_face.1.a.jpg", 4, 1), ("u3/landmark_aligned_face.6.f.jpg", 0, 0)]
    assert dropped == {"age not a standard group": 2, "gender not m/f": 2}


def test_missing_fold_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="fold_3_data.txt"):
        adience.read_fold(str(tmp_path), 3)


def test_own_split_is_subject_exclusive_and_deterministic(raw_adience):
    by_fold = {k: adience.read_fold(raw_adience, k)[0] for k in range(5)}
    roles = adience.own_split(by_fold, seed=0)
    assert roles == adience.own_split(by_fold, seed=0)
    assert roles != adience.own_split(by_fold, seed=1)
    for k in range(5):
        users = collections.defaultdict(set)
        for fold, faces in by_fold.items():
            for f in faces:
                (role,) = roles[f.name][k]
                users[role].add(f.user)
                assert (role == "test") == (fold == k)
        assert not users["train"] & users["val"] and not users["train"] & users["test"]
        val = sum(len(users["val"]) for _ in [0])
        assert val > 0
        n_val = sum(1 for faces in by_fold.values() for f in faces if roles[f.name][k] == ["val"])
        n_pool = sum(len(faces) for fold, faces in by_fold.items() if fold != k)
        assert 0.08 < n_val / n_pool < 0.2


def test_faces_image_set_maps_list_names(tmp_path):
    path = adience.image_path("/d", "faces", "u1/landmark_aligned_face.3.x.jpg")
    assert path == os.path.join("/d", "faces", "u1", "coarse_tilt_aligned_face.3.x.jpg")


def test_prepare_keeps_a_repeated_row_once(raw_adience, tmp_path):
    import shutil

    from lmtcnn.prepare import prepare

    copy = str(tmp_path / "raw")
    shutil.copytree(raw_adience, copy)
    fold_1 = os.path.join(copy, "fold_1_data.txt")
    lines = open(fold_1).read().splitlines()
    repeated = next(line for line in lines[1:] if adience.parse_age(line.split("\t")[3]) is not None
                    and adience.parse_gender(line.split("\t")[4]) is not None)
    with open(fold_1, "a") as f:
        f.write(repeated + "\n")
    manifest = prepare(copy, str(tmp_path / "out"), workers=1)
    assert manifest["dropped_rows"]["duplicate row"] == 1
    from lmtcnn.__main__ import format_prepare_summary

    assert "repeated rows: 1 dropped, each image is kept once" in format_prepare_summary(manifest, "out")
    for k in range(5):
        roles = manifest["folds"][str(k)]
        assert sum(roles[r]["count"] for r in adience.ROLES) == manifest["images"]


def write_lists(root, entries):
    """entries: {(k, role): [lines]} for every fold and role (missing ones empty)."""
    for k in range(5):
        for role in adience.ROLES:
            folder = root / ("test_fold_is_%d" % k)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / ("agegender_%s.txt" % role)).write_text("".join(entries.get((k, role), [])))


def test_split_lists_keep_repeats_and_train_val_overlaps(tmp_path):
    line = "u1/landmark_aligned_face.1.a.jpg 4 1\n"
    other = "u2/landmark_aligned_face.2.b.jpg 0 0\n"
    write_lists(tmp_path / "ok", {(0, "test"): [line, line], (1, "train"): [line, line, other],
                                  (1, "val"): [line], (2, "test"): [other]})
    roles, labels, stats = adience.read_split_lists(str(tmp_path / "ok"))
    assert roles["u1/landmark_aligned_face.1.a.jpg"] == [["test", "test"], ["train", "train", "val"], [], [], []]
    assert labels["u1/landmark_aligned_face.1.a.jpg"] == (4, 1)
    assert stats["repeated_lines"]["0"] == {"train": 0, "val": 0, "test": 1}
    assert stats["repeated_lines"]["1"] == {"train": 1, "val": 0, "test": 0}
    assert stats["train_val_images"] == {"0": 0, "1": 1, "2": 0, "3": 0, "4": 0}
    assert adience.signature(roles["u1/landmark_aligned_face.1.a.jpg"]) == "TT_RRV_-_-_-"


@pytest.mark.parametrize("entries, words", [
    ({(0, "test"): ["{l}"], (0, "train"): ["{l}"]}, ["test_fold_is_0", "also in test_fold_is_0's train list"]),
    ({(0, "val"): ["{l}"], (0, "test"): ["{l}"]}, ["agegender_test.txt:1", "also in test_fold_is_0's val list"]),
    ({(0, "test"): ["{l}"], (1, "train"): ["{r}"]}, ["has labels 5 1 here but 4 1"]),
])
def test_split_lists_reject_contradictions(tmp_path, entries, words):
    line = "u1/landmark_aligned_face.1.a.jpg 4 1\n"
    relabelled = line.replace(" 4 1", " 5 1")
    write_lists(tmp_path, {key: [v.format(l=line, r=relabelled) for v in lines] for key, lines in entries.items()})
    with pytest.raises(UserError) as e:
        adience.read_split_lists(str(tmp_path))
    for word in words:
        assert word in str(e.value)
    assert "\n" not in str(e.value)
