"""How fast is one training step of a fold, against the reference's way of training?

LMTCNN at the paper's 227x227 input, batch 32, on the CPU, in one run (this machine is
shared and noisy: read the ratios). Variants, timed alternately in rounds in one process:

  baseline       the reference's way: the input batch is fetched by its own
                 `session.run` from the input pipeline, then fed through placeholders
                 (feed_dict) into the train op. `baseline train op` is the second run
                 alone: the train op with its feed.
  ours           a fold's step as lmtcnn.train runs it: the train op reads the input
                 pipeline's iterator inside the graph, the pipeline overlaps the step.
  ours step      the same train op on one batch held in variables: no iterator runs and
                 nothing is fed, so this is the step alone. `ours step, TF ops` (or
                 `cpu_ops`) the same with the other choice of lmtcnn.graph's cpu_ops
                 (LRN as a matmul, fused BN), `cpu_ops ... BN` with the other BN kernel.
  ours bf16      `ours` with Grappler's oneDNN bfloat16 rewrite (TF builds that know it).
  ours no-grappler  `ours` with Grappler's graph rewrites off.

Every variant is the same network, loss and optimizer (lmtcnn.graph). Also measured in
the same run: TF's float32 (and bfloat16, where it runs) matmul rate, the floor a step's
FLOPs could reach; the FLOPs of a step (tf.profiler's float_ops on the forward graph,
times 3 for the two gradients of every conv and matmul, less conv1's input gradient,
which training never computes); a profile of the step by op (RunMetadata FULL_TRACE);
the peak RSS of a process training a fold the two ways; TensorFlow's thread settings
(separate processes: TF creates its thread pools once per process).

  python bench/step_speed.py [--steps 10] [--rounds 3] [--threads 2] [--rss-steps 20]
  python bench/step_speed.py --versus /tmp/venv-mkl/bin/python   # another TF build, alternated
"""

import argparse
import collections
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lmtcnn.config import Config, build_config  # noqa: E402

BATCH = 32
SIDE = 227
MATMUL_N = 2048


def bench_config(data_dir, threads, model_type="LMTCNN-1-1"):
    # As a fold trains: the authors' augmentation, default shuffle buffer, no evaluation.
    return build_config({"data": {"data_dir": data_dir}, "model": {"type": model_type},
                         "train": {"device": "cpu", "preprocess_threads": threads, "cpu_threads": threads}}, Config)


def make_data(threads):
    from lmtcnn.prepare import prepare
    from lmtcnn.synth import synthesize

    work = tempfile.mkdtemp(prefix="lmtcnn-step-")
    synthesize(os.path.join(work, "raw"), per_fold=80, seed=0)
    prepare(os.path.join(work, "raw"), os.path.join(work, "data"), workers=threads)
    return os.path.join(work, "data")


def tf_session_config(threads, intra=None, inter=None, rewrite=None):
    from lmtcnn.device import session_config

    config = session_config("cpu", threads)
    if intra is not None:
        config.intra_op_parallelism_threads = intra
    if inter is not None:
        config.inter_op_parallelism_threads = inter
    if rewrite:
        rewrite(config.graph_options.rewrite_options)
    return config


# --- the variants ----------------------------------------------------------------------

class Variant:
    """A graph and its session; `step()` runs one training step, returning the seconds of
    its parts when they are timed apart."""

    def __init__(self, name):
        self.name = name
        self.seconds = []  # whole steps
        self.parts = collections.defaultdict(list)

    def timed(self, steps):
        for _ in range(steps):
            start = time.time()
            parts = self.step() or {}
            self.seconds.append(time.time() - start)
            for key, value in parts.items():
                self.parts[key].append(value)


def held_batch(files, config, threads):
    """One training batch of the pipeline, as numpy arrays."""
    from lmtcnn.input_pipeline import train_batches
    from lmtcnn.tfcompat import tf

    with tf.Graph().as_default(), tf.Session(config=tf_session_config(threads)) as sess:
        return sess.run(train_batches(files, BATCH, SIDE, shuffle_buffer=256, threads=threads))


