"""tf.data pipelines over the prepared TFRecords, with static batch shapes.

Training: interleaved group files -> shuffle -> repeat -> decode + augment -> batch with
drop_remainder; with train.cache, decoding (and for augment none the whole test view) moves
before the shuffle into an in-memory cache, so only the first epoch decodes JPEGs. Evaluation: every image once, in order; the last batch is padded to full
size with examples whose `valid` is 0, so shapes stay static (one compiled graph on
the NPU) and padding never counts. Export: `input_images` reads a split's first images
as uint8 model inputs (calibration and parity checks of the exported formats).
"""

from lmtcnn.tfcompat import tf

REFERENCE_CROP = 227.0 / 256.0  # the seed crops 227 out of 256


def _parse(serialized):
    image, age, gender = _parse_uint8(serialized)
    return tf.cast(image, tf.float32), age, gender


def _parse_uint8(serialized):
    features = tf.parse_single_example(serialized, {
        "image/encoded": tf.FixedLenFeature([], tf.string),
        "image/ageclass/label": tf.FixedLenFeature([], tf.int64),
        "image/genderclass/label": tf.FixedLenFeature([], tf.int64),
    })
    image = tf.image.decode_jpeg(features["image/encoded"], channels=3)
    return image, features["image/ageclass/label"], features["image/genderclass/label"]


def _augment(image, image_size, stored_size):
    """Random crop (227/256 of the side), flip, brightness and contrast, standardise."""
    crop = int(round(stored_size * REFERENCE_CROP))
    image = tf.random_crop(tf.reshape(image, [stored_size, stored_size, 3]), [crop, crop, 3])
    if crop != image_size:
        image = tf.image.resize_images(image, [image_size, image_size])
    image = tf.image.random_flip_left_right(image)
    image = tf.image.random_brightness(image, max_delta=63)
    image = tf.image.random_contrast(image, lower=0.2, upper=1.8)
    return tf.image.per_image_standardization(image)


def _whole(image, image_size, stored_size):
    """Test-time view of one stored image: see test_view."""
    return test_view(tf.reshape(image, [stored_size, stored_size, 3]), image_size)


def test_view(images, image_size):
    """What the network sees at test time: float pixels (0-255) of one image [h, w, 3] or
    a batch [n, h, w, 3] resized to the input side, then standardised per image.
    Evaluation, training with `augment: none` and the exported graphs (lmtcnn.serving)
    all go through here."""
    return tf.image.per_image_standardization(_resized(images, image_size))


def _resized(images, image_size):
    if images.shape[-3] != image_size or images.shape[-2] != image_size:
        images = tf.image.resize_images(images, [image_size, image_size])
    return images


# What train.cache may keep in memory per training image: the decoded pixels (uint8 at
# the stored size) or, with augment none, the finished test view (float32 at the input
# size). The view costs more memory (227x227x3 float32 is 3.1x a 256x256x3 uint8 image)
# and saves every per-image operation; the decoded pixels save the JPEG decoding, which is
# most of the pipeline's cost per image (bench/pipeline_threads.py).


def cache_bytes(kind, images, image_size, stored_size=256):
    """Memory that caching `images` training images as `kind` ("decoded" or "view") takes."""
    if kind == "view":
        return images * image_size * image_size * 3 * 4
    return images * stored_size * stored_size * 3


def choose_cache(mode, augment, images, image_size, stored_size=256, limit_mb=4096, accelerator=True):
    """What the training pipeline keeps in memory: "off", "decoded" or "view".

    auto: on an accelerator, the most finished stage that fits in `limit_mb`
    (train.cache_memory_mb): the test view when augment is off, else the decoded images,
    else nothing. On a CPU (`accelerator` False) nothing: the network bounds a CPU fold, its
    input pipeline already runs about ten times faster than its step, and a cache would
    only cost gigabytes. `images`: the training
    split's image count with repeats (its count in the manifest); 0 (unknown) caches nothing
    in auto mode. The explicit modes are taken as they are (config validation refuses
    "view" with augmentation, whose random crop must see the whole stored image).
    """
    if mode != "auto":
        return mode
    if images <= 0 or not accelerator:
        return "off"
    for kind in (("decoded",) if augment else ("view", "decoded")):
        if cache_bytes(kind, images, image_size, stored_size) <= limit_mb * 2 ** 20:
            return kind
    return "off"


