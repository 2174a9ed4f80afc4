"""Faces in photos: found by a cascade that ships with OpenCV, cropped as Adience frames them.

Detector: OpenCV's Haar cascade `haarcascade_frontalface_alt2` from cv2.data.haarcascades
(installed with opencv-python; nothing is downloaded). It finds upright, frontal faces.
The photo is first scaled down to DETECT_SIDE pixels on its longer side, since the
cascade's time grows with the pixel count; with MIN_FACE that means a face is looked for
down to about a 25th of the photo's longer side (smaller ones, a crowd in a wide shot,
are missed). SCALE_FACTOR and MIN_NEIGHBORS are the common choices for photos: a 10% step
between the face sizes searched, and a face must be found at 5 overlapping positions,
which keeps textured background from passing as a face.

Crop: Adience's aligned faces show the whole head with hair, some neck and background,
the face itself taking about half of the image's side. So a box of side w (the cascade's
box runs from the brows to the chin, cheek to cheek) becomes the square of side 2w about
the box's centre: MARGIN w/2 on each side; where that reaches past the photo, black fills
in. The square is resized to the network's input side as `prepare` resizes faces
(lmtcnn.images.resize_square).
"""

import os

import cv2
import numpy as np

from lmtcnn.errors import UserError
from lmtcnn.images import resize_square

CASCADE = "haarcascade_frontalface_alt2.xml"
DETECT_SIDE = 1024
MIN_FACE = 40
SCALE_FACTOR = 1.1
MIN_NEIGHBORS = 5
MARGIN = 0.5  # of the box's side, added on each side


def load_detector():
    """The face cascade, or UserError when this OpenCV has none (OpenCV 5 moved the Haar
    cascades out of its main package and ships its data folder empty)."""
    path = os.path.join(getattr(getattr(cv2, "data", None), "haarcascades", ""), CASCADE)
    if not hasattr(cv2, "CascadeClassifier") or not os.path.isfile(path):
        raise UserError("OpenCV %s has no Haar face cascade (%s missing); install opencv-python-headless<5, or pass "
                        "--no-detect with photos that are face crops already" % (cv2.__version__, CASCADE))
    detector = cv2.CascadeClassifier(path)
    if detector.empty():
        raise UserError("%s: OpenCV could not load this cascade; reinstall opencv-python-headless" % path)
    return detector


def find_faces(detector, photo):
    """Boxes (x, y, w, h) of the faces in BGR `photo`, in its pixels, left to right."""
    scale = min(1.0, float(DETECT_SIDE) / max(photo.shape[:2]))
    small = photo if scale == 1.0 else cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY))
    found = detector.detectMultiScale(gray, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS,
                                      minSize=(MIN_FACE, MIN_FACE))
    boxes = [tuple(int(round(v / scale)) for v in box) for box in found]
    return sorted(boxes)


def face_crop(photo, box, side):
    """The face in `box` of BGR `photo`, framed as an Adience aligned face: RGB uint8
    [side, side, 3]."""
    x, y, w, h = box
    size = (1 + 2 * MARGIN) * max(w, h)
    return _square(photo, x + w / 2.0, y + h / 2.0, size, side)


def whole_photo(photo, side):
    """The photo as one face crop (`--no-detect`): black bars make it square."""
    height, width = photo.shape[:2]
    return _square(photo, width / 2.0, height / 2.0, max(width, height), side)


def _square(photo, centre_x, centre_y, size, side):
    height, width = photo.shape[:2]
    size = max(int(round(size)), 1)
    left, top = int(round(centre_x - size / 2.0)), int(round(centre_y - size / 2.0))
    right, bottom = left + size, top + size
    inside = photo[max(top, 0):min(bottom, height), max(left, 0):min(right, width)]
    square = cv2.copyMakeBorder(inside, max(-top, 0), max(bottom - height, 0), max(-left, 0), max(right - width, 0),
                                cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return cv2.cvtColor(resize_square(square, side), cv2.COLOR_BGR2RGB)


def draw_labels(photo, labelled_boxes):
    """A copy of BGR `photo` with each (box, text) drawn: a green frame, the text above it."""
    out = photo.copy()
    for (x, y, w, h), text in labelled_boxes:
        thickness = max(2, int(round(w / 80.0)))
        scale = max(0.4, w / 250.0)
        cv2.rectangle(out, (x, y), (x + w, y + h), (0, 200, 0), thickness)
        (text_w, text_h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = max(y - text_h - base - thickness, 0)
        cv2.rectangle(out, (x, top), (x + text_w, top + text_h + base + thickness), (0, 200, 0), -1)
        cv2.putText(out, text, (x, top + text_h + thickness // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                    max(1, thickness // 2), cv2.LINE_AA)
    return out


def read_photo(path):
    """(BGR image, None) or (None, why it cannot be used)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return None, "cannot read it (%s)" % (e.strerror or e)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        return None, "not an image OpenCV can decode (JPEG, PNG, ...)"
    return image, None
