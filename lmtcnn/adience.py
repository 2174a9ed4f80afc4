"""The Adience release: fold files, the standard label rules and the per-fold splits.

Pure Python (no TensorFlow): `prepare` and `synth` both build on it.
"""

import collections
import csv
import os
import random

from lmtcnn.errors import UserError

NUM_FOLDS = 5
AGE_GROUPS = ("(0, 2)", "(4, 6)", "(8, 12)", "(15, 20)", "(25, 32)", "(38, 43)", "(48, 53)", "(60, 100)")
GENDERS = ("m", "f")
FOLD_HEADER = ("user_id", "original_image", "face_id", "age", "gender", "x", "y", "dx", "dy",
               "tilt_ang", "fiducial_yaw_angle", "fiducial_score")
# Image file name pattern per image set, relative to the Adience directory.
IMAGE_SETS = {
    "aligned": ("aligned", "landmark_aligned_face.{face_id}.{image}"),
    "faces": ("faces", "coarse_tilt_aligned_face.{face_id}.{image}"),
}
ROLES = ("train", "val", "test")

Face = collections.namedtuple("Face", "name fold user age gender")
"""One labelled image: `name` is `<user_id>/<file name>` (the authors' list format)."""


def fold_file(adience_dir, fold):
    return os.path.join(adience_dir, "fold_%d_data.txt" % fold)


def parse_age(text):
    """Index of an age group written exactly as the release's standard groups, else None.

    The release also holds `None`, bare ages ("35") and off-grid ranges ("(38, 42)",
    "(8, 23)"); the standard protocol drops those rows.
    """
    text = text.strip()
    return AGE_GROUPS.index(text) if text in AGE_GROUPS else None


def parse_gender(text):
    text = text.strip()
    return GENDERS.index(text) if text in GENDERS else None


