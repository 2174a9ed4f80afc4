"""A synthetic Adience release whose pixels carry a learnable age and gender signal.

Layout and fold files match the real release exactly, so `prepare`, training and the
scheduler run on it unchanged. The signal survives the training augmentation:
  age group a -> stripes at an angle of a * 90/7 degrees (a flip maps the angle to its
                 mirror, which no other group uses; crops and resizes keep angles);
  gender      -> a colour tint of the stripes (standardisation keeps channel ratios).
Noise, contrast and stripe period vary per image, so a network has to learn, not look up.
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
