"""How many input threads (and cores) does a fold need to keep an accelerator fed, and
what does the cache of lmtcnn.input_pipeline (train.cache) save per image?

Measures the training input pipeline alone (read records, decode the 256x256 JPEG, make
the training view, batch 32) at 227x227, for both `train.augment` settings, 1..N decoding
threads, and two paths:

  off   train.cache off: every image decoded every epoch (the pipeline before the cache)
  auto  train.cache auto: what a fold now runs; the split fits the default memory bound,
        so augment none keeps the finished test view, the authors' keep decoded images

Every configuration is measured once per round, the paths side by side, for --rounds
rounds; the table gives each one's median and the ratio of the paths. The cached path is
timed after its first epoch (the epoch that fills the cache costs what `off` costs; a
fold of the seed's 50,000 steps runs about 140 epochs of Adience). Then the accelerators'
published rates divided by the measured rates per thread:

  Ascend NPU  0.04 s a batch of 128 (the seed's performance script)  = 3,200 images/s
  V100        0.084 s a batch of 128                                  = 1,524 images/s

  python bench/pipeline_threads.py [--batches 40] [--max-threads 2] [--rounds 2]
"""

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lmtcnn.prepare import prepare, split_files  # noqa: E402
from lmtcnn.synth import synthesize  # noqa: E402

BATCH = 32
SIZE = 227
ACCELERATORS = (("Ascend NPU", 128 / 0.04), ("V100", 128 / 0.084))
PATHS = ("off", "auto")


def images_per_s(files, count, augment, threads, cache_mode, batches):
    from lmtcnn.device import session_config
    from lmtcnn.input_pipeline import choose_cache, train_batches
    from lmtcnn.tfcompat import tf

    cache = choose_cache(cache_mode, augment, count, SIZE)
    with tf.Graph().as_default(), tf.Session(config=session_config("cpu", threads)) as sess:
        images, _, _ = train_batches(files, BATCH, SIZE, shuffle_buffer=256, threads=threads, augment=augment,
                                     cache=cache)
        # Past the first epoch (which fills a cache) and with the shuffle buffer and the
        # prefetch full, for both paths alike.
        for _ in range(count // BATCH + 3):
            sess.run(images)
        start = time.time()
        for _ in range(batches):
            sess.run(images)
        return batches * BATCH / (time.time() - start), cache


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--max-threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from lmtcnn.tfcompat import VERSION

    work = tempfile.mkdtemp(prefix="lmtcnn-bench-")
    synthesize(os.path.join(work, "raw"), per_fold=80, seed=0)
    prepare(os.path.join(work, "raw"), os.path.join(work, "data"), workers=args.max_threads)
    files, count = split_files(os.path.join(work, "data"), 0, "train")

    configs = [(augment, threads, path) for augment in (False, True) for threads in range(1, args.max_threads + 1)
               for path in PATHS]
    rates, kinds = {c: [] for c in configs}, {}
    for _ in range(args.rounds):
        for c in configs:
            rate, kinds[c] = images_per_s(files, count, c[0], c[1], c[2], args.batches)
            rates[c].append(rate)
    median = {c: statistics.median(r) for c, r in rates.items()}

    print("TensorFlow %s, input pipeline only, batch %d, %dx%d, %d training images, %d timed batches, "
          "median of %d rounds, %d cores here" % (VERSION, BATCH, SIZE, SIZE, count, args.batches, args.rounds,
                                                   os.cpu_count()))
    print("%-8s %7s %-14s %10s %10s %10s" % ("augment", "threads", "auto caches", "off img/s", "auto img/s",
                                            "auto/off"))
    for augment in (False, True):
        for threads in range(1, args.max_threads + 1):
            off, auto = median[(augment, threads, "off")], median[(augment, threads, "auto")]
            print("%-8s %7d %-14s %10.1f %10.1f %10.2f" % ("authors" if augment else "none", threads,
                                                          kinds[(augment, threads, "auto")], off, auto, auto / off))
    top = args.max_threads
    if top > 1:
        print("\nscaling, %d threads / 1:" % top)
        for augment in (False, True):
            print("  augment %-8s off %.2f  auto %.2f" % ("authors" if augment else "none", *[
                median[(augment, top, p)] / median[(augment, 1, p)] for p in PATHS]))
    print("\ncores (decoding threads) to feed an accelerator, at the 1-thread rate scaled linearly:")
    for accelerator, need in ACCELERATORS:
        print("  %-11s %5.0f images/s: %s" % (accelerator, need, ", ".join(
            "augment %s %s %d" % ("authors" if augment else "none", path,
                                  math.ceil(need / median[(augment, 1, path)]))
            for augment in (False, True) for path in PATHS)))


if __name__ == "__main__":
    main()
