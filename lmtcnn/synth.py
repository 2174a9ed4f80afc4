"""A synthetic Adience release whose pixels carry a learnable age and gender signal.

Layout and fold files match the real release exactly, so `prepare`, training and the
scheduler run on it unchanged. The signal survives the training augmentation:
  age group a -> stripes at an angle of a * 90/7 degrees (a flip maps the angle to its
                 mirror, which no other group uses; crops and resizes keep angles);
  gender      -> a colour tint of the stripes (standardisation keeps channel ratios).
Noise, contrast and stripe period vary per image, so a network has to learn, not look up.
No face detector sees a face in those stripes: `face_photo` draws photos of faces that
OpenCV's cascade does find, for `predict`.
"""

import math
import os
import random

import numpy as np

from lmtcnn.adience import AGE_GROUPS, FOLD_HEADER, GENDERS, IMAGE_SETS, NUM_FOLDS
from lmtcnn.files import write_text_atomic

RAW_SIZE = 128  # pixels; `prepare` resizes to 256 as it does for the real 816x816 faces
# Written beside the fold files: `prepare` records the data as synthetic, and results on it
# are never laid beside the published Adience numbers.
MARKER = "SYNTHETIC.txt"
MESSY_AGES = ("None", "35", "(38, 42)", "(8, 23)", "(25, 23)")
MESSY_GENDERS = ("u", "")
TINTS = (np.array([1.0, 0.55, 0.35]), np.array([0.35, 0.55, 1.0]))  # BGR: m bluish, f reddish


