"""lmtcnn.metrics.compute_metrics on small examples worked out by hand."""

import json

import numpy as np
import pytest

from lmtcnn.metrics import compute_metrics


def one_hot_scores(order):
    """Age logits [8] whose ranking is `order` (highest first); the rest score 0."""
    logits = np.zeros(8, dtype=np.float32)
    for rank, group in enumerate(order):
        logits[group] = 10.0 - rank
    return logits


# Per image: true age, age ranking (best first), gender logits, true gender.
#   0: true 3, best 3          -> top-1 yes, top-2 yes, 1-off yes
#   1: true 2, best 5, next 2  -> top-1 no,  top-2 yes, 1-off no (|5-2| = 3)
#   2: true 4, best 5, next 0  -> top-1 no,  top-2 no,  1-off yes (adjacent group)
#   3: true 7, best 0, next 1  -> no, no, no
AGES = [3, 2, 4, 7]
AGE_LOGITS = np.stack([one_hot_scores([3, 1]), one_hot_scores([5, 2]), one_hot_scores([5, 0]),
                       one_hot_scores([0, 1])])
GENDER_LOGITS = np.array([[2.0, 1.0], [0.0, 1.0], [1.0, 3.0], [5.0, -1.0]])  # predicts m, f, f, m
GENDERS = [0, 1, 0, 0]                                                      # 3 of 4 right


def test_hand_computed_example():
    m = compute_metrics(AGE_LOGITS, GENDER_LOGITS, AGES, GENDERS)
    assert m["count"] == 4
    assert m["age_top1"] == pytest.approx(1 / 4)
    assert m["age_top2"] == pytest.approx(2 / 4)
    assert m["age_one_off"] == pytest.approx(2 / 4)
    assert m["gender"] == pytest.approx(3 / 4)
    expected = np.zeros((8, 8), dtype=int)
    for true, predicted in ((3, 3), (2, 5), (4, 5), (7, 0)):
        expected[true, predicted] += 1
    assert m["age_confusion"] == expected.tolist()


def test_top2_is_not_one_off():
    # True group 0; the two best are 7 and 0: top-2 counts it, 1-off does not (|7-0| = 7).
    m = compute_metrics([one_hot_scores([7, 0])], [[0.0, 1.0]], [0], [1])
    assert (m["age_top1"], m["age_top2"], m["age_one_off"], m["gender"]) == (0.0, 1.0, 0.0, 1.0)
    # True group 6; best 5, then 2: 1-off counts it, top-2 does not.
    m = compute_metrics([one_hot_scores([5, 2])], [[1.0, 0.0]], [6], [1])
    assert (m["age_top1"], m["age_top2"], m["age_one_off"], m["gender"]) == (0.0, 0.0, 1.0, 0.0)


def test_third_best_is_outside_top2():
    m = compute_metrics([one_hot_scores([1, 2, 3])], [[1.0, 0.0]], [3], [0])
    assert m["age_top2"] == 0.0 and m["age_one_off"] == 0.0


def test_every_image_counts_once_and_confusion_sums_to_count():
    rng = np.random.RandomState(0)
    n = 37
    ages, genders = rng.randint(0, 8, n), rng.randint(0, 2, n)
    age_logits, gender_logits = rng.normal(size=(n, 8)), rng.normal(size=(n, 2))
    m = compute_metrics(age_logits, gender_logits, ages, genders)
    confusion = np.array(m["age_confusion"])
    assert m["count"] == n and confusion.sum() == n
    assert confusion.sum(axis=1).tolist() == np.bincount(ages, minlength=8).tolist()
    assert m["age_top1"] == pytest.approx(np.trace(confusion) / n)
    assert m["age_top1"] <= m["age_top2"] and m["age_top1"] <= m["age_one_off"]
    # Perfect logits give 1.0 everywhere.
    perfect = compute_metrics(np.eye(8)[ages], np.eye(2)[genders], ages, genders)
    assert [perfect[k] for k in ("age_top1", "age_top2", "age_one_off", "gender")] == [1.0] * 4


def test_result_is_plain_json():
    # metrics.json and Ray's channel carry this dict: numpy scalars would not serialise.
    m = compute_metrics(AGE_LOGITS.astype(np.float32), GENDER_LOGITS, np.array(AGES, dtype=np.int32), GENDERS)
    assert json.loads(json.dumps(m)) == m
    assert type(m["count"]) is int and type(m["age_top1"]) is float


def test_no_images_is_an_error():
    with pytest.raises(ValueError):
        compute_metrics(np.zeros((0, 8)), np.zeros((0, 2)), [], [])