def train_batches(files, batch_size, image_size, stored_size=256, shuffle_buffer=2000, threads=4, seed=0,
                  augment=True, cache="off"):
    """Endless (images [b,s,s,3], ages [b], genders [b]) batches from `files`.

    augment: the authors' distortions; False trains on the test view, as the Ascend port
    does (its distortions are commented out).
    cache: "off" decodes every image every epoch; "decoded" keeps the decoded images of
    the first epoch in memory; "view" (augment False only) keeps the finished test view.
    See choose_cache.
    """
    ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=len(files), block_length=1)

    view = _augment if augment else _whole
    if cache == "off":
        def prepare(serialized):
            image, age, gender = _parse(serialized)
            return view(image, image_size, stored_size), age, gender

        ds = ds.shuffle(shuffle_buffer, seed=seed).repeat()
        ds = ds.map(prepare, num_parallel_calls=threads)
    else:
        if cache == "view" and augment:
            raise ValueError("cache 'view' needs augment off: the random crop takes the whole stored image")
        # Only what is the same every epoch goes before the cache: decoding (and, for
        # "view", the test view, which has no randomness); the random distortions stay
        # after it. Each image's training view is therefore what the uncached pipeline
        # makes of it (tests/test_input_cache.py checks the test view bit for bit).
        #
        # The order of the images. The uncached pipeline, inside its repeat, reshuffles
        # the record files each epoch and then draws from a shuffle buffer reseeded each
        # epoch. The cache records the first epoch's stream, so later epochs read the
        # files in the first epoch's file order; the shuffle buffer after the cache is
        # still reseeded each epoch as before (it keeps the same seed, so epoch 1 is the
        # very same sequence as uncached). What the frozen file order changes: the
        # round-robin interleave takes one record from each file in turn, so a record's
        # place in the stream moves by less than len(files) positions (one round), while
        # the buffer mixes every shuffle_buffer (2000 by default) consecutive records
        # anew each epoch; batches stay random draws from a moving window of the split,
        # epochs stay permutations of it. The buffer holds references to the cached
        # tensors, so it adds no memory to the cache.
        def decoded(serialized):
            image, age, gender = _parse_uint8(serialized)
            if cache == "view":
                image = _whole(tf.cast(image, tf.float32), image_size, stored_size)
            return image, age, gender

        ds = ds.map(decoded, num_parallel_calls=threads).cache()
        ds = ds.shuffle(shuffle_buffer, seed=seed).repeat()
        if cache == "decoded":
            # The cast to float32 after the cache, as _parse casts: the same pixels at
            # a quarter of the memory.
            def distorted(image, age, gender):
                return view(tf.cast(image, tf.float32), image_size, stored_size), age, gender

            ds = ds.map(distorted, num_parallel_calls=threads)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(2)
    return tf.data.make_one_shot_iterator(ds).get_next()


def eval_batches(batch_size, image_size, stored_size=256, threads=4):
    """An initializable iterator over one split, fed by placeholders.

    Returns (iterator, files placeholder [n], padding placeholder (int64 scalar),
    (images, ages, genders, valid)). Feed padding = (-count) % batch_size.
    """
    files = tf.placeholder(tf.string, [None], name="eval_files")
    padding = tf.placeholder(tf.int64, [], name="eval_padding")

    def prepare(serialized):
        image, age, gender = _parse(serialized)
        return _whole(image, image_size, stored_size), age, gender, tf.constant(1.0)

    ds = tf.data.TFRecordDataset(files).map(prepare, num_parallel_calls=threads)
    filler = tf.data.Dataset.from_tensors((tf.zeros([image_size, image_size, 3]), tf.constant(0, tf.int64),
                                           tf.constant(0, tf.int64), tf.constant(0.0))).repeat(padding)
    ds = ds.concatenate(filler).batch(batch_size, drop_remainder=True).prefetch(2)
    iterator = tf.data.make_initializable_iterator(ds)
    return iterator, files, padding, iterator.get_next()


def input_images(files, image_size, limit, stored_size=256, threads=2):
    """Up to `limit` images of `files` as an exported model takes them, with their labels:
    (uint8 [n, s, s, 3] RGB, ages [n], genders [n]) as numpy arrays.

    The stored image is resized as the test view resizes it, then rounded to whole pixel
    values. Records are taken in turn from each file, so a split's groups all contribute
    to the first images; the choice is the same every time."""
    def prepare(serialized):
        image, age, gender = _parse(serialized)
        image = _resized(tf.reshape(image, [stored_size, stored_size, 3]), image_size)
        return tf.saturate_cast(tf.round(image), tf.uint8), age, gender

    with tf.Graph().as_default():
        ds = tf.data.Dataset.from_tensor_slices(files)
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=max(len(files), 1), block_length=1)
        ds = ds.take(limit).map(prepare, num_parallel_calls=threads).batch(limit)
        batch = tf.data.make_one_shot_iterator(ds).get_next()
        with tf.Session() as sess:
            return sess.run(batch)


def find_corrupt_record(files):
    """(file, problem) of the first record file whose checksums fail, or None."""
    for path in files:
        try:
            for _ in tf.io.tf_record_iterator(path):
                pass
        except tf.errors.DataLossError as e:
            return path, str(e).strip().splitlines()[0]
    return None
