"""train.cache: the training pipeline keeps decoded images (or the finished test view) in
memory after the first epoch; each image's training view and the first epoch's order
stay what the uncached pipeline gives, and every later epoch is still a permutation."""

import numpy as np
import pytest

from lmtcnn.config import Config, build_config
from lmtcnn.errors import UserError
from lmtcnn.input_pipeline import cache_bytes, choose_cache

SIZE = 64  # a small input side keeps the test fast; the pipeline is the same at 227


def batches(files, count, batch, cache, augment=False, seed=3):
    """The first `count` batches (images, ages, genders) of a fresh training pipeline."""
    from lmtcnn.input_pipeline import train_batches
    from lmtcnn.tfcompat import tf

    with tf.Graph().as_default():
        tf.set_random_seed(seed)
        out = train_batches(files, batch, SIZE, shuffle_buffer=64, threads=2, seed=seed, augment=augment,
                            cache=cache)
        with tf.Session() as sess:
            got = [sess.run(out) for _ in range(count)]
    return [np.concatenate([b[i] for b in got]) for i in range(3)]


@pytest.fixture(scope="module")
def split(prepared):
    from lmtcnn.prepare import split_files

    files, count = split_files(prepared, 0, "train")
    # Batches of a size that divides the split: epoch boundaries fall between batches.
    batch = next(b for b in range(16, 0, -1) if count % b == 0)
    return files, count, batch


def test_cached_test_view_repeats_the_uncached_first_epoch_bit_for_bit(split):
    files, count, batch = split
    plain = batches(files, count // batch, batch, "off")
    for cache in ("decoded", "view"):
        cached = batches(files, count // batch, batch, cache)
        for a, b in zip(plain, cached):
            assert a.shape == b.shape
            assert np.array_equal(a, b), cache  # same images, same pixels, same order


def test_every_cached_epoch_is_a_permutation_of_the_split(split):
    files, count, batch = split
    images, ages, genders = batches(files, 3 * count // batch, batch, "view")
    # One key per image: its labels and a few of its pixels.
    keys = [(int(a), int(g)) + tuple(np.round(im[::17, ::23, 0].ravel(), 3)) for im, a, g in
            zip(images, ages, genders)]
    epochs = [sorted(keys[k * count:(k + 1) * count]) for k in range(3)]
    assert len(set(keys[:count])) == count  # the key tells images apart
    assert epochs[0] == epochs[1] == epochs[2]
    assert keys[:count] != keys[count:2 * count]  # and the order is reshuffled each epoch


def test_cached_decoded_images_still_get_the_authors_distortions(split):
    files, count, batch = split
    images, _, _ = batches(files, 2 * count // batch, batch, "decoded", augment=True)
    assert images.shape == (2 * count, SIZE, SIZE, 3)
    # Standardised per image, as every training view is.
    assert np.allclose(images.mean(axis=(1, 2, 3)), 0, atol=1e-3)
    # Random crops and jitter: two epochs never show an image identically (a cache of
    # the distorted view would).
    first = {im[::9, ::9].tobytes() for im in images[:count]}
    assert not first & {im[::9, ::9].tobytes() for im in images[count:]}


def test_auto_caches_the_most_finished_stage_that_fits():
    view = cache_bytes("view", 1000, 227)
    decoded = cache_bytes("decoded", 1000, 227)
    assert decoded == 1000 * 256 * 256 * 3 and view > decoded
    mb = 2 ** 20
    assert choose_cache("auto", False, 1000, 227, limit_mb=view // mb + 1) == "view"
    assert choose_cache("auto", False, 1000, 227, limit_mb=view // mb - 1) == "decoded"
    assert choose_cache("auto", True, 1000, 227, limit_mb=view // mb + 1) == "decoded"  # random crops: never the view
    assert choose_cache("auto", True, 1000, 227, limit_mb=decoded // mb - 1) == "off"
    assert choose_cache("auto", False, 0, 227) == "off"  # unknown size
    assert choose_cache("auto", False, 1000, 227, accelerator=False) == "off"  # a CPU fold: the step bounds it
    assert choose_cache("off", False, 1, 227) == "off"
    assert choose_cache("decoded", True, 10 ** 9, 227) == "decoded"  # asked for: taken as it is
    # Adience's largest training split (12,056 images) fits the default decoded, not as the view.
    assert choose_cache("auto", False, 12056, 227) == "decoded"


def test_cache_settings_are_checked():
    def config(**train):
        return build_config({"train": train}, Config)

    assert config(cache="view", augment="none").train.cache == "view"
    with pytest.raises(UserError, match="train.cache"):
        config(cache="view", augment="authors")
    with pytest.raises(UserError, match="train.cache"):
        config(cache="sometimes")
    with pytest.raises(UserError, match="cache_memory_mb"):
        config(cache_memory_mb=-1)
