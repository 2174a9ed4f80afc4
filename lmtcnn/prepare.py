"""`python -m lmtcnn prepare`: Adience fold files -> split lists, TFRecords and a manifest.

Each image is decoded and stored once. Images are grouped by their roles in each of the
five test folds (e.g. 'T_R_V_R_R': test in fold 0, train in 1, val in 2, ...) and each
group is one TFRecord file; a split (test fold k, role) reads the groups that hold it,
a group listed twice in that role ('RR', the authors' repeated lines) twice. That serves
both the project's own split (about ten groups) and the authors' lists (whose validation
sets differ per fold; a few hundred groups) without five copies of the data.
"""

import collections
import hashlib
import multiprocessing
import os
import random
import sys
import time

from lmtcnn import adience
from lmtcnn.errors import UserError
from lmtcnn.files import read_json, write_json_atomic, write_text_atomic
from lmtcnn.synth import MARKER

MANIFEST = "manifest.json"
LISTS = "lists"  # the split lists prepare writes, in the authors' format
STORED_SIZE = 256  # pixels; the authors' records hold 256x256 JPEGs at quality 100
JPEG_QUALITY = 100
FEATURE_KEYS = ("image/encoded", "image/filename", "image/ageclass/label",
                "image/genderclass/label", "image/height", "image/width")


def prepare(adience_dir, out_dir, image_set="aligned", workers=None, split_lists="", seed=0,
            progress=None):
    """Prepare every fold of an Adience release for training.

    Args:
      adience_dir: holds fold_<k>_data.txt and the image folders.
      out_dir: new or empty directory for records/, lists/, manifest.json, skipped.txt.
      image_set: "aligned" (the authors' choice) or "faces".
      workers: decoding processes (default: all cores).
      split_lists: directory of the authors' test_fold_is_<k>/ lists; "" for our own split.
      seed: chooses the validation subjects of our own split.
      progress: callable(done, total) for a progress display.
    Returns: the manifest dict.
    Raises: UserError for missing fold files, an already prepared `out_dir`, or no images.
    """
    if os.path.exists(os.path.join(out_dir, MANIFEST)):
        raise UserError("%s: already prepared (manifest.json exists); choose another --out or delete it" % out_dir)
    if image_set not in adience.IMAGE_SETS:
        raise UserError("--image-set %s: must be one of %s" % (image_set, ", ".join(adience.IMAGE_SETS)))
    dropped = collections.Counter()
    list_stats = None
    if split_lists:  # the lists hold the labels; the fold files are not needed
        roles, labels, list_stats = adience.read_split_lists(split_lists)
        faces = [adience.Face(name, _test_fold(roles[name]), name.split("/")[0], age, gender)
                 for name, (age, gender) in sorted(labels.items())]
    else:
        faces_by_fold = {}
        for fold in range(adience.NUM_FOLDS):
            faces_by_fold[fold], fold_dropped = adience.read_fold(adience_dir, fold, image_set)
            dropped.update(fold_dropped)
        seen = set()  # an image listed twice (even in two folds) is kept once, where first seen
        faces_by_fold = {fold: _unique(faces, dropped, seen) for fold, faces in sorted(faces_by_fold.items())}
        roles = adience.own_split(faces_by_fold, seed=seed)
        faces = [f for fold in sorted(faces_by_fold) for f in faces_by_fold[fold]]
    if not faces:
        raise UserError("%s: no row has a standard age group and m/f gender; nothing to prepare" % adience_dir)

    written, skipped = _write_records(adience_dir, out_dir, image_set, faces, roles, workers, progress)
    kept = [f for f in faces if f.name in written]
    if not kept:
        raise UserError("%s: none of the %d labelled images could be read; see %s"
                        % (adience_dir, len(faces), os.path.join(out_dir, "skipped.txt")))
    lists_dir = os.path.join(out_dir, LISTS)
    adience.write_split_lists(lists_dir, kept, roles)
    manifest = _manifest(kept, roles, written, dropped, skipped, image_set, split_lists, seed, list_stats)
    for k, entry in manifest["folds"].items():
        entry["test"]["fingerprint"] = list_fingerprint(adience.split_list_path(lists_dir, int(k), "test"))
    manifest["synthetic"] = os.path.isfile(os.path.join(adience_dir, MARKER))
    write_json_atomic(os.path.join(out_dir, MANIFEST), manifest)
    return manifest


