"""`prepare --split-lists` on lists shaped like the authors' published ones.

The fixture writes, in the authors' format, lists with exactly the published line counts
per fold (test/train/val: 3879/11136/1242, 3005/11905/1348, 3121/11814/1323,
2866/12056/1335, 3387/11593/1277), the published repeats within each list (test
11/9/53/12/17; train 76/72/40/68/64; val 0/1/1/1/1) and images in both a fold's train
and val lists, over 16,156 images (the published lists' count). Each listed line must
be one sample; each image must be stored once.
"""

import collections
import os

import cv2
import numpy as np
import pytest

from lmtcnn.prepare import prepare
from lmtcnn.tfcompat import tf

PUBLISHED = {  # fold: (test, train, val) lines, as published
    0: (3879, 11136, 1242), 1: (3005, 11905, 1348), 2: (3121, 11814, 1323), 3: (2866, 12056, 1335),
    4: (3387, 11593, 1277)}
REPEATS = {0: (11, 76, 0), 1: (9, 72, 1), 2: (53, 40, 1), 3: (12, 68, 1), 4: (17, 64, 1)}  # test, train, val


def lists_like_the_authors(root, adience_dir):
    """Write the lists and one tiny JPEG per image; returns {(fold, role): [names, in list order]}.

    Fold k's test list is its own images plus repeated lines. Its train and val lists are
    drawn from the other folds' images: one image is left out (as the authors' split
    drops one per fold), val takes the first block, train the rest, and the last images
    of val are also in train, as many as the line counts leave over.
    """
    unique = {k: PUBLISHED[k][0] - REPEATS[k][0] for k in range(5)}
    names = {k: ["%05d@N%02d/landmark_aligned_face.%d.%08d_x_o.jpg" % (k * 100000 + i, k, i, i)
                 for i in range(unique[k])] for k in range(5)}
    lists = {}
    for k in range(5):
        test_lines, train_lines, val_lines = PUBLISHED[k]
        test_rep, train_rep, val_rep = REPEATS[k]
        pool = [n for j in range(5) if j != k for n in names[j]][1:]
        val_unique, train_unique = val_lines - val_rep, train_lines - train_rep
        overlap = val_unique + train_unique - len(pool)
        assert 0 < overlap < 30
        val = pool[:val_unique]
        train = pool[val_unique - overlap:]
        lists[(k, "test")] = names[k] + names[k][:test_rep]
        lists[(k, "train")] = train + train[:train_rep]
        lists[(k, "val")] = val + val[:val_rep]
    for (k, role), members in lists.items():
        folder = os.path.join(root, "test_fold_is_%d" % k)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "agegender_%s.txt" % role), "w") as f:
            f.writelines("%s %d %d\n" % ((n,) + labels_of(n)) for n in members)
    # One small real JPEG, hard-linked under every image's name (prepare decodes each).
    ok, jpeg = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    source = os.path.join(adience_dir, "face.jpg")
    os.makedirs(adience_dir, exist_ok=True)
    with open(source, "wb") as f:
        f.write(jpeg.tobytes())
    for k in range(5):
        for n in names[k]:
            path = os.path.join(adience_dir, "aligned", n)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.link(source, path)
    return lists


def labels_of(name):
    number = int(name.split("@")[0])
    return number % 8, number % 2


@pytest.fixture(scope="module")
def authors(tmp_path_factory):
    base = tmp_path_factory.mktemp("authors")
    lists_dir, adience_dir, out = str(base / "lists"), str(base / "adience"), str(base / "prepared")
    lists = lists_like_the_authors(lists_dir, adience_dir)
    manifest = prepare(adience_dir, out, workers=2, split_lists=lists_dir)
    return lists, manifest, out


def test_counts_are_the_published_line_counts(authors):
    lists, manifest, _ = authors
    assert manifest["images"] == 16156 and manifest["skipped_images"] == {}
    for k, (test, train, val) in PUBLISHED.items():
        counts = manifest["folds"][str(k)]
        assert (counts["test"]["count"], counts["train"]["count"], counts["val"]["count"]) == (test, train, val)
        assert sum(counts["train"]["age_counts"]) == train
        test_rep, train_rep, val_rep = REPEATS[k]
        assert manifest["split"]["repeated_lines"][str(k)] == {"test": test_rep, "train": train_rep, "val": val_rep}
        both = set(lists[(k, "train")]) & set(lists[(k, "val")])
        assert manifest["split"]["train_val_images"][str(k)] == len(both) > 0


def read_names(files):
    return [tf.train.Example.FromString(record).features.feature["image/filename"].bytes_list.value[0].decode()
            for path in files for record in tf.io.tf_record_iterator(path)]


def test_each_image_is_stored_once_and_each_line_is_read_once(authors):
    lists, manifest, out = authors
    stored = read_names(sorted(os.path.join(out, "records", f) for f in os.listdir(os.path.join(out, "records"))))
    assert len(stored) == len(set(stored)) == 16156
    for k in (0, 2):  # fold 2 has the most repeated test lines
        for role in ("test", "train", "val"):
            files = [os.path.join(out, f) for f in manifest["folds"][str(k)][role]["files"]]
            assert collections.Counter(read_names(files)) == collections.Counter(lists[(k, role)]), (k, role)


def test_the_written_lists_are_the_lists_read(authors):
    lists, _, out = authors
    for (k, role), members in lists.items():
        with open(os.path.join(out, "lists", "test_fold_is_%d" % k, "agegender_%s.txt" % role)) as f:
            written = [line.split()[0] for line in f if line.strip()]
        assert collections.Counter(written) == collections.Counter(members), (k, role)


def test_the_summary_reports_repeats_and_overlaps(authors):
    from lmtcnn.__main__ import format_prepare_summary

    _, manifest, out = authors
    text = format_prepare_summary(manifest, out)
    assert "repeated lines are kept" in text
    row = [line for line in text.splitlines() if line.split()[:1] == ["0"]][0].split()
    assert row[:5] == ["0", "11136", "1242", "3879", "76/0/11"]
    assert "fall short of the lists' line counts" not in text  # nothing skipped here

    # Were images skipped, the counts are of the samples kept and the summary says so.
    skipped = dict(manifest, skipped_images={"truncated": 2})
    assert "the counts leave out the lines of the 2 skipped images" in format_prepare_summary(skipped, out)