class Baseline(Variant):
    """The reference's loop: fetch the batch, then feed it to the train op."""

    def __init__(self, config, files, tf_config):
        super().__init__("baseline")
        from lmtcnn.graph import build_training_graph
        from lmtcnn.input_pipeline import train_batches
        from lmtcnn.tfcompat import tf

        self.inputs = []

        def placeholders():
            self.inputs = [tf.placeholder(tf.float32, [BATCH, SIDE, SIDE, 3]), tf.placeholder(tf.int64, [BATCH]),
                           tf.placeholder(tf.int64, [BATCH])]
            return tuple(self.inputs)

        self.graph = build_training_graph(config, files, 256, inputs=placeholders)
        tc = config.train
        with self.graph.tf_graph.as_default():
            self.batch = train_batches(files, BATCH, SIDE, 256, tc.shuffle_buffer, tc.preprocess_threads,
                                       augment=True)
            self.sess = tf.Session(config=tf_config)
            self.sess.run(tf.global_variables_initializer())

    def step(self, options=None, metadata=None):
        start = time.time()
        batch = self.sess.run(self.batch)
        fetched = time.time()
        self.sess.run([self.graph.step_after, self.graph.loss], dict(zip(self.inputs, batch)),
                      options=options, run_metadata=metadata)
        return {"train op": time.time() - fetched, "fetch": fetched - start}


class Ours(Variant):
    """A fold's step (lmtcnn.train's fetches), or with `held` the step on a batch held in
    variables (no iterator, no feed)."""

    def __init__(self, name, config, files, tf_config, held=None, cpu_ops=None, flip_fused=False):
        super().__init__(name)
        from lmtcnn import graph as graphs
        from lmtcnn.graph import build_training_graph

        if cpu_ops is None:  # what a CPU fold trains with on this TF
            cpu_ops = graphs.CPU_OPS_FOR_FOLDS
        from lmtcnn.tfcompat import tf

        inputs = None
        if held is not None:
            def inputs():
                # Local variables: not in the savers, loaded once below.
                return tuple(tf.get_variable("held_%d" % i, value.shape, tf.as_dtype(value.dtype), trainable=False,
                                             initializer=tf.zeros_initializer(),
                                             collections=[tf.GraphKeys.LOCAL_VARIABLES])
                             for i, value in enumerate(held))
        fused = graphs.FUSED_BN_ON_CPU
        graphs.FUSED_BN_ON_CPU = fused != flip_fused  # the other batch-norm kernel, for this graph only
        try:
            self.graph = build_training_graph(config, files, 256, inputs=inputs, cpu_ops=cpu_ops)
        finally:
            graphs.FUSED_BN_ON_CPU = fused
        with self.graph.tf_graph.as_default():
            self.sess = tf.Session(config=tf_config)
            self.sess.run([tf.global_variables_initializer(), tf.local_variables_initializer()])
            if held is not None:
                for variable, value in zip(tf.local_variables(), held):
                    variable.load(value, self.sess)
        self.fetches = [self.graph.step_after, self.graph.loss, self.graph.learning_rate]

    def step(self, options=None, metadata=None):
        self.sess.run(self.fetches, options=options, run_metadata=metadata)


def bf16_rewrite():
    """Grappler's oneDNN bfloat16 rewrite where this TF has it (TF 2.x), else None."""
    from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig

    for field in ("auto_mixed_precision_onednn_bfloat16", "auto_mixed_precision_mkl"):
        if field in RewriterConfig.DESCRIPTOR.fields_by_name:
            return lambda options: setattr(options, field, RewriterConfig.ON)
    return None


def no_grappler(options):
    options.disable_meta_optimizer = True


# --- floors and FLOPs ------------------------------------------------------------------

def matmul_gflops(tf_config, dtype_name, runs=8):
    """TF's own NxN by NxN matmul rate in GFLOP/s (2 N^3 per product), best of `runs`;
    None when the dtype does not run here."""
    import numpy as np

    from lmtcnn.tfcompat import tf

    dtype = getattr(tf, dtype_name)
    with tf.Graph().as_default():
        a = tf.Variable(tf.random_normal([MATMUL_N, MATMUL_N]))
        b = tf.Variable(tf.random_normal([MATMUL_N, MATMUL_N]))
        # A sum of the product keeps the fetch small; the sum costs N^2, not N^3.
        product = tf.reduce_sum(tf.cast(tf.matmul(tf.cast(a, dtype), tf.cast(b, dtype)), tf.float32))
        with tf.Session(config=tf_config) as sess:
            sess.run(tf.global_variables_initializer())
            try:
                sess.run(product)
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.NotFoundError):
                return None
            best = float("inf")
            for _ in range(runs):
                start = time.time()
                sess.run(product)
                best = min(best, time.time() - start)
    del np
    return 2.0 * MATMUL_N ** 3 / best / 1e9