def _test_fold(fold_roles):
    tested = [k for k, listed in enumerate(fold_roles) if "test" in listed]
    return tested[0] if tested else None


def _unique(faces, dropped, seen):
    """Faces whose image is not in `seen` (which they join); repeats are counted as dropped."""
    unique = []
    for face in faces:
        if face.name in seen:
            dropped["duplicate row"] += 1
        else:
            seen.add(face.name)
            unique.append(face)
    return unique


def _write_records(adience_dir, out_dir, image_set, faces, roles, workers, progress):
    from lmtcnn.tfcompat import tf

    records_dir = os.path.join(out_dir, "records")
    os.makedirs(records_dir, exist_ok=True)
    by_path = {adience.image_path(adience_dir, image_set, f.name): f for f in faces}
    tasks = [(path, STORED_SIZE, JPEG_QUALITY) for path in sorted(by_path)]
    # Fold files list a subject's photos together; records in a fixed random order let a
    # modest shuffle buffer mix subjects and ages within every batch.
    random.Random(0).shuffle(tasks)
    writers, written, skipped = {}, {}, []
    # Spawned (not forked) workers: the parent may hold TensorFlow, which must not be
    # copied into children; the workers import only OpenCV.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers or os.cpu_count()) as pool:
        for done, (path, jpeg, problem) in enumerate(pool.imap(_encode, tasks, chunksize=8), 1):
            face = by_path[path]
            if problem:
                skipped.append((problem, path))
            else:
                group = adience.signature(roles[face.name])
                if group not in writers:
                    writers[group] = tf.io.TFRecordWriter(os.path.join(records_dir, group + ".tfrecord.tmp"))
                writers[group].write(_example(tf, face, jpeg).SerializeToString())
                written[face.name] = "records/%s.tfrecord" % group
            if progress:
                progress(done, len(tasks))
    for group, writer in writers.items():
        writer.close()
        final = os.path.join(records_dir, group + ".tfrecord")
        os.replace(final + ".tmp", final)
    write_text_atomic(os.path.join(out_dir, "skipped.txt"),
                      "".join("%s\t%s\n" % item for item in sorted(skipped)))
    return written, skipped


def _encode(task):
    from lmtcnn.images import encode_face

    return encode_face(task)


def _example(tf, face, jpeg):
    def _bytes(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def _int(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    return tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": _bytes(jpeg),
        "image/filename": _bytes(face.name.encode("utf-8")),
        "image/ageclass/label": _int(face.age),
        "image/genderclass/label": _int(face.gender),
        "image/height": _int(STORED_SIZE),
        "image/width": _int(STORED_SIZE),
    }))


def _manifest(faces, roles, written, dropped, skipped, image_set, split_lists, seed, list_stats):
    folds = {}
    for k in range(adience.NUM_FOLDS):
        folds[str(k)] = {}
        for role in adience.ROLES:
            times = {f.name: roles[f.name][k].count(role) for f in faces}
            members = [f for f in faces if times[f.name]]
            per_file = collections.Counter()
            for f in members:
                # A file holds a whole group, so one image's multiplicity is its group's.
                per_file[written[f.name]] = times[f.name]
            folds[str(k)][role] = {
                "count": sum(times.values()),
                # Listed as often as the split reads it: a group repeated in a list, twice.
                "files": sorted(path for path, n in per_file.items() for _ in range(n)),
                "age_counts": [sum(times[f.name] for f in members if f.age == a)
                               for a in range(len(adience.AGE_GROUPS))],
            }
    split = {"source": "own", "seed": seed}
    if split_lists:
        split = dict(list_stats, source="lists", dir=os.path.abspath(split_lists))
    return {
        "format": 2,
        "image_size": STORED_SIZE,
        "image_set": image_set,
        "split": split,
        "images": len(faces),
        "dropped_rows": dict(dropped),
        "skipped_images": dict(collections.Counter(problem for problem, _ in skipped)),
        "folds": folds,
    }