def draw_face(age, gender, rng):
    """One BGR uint8 image of side RAW_SIZE for the given labels."""
    angle = math.radians(age * 90.0 / 7 + rng.uniform(-3, 3))
    period = rng.uniform(9.0, 15.0)
    phase = rng.uniform(0, 2 * math.pi)
    contrast = rng.uniform(25, 70)
    y, x = np.mgrid[0:RAW_SIZE, 0:RAW_SIZE].astype(np.float32)
    wave = np.sin(2 * math.pi * (x * math.cos(angle) + y * math.sin(angle)) / period + phase)
    noise = np.random.RandomState(rng.randrange(2 ** 31))
    tint = TINTS[gender] * noise.uniform(0.8, 1.2, size=3)
    base = rng.uniform(90, 160)
    image = base + contrast * wave[..., None] * tint[None, None, :]
    image += noise.normal(0, 30, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def face_photo(width, height, faces, seed=0):
    """A BGR uint8 photo of drawn faces that OpenCV's face cascade finds (lmtcnn.faces),
    for `predict`'s tests and benchmark; the stripe faces above are no faces to it.

    faces: (centre x, centre y, face width, BGR skin colour) each; the face is 1.3 times as
    tall as wide, with hair, shaded cheeks, eyes in darker sockets, brows, a nose shadow
    and a mouth: the light and dark regions a Haar cascade looks for.
    """
    import cv2

    rng = np.random.RandomState(seed)
    photo = np.empty((height, width, 3), np.float64)
    photo[:] = rng.uniform(60, 200, 3)
    photo += np.linspace(-30, 30, width)[None, :, None]  # uneven light
    for centre_x, centre_y, face_width, skin in faces:
        _draw_face(photo, centre_x, centre_y, face_width, np.array(skin, np.float64))
    photo = cv2.GaussianBlur(photo, (0, 0), max(1.0, width / 400.0))
    photo += rng.normal(0, 6, photo.shape)
    return np.clip(photo, 0, 255).astype(np.uint8)


def _draw_face(photo, cx, cy, w, skin):
    import cv2

    h = int(w * 1.3)

    def shade(factor):
        return tuple(int(v) for v in skin * factor)

    cv2.ellipse(photo, (cx, cy - h // 8), (int(w * 0.58), int(h * 0.58)), 0, 180, 360, shade(0.25), -1)  # hair
    cv2.rectangle(photo, (cx - w // 5, cy + h // 3), (cx + w // 5, cy + h), shade(0.8), -1)  # neck
    # The face: lit in the middle, darker towards its edge.
    oval = np.zeros(photo.shape[:2], np.uint8)
    cv2.ellipse(oval, (cx, cy), (w // 2, h // 2), 0, 0, 360, 255, -1)
    y, x = np.mgrid[0:photo.shape[0], 0:photo.shape[1]]
    radius = np.sqrt(((x - cx) / (w / 2.0)) ** 2 + ((y - cy) / (h / 2.0)) ** 2)
    lit = np.clip(1.05 - 0.35 * radius ** 2, 0.5, 1.1)[..., None] * skin
    photo[oval > 0] = lit[oval > 0]
    eyes_y = cy - int(0.08 * h)
    for side in (-1, 1):
        eye_x = cx + side * int(0.2 * w)
        cv2.ellipse(photo, (eye_x, eyes_y), (int(0.13 * w), int(0.06 * w)), 0, 0, 360, shade(0.6), -1)  # socket
        cv2.ellipse(photo, (eye_x, eyes_y), (int(0.08 * w), int(0.035 * w)), 0, 0, 360, (235, 235, 235), -1)
        cv2.circle(photo, (eye_x, eyes_y), int(0.03 * w), (40, 30, 30), -1)
        cv2.ellipse(photo, (eye_x, eyes_y - int(0.1 * w)), (int(0.12 * w), int(0.03 * w)), 0, 180, 360, shade(0.3),
                    max(2, w // 25))  # brow
    nose_y = cy + int(0.12 * h)
    cv2.line(photo, (cx + int(0.04 * w), eyes_y + int(0.05 * w)), (cx + int(0.06 * w), nose_y), shade(0.75),
             max(2, w // 30))
    cv2.ellipse(photo, (cx, nose_y), (int(0.09 * w), int(0.035 * w)), 0, 0, 360, shade(0.7), -1)
    cv2.ellipse(photo, (cx, cy + int(0.28 * h)), (int(0.17 * w), int(0.04 * w)), 0, 0, 360, (70, 60, 150), -1)


def synthesize(out_dir, per_fold=200, seed=0, messy_fraction=0.05):
    """Write fold_0..4_data.txt and aligned/ JPEGs under `out_dir`.

    Args:
      per_fold: images per fold, labelled and messy rows together.
      messy_fraction: share of rows with labels the standard protocol drops.
    Returns: {"images": n, "messy_rows": m}.
    """
    import cv2  # imported here so `lmtcnn.synth` stays cheap to import

    rng = random.Random(seed)
    folder, pattern = IMAGE_SETS["aligned"]
    total, messy = 0, 0
    user_number = 0
    for fold in range(NUM_FOLDS):
        rows = ["\t".join(FOLD_HEADER)]
        made = 0
        # Subjects belong to one fold only, as in the release; each has a few photos
        # at one age group and gender.
        while made < per_fold:
            user_number += 1
            user = "%08d@N%02d" % (10000000 + user_number * 7919 % 89999999, fold)
            age, gender = rng.randrange(len(AGE_GROUPS)), rng.randrange(len(GENDERS))
            for face_id in range(1, rng.randint(2, 6) + 1):
                if made == per_fold:
                    break
                image = "%010d_%s_o.jpg" % (rng.randrange(10 ** 10), "%08x" % rng.randrange(16 ** 8))
                age_text, gender_text = AGE_GROUPS[age], GENDERS[gender]
                if rng.random() < messy_fraction:
                    messy += 1
                    if rng.random() < 0.6:
                        age_text = rng.choice(MESSY_AGES)
                    else:
                        gender_text = rng.choice(MESSY_GENDERS)
                path = os.path.join(out_dir, folder, user, pattern.format(face_id=face_id, image=image))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                cv2.imwrite(path, draw_face(age, gender, rng), [cv2.IMWRITE_JPEG_QUALITY, 95])
                box = [rng.randint(0, 500), rng.randint(0, 500), rng.randint(300, 900), rng.randint(300, 900)]
                rows.append("\t".join([user, image, str(face_id), age_text, gender_text]
                                      + [str(v) for v in box]
                                      + [str(rng.randint(-180, 180)), str(rng.randint(-30, 30)),
                                         str(rng.randint(10, 200))]))
                made += 1
        write_text_atomic(os.path.join(out_dir, "fold_%d_data.txt" % fold), "\n".join(rows) + "\n")
        total += made
    write_text_atomic(os.path.join(out_dir, MARKER), "Synthetic faces from `python -m lmtcnn synth` (seed %d), not "
                                                    "Adience: stripes encode the age group, tint the gender.\n" % seed)
    return {"images": total, "messy_rows": messy}