def step_flops(model_type):
    """(forward FLOPs of a batch, FLOPs of a training step) by tf.profiler's float_ops."""
    from lmtcnn.model import build_lmtcnn
    from lmtcnn.tfcompat import tf

    def float_ops(graph):
        options = tf.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        return tf.profiler.profile(graph, options=options).total_float_ops

    with tf.Graph().as_default() as graph:
        images = tf.placeholder(tf.float32, [BATCH, SIDE, SIDE, 3])
        build_lmtcnn(images, model_type, is_training=True)
        forward = float_ops(graph)
    with tf.Graph().as_default() as graph:
        images = tf.placeholder(tf.float32, [BATCH, SIDE, SIDE, 3])
        kernel = tf.zeros([7, 7, 3, 96])
        tf.nn.conv2d(images, kernel, [1, 4, 4, 1], "VALID")
        conv1 = float_ops(graph)
    # Each conv and matmul has two gradients of its own cost (input and weights); conv1's
    # input gradient is never computed. Elementwise, BN and LRN ops are a rounding error.
    return forward, 3 * forward - conv1


# --- profile ---------------------------------------------------------------------------

def profile(variant, steps=3):
    """{op type: microseconds} summed over `steps` traced steps, and their wall seconds."""
    from lmtcnn.tfcompat import tf

    options = tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE)
    totals = collections.Counter()
    wall = 0.0
    for _ in range(steps):
        metadata = tf.RunMetadata()
        start = time.time()
        variant.step(options=options, metadata=metadata)
        wall += time.time() - start
        for device in metadata.step_stats.dev_stats:
            if "/device:CPU" not in device.device or "stream" in device.device:
                continue
            for node in device.node_stats:
                totals[op_label(node)] += node.all_end_rel_micros
    totals.pop("_SOURCE", None)
    return totals, wall / steps


def op_label(node):
    """'OpType (layer)' from a traced node: the layer is the first network scope in the
    node's name (conv1, separable1/depthwise, fc1, ...), gradients marked as such."""
    match = re.match(r"[^=]*=\s*([A-Za-z0-9_]+)\(", node.timeline_label or "")
    kind = match.group(1) if match else node.node_name.split(":")[0].rsplit("/", 1)[-1]
    name = node.node_name
    layer = re.search(r"lmtcnn/(separable\d/(?:depthwise|pointwise)|[^/]+)", name)
    if layer:
        # Ops made outside a layer's scope are named by their type: pool1, pool2, norm1.
        where = re.sub(r"_grad$", "", layer.group(1))
        where = UNSCOPED.get(where, where)
        if name.startswith("gradients") or "/gradients/" in name:
            where += " grad"
    else:
        where = "input" if "Iterator" in kind else ("weight decay" if "L2Loss" in kind else "other")
    return "%s (%s)" % (kind, where)


UNSCOPED = {"MaxPool": "pool1", "MaxPool_1": "pool2", "LRN": "norm1", "Square": "norm1", "MatMul": "norm1",
            "Reshape": "norm1", "Pow": "norm1", "mul": "norm1", "add": "norm1", "Reshape_1": "norm1"}


# --- processes: threads and peak memory --------------------------------------------------

def child(args):
    """Train a fold the way `args.child` names for `args.rss_steps` steps in this process;
    print its seconds a step and peak RSS as JSON."""
    config = bench_config(args.data_dir, args.threads)
    from lmtcnn.prepare import split_files

    files, _ = split_files(args.data_dir, 0, "train")
    tf_config = tf_session_config(args.threads, args.intra, args.inter)
    variant = Baseline(config, files, tf_config) if args.child == "baseline" else Ours(
        "ours", config, files, tf_config)
    variant.timed(3)
    variant.seconds = []
    variant.timed(args.rss_steps)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    print(json.dumps({"s_per_step": sum(variant.seconds) / len(variant.seconds), "maxrss": rss}))