def load_manifest(data_dir):
    """The manifest of a prepared directory; UserError when it is not prepared."""
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.isfile(path):
        raise UserError("%s: no prepared data (manifest.json missing); run "
                        "`python -m lmtcnn prepare --adience-dir DIR --out %s`" % (data_dir, data_dir))
    return read_json(path)


def list_fingerprint(path):
    """"sha256:<hex>" of the samples a split list names, or None when there is no such list.

    A sample is its list line, `<image> <age> <gender>` (image name and labels, not the
    pixels: the aligned and the unaligned image set score the same samples). The lines
    are hashed sorted, so the same samples listed in another order match; a repeated
    line, scored twice, counts twice."""
    if not os.path.isfile(path):
        return None
    with open(path, "r", encoding="utf-8") as f:
        samples = sorted(" ".join(line.split()) for line in f if line.strip())
    return "sha256:" + hashlib.sha256("\n".join(samples).encode("utf-8")).hexdigest()


def fold_test_fingerprint(data_dir, fold, manifest):
    """The fingerprint of test fold `fold`'s test set: as prepare recorded it, or for data
    prepared before fingerprints were recorded, computed from its test list (None when
    that list is gone too)."""
    recorded = manifest["folds"][str(fold)]["test"].get("fingerprint")
    if recorded:
        return recorded
    return list_fingerprint(adience.split_list_path(os.path.join(data_dir, LISTS), fold, "test"))


def split_files(data_dir, fold, role):
    """(record file paths, image count) of test fold `fold`'s `role` split."""
    manifest = load_manifest(data_dir)
    entry = manifest["folds"][str(fold)][role]
    return [os.path.join(data_dir, f) for f in entry["files"]], entry["count"]


def check_fold_data(config, manifest, fold):
    """{"train": n, "val": n, "test": n} of a fold, or UserError naming what is missing:
    the fold, a record file, images for training or testing, validation images when
    train.eval_every_steps asks for them, a training split smaller than one batch."""
    data_dir = config.data.data_dir
    entry = manifest["folds"].get(str(fold))
    if entry is None:
        raise UserError("%s: manifest has no fold %d; prepare the data again" % (data_dir, fold))
    counts = {}
    for role in adience.ROLES:
        missing = [f for f in entry[role]["files"] if not os.path.isfile(os.path.join(data_dir, f))]
        if missing:
            raise UserError("%s: fold %d %s data missing (%s); prepare the data again"
                            % (data_dir, fold, role, os.path.join(data_dir, missing[0])))
        counts[role] = entry[role]["count"]
    for role in ("train", "test"):
        if counts[role] == 0:
            raise UserError("%s: fold %d has no %s images" % (data_dir, fold, role))
    if counts["val"] == 0 and config.train.eval_every_steps:
        raise UserError("%s: fold %d has no validation images, but train.eval_every_steps is %d; set it to 0 or "
                        "prepare data with a validation split" % (data_dir, fold, config.train.eval_every_steps))
    if counts["train"] < config.train.batch_size:
        raise UserError("%s: fold %d has %d training images, fewer than train.batch_size %d"
                        % (data_dir, fold, counts["train"], config.train.batch_size))
    return counts


class ProgressLine:
    """'label  done/total  pct  rate' redrawn in place on a terminal, every 10% otherwise."""

    def __init__(self, label, stream=sys.stderr):
        self.label, self.stream = label, stream
        self.start = time.time()
        self.last_decile = -1
        self.tty = stream.isatty()

    def __call__(self, done, total):
        decile = done * 10 // max(total, 1)
        if not self.tty and decile == self.last_decile and done != total:
            return
        self.last_decile = decile
        rate = done / max(time.time() - self.start, 1e-6)
        text = "%s %d/%d images (%3d%%, %.0f/s)" % (self.label, done, total, 100 * done // max(total, 1), rate)
        self.stream.write(("\r" + text) if self.tty else text + "\n")
        if self.tty and done == total:
            self.stream.write("\n")
        self.stream.flush()
