"""`python -m lmtcnn predict`: age group and gender of each face in photos.

One JSON line per face on stdout (a photo without a face gets one line saying so):
  {"file": ..., "face": 1, "faces": 2, "box": [x, y, w, h],
   "age": {"group": "(25, 32)", "probability": 0.61, "top2": [{"group", "probability"} x 2],
           "probabilities": {group: p for the 8 groups}},
   "gender": {"label": "f", "probability": 0.9, "probabilities": {"m": p, "f": p}}}
  {"file": ..., "faces": 0}
On a terminal a readable line comes before each. A photo that cannot be read is one
`error:` line on stderr; the others still run, and the exit status is then 1.
"""

import json
import os
import sys

import cv2
import numpy as np

from lmtcnn.adience import AGE_GROUPS, GENDERS
from lmtcnn.errors import UserError
from lmtcnn.faces import draw_labels, face_crop, find_faces, load_detector, read_photo, whole_photo
from lmtcnn.files import write_bytes_atomic

GENDER_WORDS = {"m": "male", "f": "female"}
ENCODABLE = (".jpg", ".jpeg", ".jpe", ".png", ".bmp")  # what every OpenCV build writes
DECIMALS = 4


def predict(photos, model_path, config_path=None, annotate_dir=None, detect=True, threads=1):
    """Classify every face of `photos` with the model at `model_path`; returns the exit
    status (0, or 1 when a photo could not be read). UserError for a bad model or
    output directory."""
    from lmtcnn.inference import open_model  # TensorFlow loads only once the arguments are checked

    if annotate_dir:
        _refuse_source_folder(annotate_dir, photos)
        _make_dir(annotate_dir)
    model = open_model(model_path, config_path, threads)
    try:
        detector = load_detector() if detect else None
        failed = predict_photos(photos, model, detector, annotate_dir)
    finally:
        model.close()
    return 1 if failed else 0


def predict_photos(photos, model, detector=None, annotate_dir=None, out=None, err=None):
    """Print the lines of each photo (to stdout, errors to stderr), faces found by
    `detector` (None: the photo is one face); returns how many could not be read."""
    out, err = out or sys.stdout, err or sys.stderr
    names = _AnnotatedNames(annotate_dir)
    return sum(not _one_photo(path, model, detector, names, out, err) for path in photos)


def _one_photo(path, model, detector, names, out, err):
    """Print the photo's lines (and write its annotated copy); False when unreadable."""
    photo, problem = read_photo(path)
    if photo is None:
        print("error: %s: %s" % (path, problem), file=err)
        return False
    if detector is None:
        boxes = [(0, 0, photo.shape[1], photo.shape[0])]
        crops = [whole_photo(photo, model.image_size)]
    else:
        boxes = find_faces(detector, photo)
        crops = [face_crop(photo, box, model.image_size) for box in boxes]
    faces = []
    if crops:
        ages, genders = model.predict(np.stack(crops))
        faces = [describe_face(path, number, len(boxes), box, age, gender)
                 for number, (box, age, gender) in enumerate(zip(boxes, ages, genders), 1)]
    for face in faces or [{"file": path, "faces": 0}]:
        if out.isatty():
            print(readable(face), file=out)
        print(json.dumps(face), file=out)
    out.flush()
    if names.directory:
        _write_annotated(photo, faces, names.next(path))
    return True


def describe_face(path, number, count, box, age_probs, gender_probs):
    """The JSON record of one face. Classes are ranked on the model's own values and
    rounded only for printing, so two that round alike never swap."""
    ages = sorted(range(len(AGE_GROUPS)), key=lambda i: -float(age_probs[i]))
    gender = int(np.argmax(gender_probs))

    def rounded(p):
        return round(float(p), DECIMALS)

    return {"file": path, "face": number, "faces": count, "box": [int(v) for v in box],
            "age": {"group": AGE_GROUPS[ages[0]], "probability": rounded(age_probs[ages[0]]),
                    "top2": [{"group": AGE_GROUPS[i], "probability": rounded(age_probs[i])} for i in ages[:2]],
                    "probabilities": {g: rounded(p) for g, p in zip(AGE_GROUPS, age_probs)}},
            "gender": {"label": GENDERS[gender], "probability": rounded(gender_probs[gender]),
                       "probabilities": {g: rounded(p) for g, p in zip(GENDERS, gender_probs)}}}


def readable(face):
    if not face["faces"]:
        return "%s: no face found" % face["file"]
    (first, second), gender = face["age"]["top2"], face["gender"]
    return "%s face %d/%d at %d,%d %dx%d: age %s %.0f%% (then %s %.0f%%), %s %.0f%%" % (
        face["file"], face["face"], face["faces"], *face["box"], first["group"], 100 * first["probability"],
        second["group"], 100 * second["probability"], GENDER_WORDS[gender["label"]], 100 * gender["probability"])


def _label(face):
    return "%s %.0f%%, %s %.0f%%" % (face["age"]["group"], 100 * face["age"]["probability"],
                                     GENDER_WORDS[face["gender"]["label"]], 100 * face["gender"]["probability"])


def _write_annotated(photo, faces, path):
    drawn = draw_labels(photo, [(tuple(face["box"]), _label(face)) for face in faces])
    try:
        ok, encoded = cv2.imencode(os.path.splitext(path)[1].lower(), drawn)
    except cv2.error:  # no encoder for this extension
        ok = False
    if not ok:
        raise UserError("%s: OpenCV cannot write this image type; use JPEG or PNG photos with --annotate" % path)
    write_bytes_atomic(path, encoded.tobytes())


def _refuse_source_folder(directory, photos):
    """The annotated copies keep the photos' names: written beside the photos they would
    replace them."""
    target = os.path.realpath(directory)
    for photo in photos:
        # The folder the photo is named in, and the one its file really is in (a link).
        folders = {os.path.realpath(os.path.dirname(os.path.abspath(photo))),
                   os.path.dirname(os.path.realpath(photo))}
        if target in folders:
            raise UserError("--annotate %s: holds %s itself, which its annotated copy would replace; name another "
                            "directory" % (directory, photo))


def _make_dir(directory):
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise UserError("--annotate %s: cannot create this directory (%s)" % (directory, e.strerror or e))


class _AnnotatedNames:
    """Where each annotated photo goes: its own file name in the directory; a second
    photo of the same name (from another folder) gets -2, -3, ... before the extension;
    a photo without an extension is written as PNG."""

    def __init__(self, directory):
        self.directory, self.taken = directory, set()

    def next(self, photo_path):
        stem, ext = os.path.splitext(os.path.basename(photo_path))
        # OpenCV picks the encoding by the extension; one it cannot write (.jfif, none)
        # is written as PNG.
        ext = ext if ext.lower() in ENCODABLE else ".png"
        name, number = stem + ext, 1
        while name in self.taken:
            number += 1
            name = "%s-%d%s" % (stem, number, ext)
        self.taken.add(name)
        return os.path.join(self.directory, name)