def run_child(python, args, kind, intra=None, inter=None, steps=None):
    command = [python, os.path.abspath(__file__), "--child", kind, "--data-dir", args.data_dir,
               "--threads", str(args.threads), "--rss-steps", str(steps or args.rss_steps)]
    if intra is not None:
        command += ["--intra", str(intra), "--inter", str(inter)]
    out = subprocess.run(command, stdout=subprocess.PIPE, check=True, universal_newlines=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def version_of(python):
    probe = ("import tensorflow as tf; from tensorflow.python import pywrap_tensorflow as p;"
             "print(tf.__version__, 'MKL' if p.IsMklEnabled() else 'stock')")
    return subprocess.run([python, "-c", probe],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True,
                          universal_newlines=True).stdout.strip()


# --- the report ------------------------------------------------------------------------

def mean(values):
    return sum(values) / len(values)


def versus(args):
    """Both interpreters' fold step, alternated process by process: this Python's TF and
    `args.versus`'s (another build of TF 1.15, e.g. intel-tensorflow)."""
    pythons = [sys.executable, args.versus]
    names = [version_of(p) for p in pythons]
    results = collections.defaultdict(list)
    for _ in range(args.rounds):
        for python, name in zip(pythons, names):
            for kind in ("baseline", "ours"):
                results[(name, kind)].append(run_child(python, args, kind, steps=args.steps)["s_per_step"])
    base = mean(results[(names[0], "baseline")])
    print("\n%d rounds, each a process per (build, variant): %d timed steps after 3 warm-up steps"
          % (args.rounds, args.steps))
    print("%-22s %-9s %9s %9s %22s" % ("TensorFlow", "variant", "s/step", "images/s", "vs first's baseline"))
    for (name, kind), values in results.items():
        print("%-22s %-9s %9.3f %9.1f %21.2fx" % (name, kind, mean(values), BATCH / mean(values), base / mean(values)))
    print("rounds (s/step): " + "; ".join("%s %s %s" % (n, k, " ".join("%.3f" % v for v in vs))
                                          for (n, k), vs in results.items()))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="cpu_threads and preprocess_threads")
    parser.add_argument("--rss-steps", type=int, default=20, help="steps of each peak-memory process")
    parser.add_argument("--model-type", default="LMTCNN-1-1")
    parser.add_argument("--no-processes", action="store_true", help="skip the thread and memory processes")
    parser.add_argument("--versus", help="another Python whose TensorFlow to alternate with this one's")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--intra", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--inter", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.data_dir is None:
        args.data_dir = make_data(args.threads)
    if args.versus:
        return versus(args)

    from lmtcnn.prepare import split_files
    from lmtcnn.tfcompat import VERSION, tf

    try:
        from tensorflow.python import pywrap_tensorflow
        build = "MKL" if pywrap_tensorflow.IsMklEnabled() else "stock"
    except (ImportError, AttributeError):
        build = "?"
    config = bench_config(args.data_dir, args.threads, args.model_type)
    files, _ = split_files(args.data_dir, 0, "train")
    tf_config = tf_session_config(args.threads)

    from lmtcnn.graph import CPU_OPS_FOR_FOLDS, FUSED_BN_ON_CPU

    held = held_batch(files, config, args.threads)
    variants = [Baseline(config, files, tf_config), Ours("ours", config, files, tf_config),
                Ours("ours step", config, files, tf_config, held=held),
                Ours("ours step, %s" % ("TF ops" if CPU_OPS_FOR_FOLDS else "cpu_ops"), config, files, tf_config,
                     held=held, cpu_ops=not CPU_OPS_FOR_FOLDS),
                Ours("ours step, cpu_ops %s BN" % ("moments" if FUSED_BN_ON_CPU else "fused"), config, files,
                     tf_config, held=held, cpu_ops=True, flip_fused=True),
                Ours("ours no-grappler", config, files, tf_session_config(args.threads, rewrite=no_grappler))]
    bf16 = bf16_rewrite()
    if bf16:
        variants.append(Ours("ours bf16", config, files, tf_session_config(args.threads, rewrite=bf16)))
    for variant in variants:
        variant.timed(3)  # graph optimisation and the pipeline's first fill
        variant.seconds, variant.parts = [], collections.defaultdict(list)
    ratios = collections.defaultdict(list)
    for _ in range(args.rounds):
        for variant in variants:
            before = len(variant.seconds)
            variant.timed(args.steps)
            ratios[variant.name].append(mean(variant.seconds[before:]))
    # Per-round ratios against the baseline of the same round: the machine's load changes
    # between rounds, less so within one.
    baseline_rounds = ratios["baseline"]

    fp32 = matmul_gflops(tf_config, "float32")
    bf16_matmul = matmul_gflops(tf_config, "bfloat16")
    forward, flops = step_flops(args.model_type)
    floor = flops / (fp32 * 1e9)

    print("TensorFlow %s (%s), %s, batch %d, %dx%d, cpu_threads %d, %d rounds of %d timed steps per variant "
          "after 3 warm-up steps, %d cores here" % (VERSION, build, args.model_type, BATCH, SIDE, SIDE,
                                                    args.threads, args.rounds, args.steps, os.cpu_count()))
    print("matmul %d^3: float32 %.0f GFLOP/s, bfloat16 %s" % (
        MATMUL_N, fp32, "%.0f GFLOP/s" % bf16_matmul if bf16_matmul else "does not run"))
    print("FLOPs: forward %.2f G a batch (tf.profiler float_ops), step %.2f G (3x forward less conv1's input "
          "gradient); float32 floor %.3f s a step" % (forward / 1e9, flops / 1e9, floor))
    print("\n%-19s %8s %9s %14s %14s" % ("variant", "s/step", "images/s", "vs baseline", "vs fp32 floor"))
    rows = [(v.name, mean(v.seconds), [b / s for b, s in zip(baseline_rounds, ratios[v.name])]) for v in variants]
    base = variants[0]
    rows.insert(1, ("baseline train op", mean(base.parts["train op"]), None))
    for name, seconds, vs in rows:
        print("%-19s %8.3f %9.1f %14s %13.1fx" % (name, seconds, BATCH / seconds,
                                                 "%.2fx" % mean(vs) if vs else "-", seconds / floor))
    print("(vs baseline: the mean over rounds of baseline s/step over the variant's, each round on its own; "
          "baseline fetch %.3f s a step)" % mean(base.parts["fetch"]))
    print("rounds (s/step): " + "; ".join("%s %s" % (n, " ".join("%.3f" % s for s in r)) for n, r in ratios.items()))

    for variant, title in ((variants[2], "ours step (batch held in variables)"),
                           (variants[0], "baseline (its train op run, fed)")):
        totals, wall = profile(variant)
        whole = sum(totals.values())
        print("\nprofile of %s: 3 traced steps, %.3f s a step traced; op time summed over both threads"
              % (title, wall))
        print("%-52s %9s %7s" % ("op (layer)", "ms/step", "share"))
        for label, micros in totals.most_common(12):
            print("%-52s %9.1f %6.1f%%" % (label, micros / 3e3, 100.0 * micros / whole))
        print("%-52s %9.1f %6.1f%%" % ("all ops", whole / 3e3, 100.0))
    for variant in variants:
        variant.sess.close()

    if args.no_processes:
        return
    # Thread pools are per process (the first session sets them): one process per setting.
    settings = [(args.threads, args.threads), (args.threads, 1), (1, args.threads)]
    memory = collections.defaultdict(list)
    threads = collections.defaultdict(list)
    for kind in ("baseline", "ours"):  # peak memory hardly varies between runs: one process each
        memory[kind].append(run_child(sys.executable, args, kind)["maxrss"])
    for _ in range(2):
        for intra, inter in settings[1:]:
            threads[(intra, inter)].append(run_child(sys.executable, args, "ours", intra, inter,
                                                     steps=args.steps)["s_per_step"])
        threads[settings[0]].append(run_child(sys.executable, args, "ours", *settings[0],
                                              steps=args.steps)["s_per_step"])
    print("\npeak RSS of a process training %d steps after 3 warm-up steps:" % args.rss_steps)
    for kind, values in memory.items():
        print("  %-9s %s GiB" % (kind, " ".join("%.2f" % (v / 2 ** 30) for v in values)))
    print("  ours / baseline %.2f" % (mean(memory["ours"]) / mean(memory["baseline"])))
    print("\nours by TF thread setting (a process each, 2 rounds, %d timed steps):" % args.steps)
    first = mean(threads[settings[0]])
    for (intra, inter), values in threads.items():
        print("  intra %d inter %d: %.3f s/step (%s) %.2fx of intra %d inter %d" % (
            intra, inter, mean(values), " ".join("%.3f" % v for v in values), first / mean(values), *settings[0]))
    del tf


if __name__ == "__main__":
    main()
