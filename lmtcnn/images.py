"""Image decoding for `prepare`: OpenCV only, so worker processes never load TensorFlow.

A damaged JPEG must never become a training face, and OpenCV does not say when one is:
  - cut short: from memory, OpenCV 4.6 (tf1 lane) decodes it silently, every row past
    the cut a copy of the last decoded one; OpenCV 5 returns None, also silently.
    So truncation is read from the bytes: the JPEG never reaches its EOI marker.
  - damaged scan data: both decode it; libjpeg only prints "Corrupt JPEG data: ..." to
    the C-level stderr, fd 2. So the decode runs with fd 2 sent to a temporary file, and
    any text there rejects the JPEG. Not every damaged byte can be noticed: a change that
    still leaves valid Huffman codes (most often in a coefficient's value bits) decodes
    without complaint in libjpeg, and no OpenCV-reachable decoder says more. Measured on
    both lanes over 2000 random single-byte changes in the scan data of a 256x256
    quality-95 face: 47% caught (51% for XOR 0xFF, 29% for one flipped bit); 80% of the
    rest change under 1% of the pixels.
Bytes after EOI are accepted, as libjpeg ignores them: real files carry such trailers
(Motion Photo videos, MPO second frames, padding). Other formats OpenCV decodes (a PNG
named .jpg) are accepted as OpenCV decodes them; a cut PNG it refuses ("undecodable").
"""

import os
import sys
import tempfile

import cv2
import numpy as np

SOI, EOI = b"\xff\xd8", b"\xff\xd9"


def encode_face(task):
    """Read one face image, resize it to a square and re-encode it as JPEG.

    Args: task = (path, side_px, quality).
    Returns: (path, jpeg bytes or None, problem or None); problem is "missing",
    "truncated" (empty, or a JPEG that stops before its end) or "undecodable".
    Redirects fd 2 while decoding: call it from a single-threaded worker process.
    """
    path, side, quality = task
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return path, None, "missing"
    except OSError:  # a directory, no permission: there, but not an image we can read
        return path, None, "undecodable"
    jpeg = data.startswith(SOI)
    if not data or (jpeg and not _complete(data)):
        return path, None, "truncated"
    image, complaint = _decode(data)
    if image is None or (jpeg and complaint):
        return path, None, "undecodable"
    image = resize_square(image, side)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        return path, None, "undecodable"
    return path, encoded.tobytes(), None


def resize_square(image, side):
    """`image` (a square face) at side x side pixels: area averaging when shrinking (no
    aliasing), bilinear when growing. `prepare` stores faces so and `predict` crops them so."""
    if image.shape[:2] == (side, side):
        return image
    shrinking = image.shape[0] > side
    return cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _complete(data):
    """Whether a JPEG's bytes run to its end: the marker walk reaches EOI, or the file
    ends with EOI (zero padding aside), as it still does when a damaged scan byte
    posed as a marker and misled the walk; the decoder's complaint catches those."""
    return _reaches_eoi(data) or data.rstrip(b"\0").endswith(EOI)


def _reaches_eoi(data):
    """Whether the JPEG marker stream in data gets to its EOI marker (FF D9).

    Segments are skipped by their length, so an EXIF thumbnail's own EOI does not count;
    entropy-coded data is searched for the next marker, past stuffed FF 00 and RSTn.
    """
    pos = len(SOI)
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return False
        code = data[pos + 1]
        if code == 0xD9:
            return True
        if code == 0xFF:  # fill byte before a marker
            pos += 1
        elif code in (0x00, 0x01) or 0xD0 <= code <= 0xD7:  # stuffed zero, TEM, RSTn: no length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")


def _decode(data):
    """(cv2.imdecode of data or None, whatever the decoder printed to fd 2 meanwhile)."""
    sys.stderr.flush()  # Python's pending text belongs to the real stderr, not our log
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as log:
            os.dup2(log.fileno(), 2)
            try:
                image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            except cv2.error:
                image = None
            finally:
                os.dup2(saved, 2)
            log.seek(0)
            return image, log.read().strip()
    finally:
        os.close(saved)
