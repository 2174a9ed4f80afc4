"""`encode_face` on real files: damaged images are skipped with one reason, good ones encoded.

No mocks: every case is a file on disk, decoded by the OpenCV of the lane under test.
"""

import multiprocessing
import os
import random
import sys

import cv2
import numpy as np
import pytest

from lmtcnn.images import encode_face
from lmtcnn.synth import draw_face

SIDE, QUALITY = 200, 90


def face_jpeg():
    """A 256x256 face-like JPEG at quality 95, as a camera or the Adience release would give."""
    image = cv2.resize(draw_face(3, 1, random.Random(0)), (256, 256))
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return encoded.tobytes()


def scan_data(jpeg):
    """(start, end) of the entropy-coded data: after the SOS header, before EOI."""
    sos = jpeg.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(jpeg[sos + 2:sos + 4], "big"), len(jpeg) - 2


def flipped(jpeg, pos):
    damaged = bytearray(jpeg)
    damaged[pos] ^= 0xFF
    return bytes(damaged)


def legacy_encode(path):
    """What encode_face returned for a good image before this check existed."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    image = cv2.resize(image, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])[1].tobytes()


@pytest.fixture
def files(tmp_path):
    jpeg = face_jpeg()
    start, end = scan_data(jpeg)
    contents = {
        "face.jpg": jpeg,
        "cut10.jpg": jpeg[:len(jpeg) // 10],
        "cut50.jpg": jpeg[:len(jpeg) // 2],
        "cut99.jpg": jpeg[:len(jpeg) * 99 // 100],
        "empty.jpg": b"",
        "text.jpg": b"this is a text file, not a face\n" * 20,
        # Middle of the scan data: libjpeg reports "Corrupt JPEG data: 300 extraneous
        # bytes before marker 0xd9" for this one on both lanes.
        "flipped.jpg": flipped(jpeg, (start + end) // 2),
        "trailer.jpg": jpeg + b"\0" * 64 + b"ftypmp42" * 100,  # a Motion Photo-like tail
        "png.jpg": cv2.imencode(".png", cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))[1].tobytes(),
    }
    paths = {}
    for name, data in contents.items():
        paths[name] = str(tmp_path / name)
        with open(paths[name], "wb") as f:
            f.write(data)
    paths["missing.jpg"] = str(tmp_path / "missing.jpg")
    return paths


def problem(path):
    returned_path, jpeg, reason = encode_face((path, SIDE, QUALITY))
    assert returned_path == path
    assert (jpeg is None) == (reason is not None)
    return reason


@pytest.mark.parametrize("name, reason", [
    ("missing.jpg", "missing"),
    ("empty.jpg", "truncated"),
    ("cut10.jpg", "truncated"),
    ("cut50.jpg", "truncated"),
    ("cut99.jpg", "truncated"),
    ("text.jpg", "undecodable"),
    ("flipped.jpg", "undecodable"),
])
def test_damaged_files_are_skipped_with_their_reason(files, name, reason):
    assert problem(files[name]) == reason


@pytest.mark.parametrize("name", ["face.jpg", "trailer.jpg", "png.jpg"])
def test_good_files_are_encoded_as_before(files, name):
    path, jpeg, reason = encode_face((files[name], SIDE, QUALITY))
    assert reason is None
    assert jpeg == legacy_encode(files[name])
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (SIDE, SIDE, 3)


def test_a_directory_is_undecodable(tmp_path):
    assert problem(str(tmp_path)) == "undecodable"


def test_damaged_scan_bytes_are_caught_or_invisible_never_called_truncated(tmp_path):
    # Some changed bytes keep the Huffman stream valid, and libjpeg decodes them without a
    # word: no decoder can tell. About half are caught (47% over 2000 trials, both lanes).
    jpeg = face_jpeg()
    start, end = scan_data(jpeg)
    rng = random.Random(42)
    path = str(tmp_path / "damaged.jpg")
    reasons = []
    for _ in range(200):
        damaged = bytearray(jpeg)
        pos = rng.randrange(start, end)
        damaged[pos] = rng.choice([v for v in range(256) if v != damaged[pos]])
        with open(path, "wb") as f:
            f.write(damaged)
        reasons.append(problem(path))
    assert set(reasons) <= {None, "undecodable"}
    assert reasons.count("undecodable") >= 60  # 89 of these 200 on both lanes


def test_stderr_works_after_decoding_and_libjpeg_text_stays_out(files, capfd):
    before = os.fstat(2)
    open_fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for name in ("flipped.jpg", "cut50.jpg", "face.jpg", "text.jpg"):
        encode_face((files[name], SIDE, QUALITY))
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
    if open_fds is not None:
        assert len(os.listdir("/proc/self/fd")) == open_fds
    os.write(2, b"")
    os.write(2, b"fd 2 still writes\n")
    sys.stderr.write("sys.stderr still writes\n")
    sys.stderr.flush()
    err = capfd.readouterr().err
    assert "fd 2 still writes" in err and "sys.stderr still writes" in err
    assert "Corrupt JPEG" not in err


def test_spawned_pool_workers_give_the_same_answers(files):
    # As prepare runs it: spawned workers that import only OpenCV, results through imap.
    names = ["face.jpg", "cut50.jpg", "empty.jpg", "text.jpg", "flipped.jpg", "missing.jpg", "png.jpg"]
    tasks = [(files[name], SIDE, QUALITY) for name in names]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = list(pool.imap(encode_face, tasks, chunksize=2))
    assert results == [encode_face(task) for task in tasks]
    assert [reason for _, _, reason in results] == [
        None, "truncated", "truncated", "undecodable", "undecodable", "missing", None]
