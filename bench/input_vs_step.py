"""Is the input pipeline or the network step the bottleneck of a fold on this machine?

Measures, in one process and one run (this machine is noisy: compare the ratios):
  pipeline   batches/s of decode + augment + batch alone (no network)
  step-fixed training steps/s on one batch held in memory (no input pipeline)
  step-full  training steps/s fed by the pipeline, as `lmtcnn.train` runs
for LMTCNN-1-1 at the paper's 227x227 input, batch 32, on the CPU.

  python bench/input_vs_step.py [--steps 30] [--threads 2]
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lmtcnn.config import Config, build_config  # noqa: E402
from lmtcnn.prepare import prepare, split_files  # noqa: E402
from lmtcnn.synth import synthesize  # noqa: E402


def rate(run, steps, warmup=3):
    for _ in range(warmup):  # the first runs include graph optimisation
        run()
    start = time.time()
    for _ in range(steps):
        run()
    return steps / (time.time() - start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model-type", default="LMTCNN-1-1")
    args = parser.parse_args()

    from lmtcnn.device import session_config
    from lmtcnn.graph import build_training_graph
    from lmtcnn.input_pipeline import train_batches
    from lmtcnn.tfcompat import VERSION, tf

    work = tempfile.mkdtemp(prefix="lmtcnn-bench-")
    synthesize(os.path.join(work, "raw"), per_fold=80, seed=0)
    prepare(os.path.join(work, "raw"), os.path.join(work, "data"), workers=args.threads)
    config = build_config({"data": {"data_dir": os.path.join(work, "data")},
                           "model": {"type": args.model_type},
                           "train": {"device": "cpu", "preprocess_threads": args.threads,
                                     "cpu_threads": args.threads, "shuffle_buffer": 256}}, Config)
    files, _ = split_files(config.data.data_dir, 0, "train")
    batch = config.train.batch_size
    tf_config = session_config("cpu", args.threads)

    with tf.Graph().as_default(), tf.Session(config=tf_config) as sess:
        images, _, _ = train_batches(files, batch, 227, threads=args.threads)
        pipeline = rate(lambda: sess.run(images), args.steps)

    graph = build_training_graph(config, files, 256)
    with graph.tf_graph.as_default(), tf.Session(config=tf_config) as sess:
        sess.run(tf.global_variables_initializer())
        full = rate(lambda: sess.run([graph.step_after, graph.loss]), args.steps)
        # The same step with the pipeline's output fed from memory: feeding a tensor
        # replaces the iterator output, so no decoding runs.
        inputs = graph.tf_graph.get_tensor_by_name("IteratorGetNext:0")
        held = sess.run(inputs)
        fixed = rate(lambda: sess.run([graph.step_after, graph.loss], {inputs: held}), args.steps)

    print("TensorFlow %s, %s, batch %d, 227x227, %d threads, %d timed steps each" % (
        VERSION, args.model_type, batch, args.threads, args.steps))
    print("%-11s %8s %10s" % ("measure", "batch/s", "images/s"))
    for name, value in (("pipeline", pipeline), ("step-fixed", fixed), ("step-full", full)):
        print("%-11s %8.2f %10.1f" % (name, value, value * batch))
    print("pipeline / step-fixed = %.2f (above 1: the network, not the input, bounds a fold)" % (pipeline / fixed))
    print("step-full / step-fixed = %.2f (the cost of sharing cores with the pipeline)" % (full / fixed))


if __name__ == "__main__":
    main()
