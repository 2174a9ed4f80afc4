"""Fold metrics from logits, in NumPy: every test image counted exactly once."""

import numpy as np

from lmtcnn.model import NUM_AGES


def compute_metrics(age_logits, gender_logits, age_labels, gender_labels):
    """Age top-1, age top-2, age 1-off, gender accuracy and the age confusion matrix.

    Args: logits [n, 8] and [n, 2]; integer labels [n].
    Returns: dict with fractions in [0, 1], `count` (n) and `age_confusion`
      (8x8 list; rows are true groups, columns predicted).
    """
    age_logits = np.asarray(age_logits)
    age_labels = np.asarray(age_labels, dtype=np.int64)
    gender_labels = np.asarray(gender_labels, dtype=np.int64)
    n = len(age_labels)
    if n == 0:
        raise ValueError("no images to evaluate")
    predicted = age_logits.argmax(axis=1)
    # "Top-2" as the seed's tables: the true group is among the two highest scores.
    top2 = np.argsort(-age_logits, axis=1, kind="stable")[:, :2]
    confusion = np.zeros((NUM_AGES, NUM_AGES), dtype=np.int64)
    np.add.at(confusion, (age_labels, predicted), 1)
    return {
        "count": int(n),
        "age_top1": float(np.mean(predicted == age_labels)),
        "age_top2": float(np.mean((top2 == age_labels[:, None]).any(axis=1))),
        # Adjacent-group accuracy of the Adience literature, reported beside top-2.
        "age_one_off": float(np.mean(np.abs(predicted - age_labels) <= 1)),
        "gender": float(np.mean(np.asarray(gender_logits).argmax(axis=1) == gender_labels)),
        "age_confusion": confusion.tolist(),
    }