def read_fold(adience_dir, fold, image_set="aligned"):
    """Parse `fold_<fold>_data.txt` into (faces, dropped), where dropped counts rows by reason.

    Raises UserError when the file is missing or lacks the release's header.
    """
    path = fold_file(adience_dir, fold)
    if not os.path.isfile(path):
        raise UserError("%s: fold file missing; --adience-dir must hold fold_0_data.txt .. "
                        "fold_4_data.txt of the Adience release" % path)
    folder, pattern = IMAGE_SETS[image_set]
    faces, dropped = [], collections.Counter()
    with open(path, "r", encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t")
        header = [h.strip() for h in next(rows, [])]
        if tuple(header[:5]) != FOLD_HEADER[:5]:
            raise UserError("%s: first line is not the Adience header (%s ...)" % (path, " ".join(FOLD_HEADER[:5])))
        for row in rows:
            if not row or not "".join(row).strip():
                continue
            if len(row) < 5:
                dropped["short row"] += 1
                continue
            user, image, face_id, age_text, gender_text = (c.strip() for c in row[:5])
            age, gender = parse_age(age_text), parse_gender(gender_text)
            if age is None:
                dropped["age not a standard group"] += 1
                continue
            if gender is None:
                dropped["gender not m/f"] += 1
                continue
            name = "%s/%s" % (user, pattern.format(face_id=face_id, image=image))
            faces.append(Face(name, fold, user, age, gender))
    return faces, dropped


def image_path(adience_dir, image_set, name):
    """Path of `name` (`<user>/landmark_aligned_face.<face_id>.<image>`, the list format)
    in the chosen image set; the authors' lists always use the aligned file name."""
    folder, pattern = IMAGE_SETS[image_set]
    user, file_name = name.split("/", 1)
    aligned_prefix = IMAGE_SETS["aligned"][1].split("{")[0]
    if file_name.startswith(aligned_prefix):
        file_name = pattern.split("{")[0] + file_name[len(aligned_prefix):]
    return os.path.join(adience_dir, folder, user, file_name)


def own_split(faces_by_fold, val_fraction=0.1, seed=0):
    """Roles of every face for each test fold, by the project's own deterministic rule.

    Test fold k is raw fold k; the other four folds give validation and training.
    Validation takes whole subjects (about `val_fraction` of each raw fold's faces),
    chosen once per raw fold with `seed`, so the same subjects are held out whichever
    fold is tested and no subject is in both training and validation.

    Returns {name: [[role] for test fold 0..4]} (the shape read_split_lists returns).
    """
    held_out = set()
    for fold, faces in sorted(faces_by_fold.items()):
        users = sorted({f.user for f in faces})
        random.Random("%d/%d" % (seed, fold)).shuffle(users)
        per_user = collections.Counter(f.user for f in faces)
        target, taken = val_fraction * len(faces), 0
        for user in users:
            if taken >= target:
                break
            held_out.add((fold, user))
            taken += per_user[user]
    roles = {}
    for fold, faces in faces_by_fold.items():
        for face in faces:
            other = "val" if (fold, face.user) in held_out else "train"
            roles[face.name] = [["test" if k == fold else other] for k in range(NUM_FOLDS)]
    return roles


def read_split_lists(split_dir):
    """The authors' lists: `test_fold_is_<k>/agegender_{train,val,test}.txt`.

    Each line is `<user_id>/landmark_aligned_face.<face_id>.<image> <age> <gender>` and is
    one sample, as the reference trains and scores them: the published lists repeat some
    lines (the raw fold files hold duplicate rows) and put a few images in both a fold's
    train and val lists; both are kept and counted. Contradictions are errors: one image
    with two labels, or an image in a fold's test list and its train or val list.

    Returns ({name: [[role per listed line] for test fold 0..4]}, {name: (age, gender)},
    stats) with stats = {"repeated_lines": {k: {role: n}}, "train_val_images": {k: n}}.
    """
    roles, labels = {}, {}
    repeated = {k: collections.Counter() for k in range(NUM_FOLDS)}
    for k in range(NUM_FOLDS):
        for role in ROLES:
            path = split_list_path(split_dir, k, role)
            if not os.path.isfile(path):
                raise UserError("%s: split list missing; --split-lists must hold "
                                "test_fold_is_0..4/agegender_{train,val,test}.txt" % path)
            with open(path, "r", encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    parts = line.split()
                    if not parts:
                        continue
                    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
                        raise UserError("%s:%d: expected '<user>/<image> <age 0-7> <gender 0-1>'" % (path, number))
                    name, age, gender = parts[0], int(parts[1]), int(parts[2])
                    if age >= len(AGE_GROUPS) or gender >= len(GENDERS):
                        raise UserError("%s:%d: age must be 0-7 and gender 0-1" % (path, number))
                    if labels.setdefault(name, (age, gender)) != (age, gender):
                        raise UserError("%s:%d: %s has labels %d %d here but %d %d in another list"
                                        % ((path, number, name, age, gender) + labels[name]))
                    listed = roles.setdefault(name, [[] for _ in range(NUM_FOLDS)])[k]
                    if role in listed:
                        repeated[k][role] += 1
                    elif "test" in listed or (role == "test" and listed):
                        raise UserError("%s:%d: %s is also in test_fold_is_%d's %s list; an image tested in a "
                                        "fold must not be trained or validated on in it"
                                        % (path, number, name, k, "test" if "test" in listed else listed[0]))
                    listed.append(role)
    overlap = {k: sum(1 for fold_roles in roles.values() if {"train", "val"} <= set(fold_roles[k]))
               for k in range(NUM_FOLDS)}
    stats = {"repeated_lines": {str(k): {r: repeated[k][r] for r in ROLES} for k in range(NUM_FOLDS)},
             "train_val_images": {str(k): overlap[k] for k in range(NUM_FOLDS)}}
    return roles, labels, stats


def write_split_lists(out_dir, faces, roles):
    """Write `test_fold_is_<k>/agegender_<role>.txt` in the authors' format, each image as
    many times as it is listed in that role (the lists read back give the same counts)."""
    from lmtcnn.files import write_text_atomic

    for k in range(NUM_FOLDS):
        for role in ROLES:
            lines = ["%s %d %d\n" % (f.name, f.age, f.gender) * roles[f.name][k].count(role) for f in faces]
            write_text_atomic(split_list_path(out_dir, k, role), "".join(lines))


def split_list_path(lists_dir, fold, role):
    """The list of `role` in test fold `fold`, in the authors' layout."""
    return os.path.join(lists_dir, "test_fold_is_%d" % fold, "agegender_%s.txt" % role)


ROLE_LETTERS = (("test", "T"), ("train", "R"), ("val", "V"))


def signature(fold_roles):
    """A short file-name-safe code of an image's roles in each test fold, e.g. 'T_R_V_R_R'
    (test in fold 0, train in fold 1, ...); 'RR' is listed twice in train, 'RV' in train
    and val, '-' in no list of that fold."""
    return "_".join("".join(letter * listed.count(role) for role, letter in ROLE_LETTERS) or "-"
                    for listed in fold_roles)
