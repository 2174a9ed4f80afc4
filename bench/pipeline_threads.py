"""How many input threads (and CPUs) does a fold need to keep an accelerator fed?

Measures, in one process and one run, the training input pipeline alone (read records,
decode the 256x256 JPEG, make the training view, batch 32) at 227x227 for both
`train.augment` settings and 1..N decoding threads, then divides the accelerators'
published rates by the per-thread rate:

  Ascend NPU  0.04 s a batch of 128 (the seed's performance script)  = 3,200 images/s
  V100        0.084 s a batch of 128                                  = 1,524 images/s

  python bench/pipeline_threads.py [--batches 40] [--max-threads 2]
"""

import argparse
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lmtcnn.prepare import prepare, split_files  # noqa: E402
from lmtcnn.synth import synthesize  # noqa: E402

BATCH = 32
ACCELERATORS = (("Ascend NPU", 128 / 0.04), ("V100", 128 / 0.084))


def images_per_s(files, augment, threads, batches):
    from lmtcnn.device import session_config
    from lmtcnn.input_pipeline import train_batches
    from lmtcnn.tfcompat import tf

    with tf.Graph().as_default(), tf.Session(config=session_config("cpu", threads)) as sess:
        images, _, _ = train_batches(files, BATCH, 227, shuffle_buffer=256, threads=threads, augment=augment)
        for _ in range(5):  # fill the shuffle buffer and the prefetch first
            sess.run(images)
        start = time.time()
        for _ in range(batches):
            sess.run(images)
        return batches * BATCH / (time.time() - start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--max-threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    from lmtcnn.tfcompat import VERSION

    work = tempfile.mkdtemp(prefix="lmtcnn-bench-")
    synthesize(os.path.join(work, "raw"), per_fold=80, seed=0)
    prepare(os.path.join(work, "raw"), os.path.join(work, "data"), workers=args.max_threads)
    files, _ = split_files(os.path.join(work, "data"), 0, "train")

    print("TensorFlow %s, input pipeline only, batch %d, 227x227, %d timed batches each, %d cores here"
          % (VERSION, BATCH, args.batches, os.cpu_count()))
    print("%-8s %7s %10s %17s" % ("augment", "threads", "images/s", "images/s/thread"))
    per_thread = {}
    for augment in (False, True):
        name = "authors" if augment else "none"
        for threads in range(1, args.max_threads + 1):
            rate = images_per_s(files, augment, threads, args.batches)
            per_thread[name] = rate / threads if threads == 1 else per_thread[name]
            print("%-8s %7d %10.1f %17.1f" % (name, threads, rate, rate / threads))
    print("\nthreads to feed an accelerator at the 1-thread rate (linear scaling assumed past %d):"
          % args.max_threads)
    for accelerator, rate in ACCELERATORS:
        print("  %-11s %5.0f images/s: augment none %d, authors %d" % (
            accelerator, rate, math.ceil(rate / per_thread["none"]), math.ceil(rate / per_thread["authors"])))


if __name__ == "__main__":
    main()
