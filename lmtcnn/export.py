"""`python -m lmtcnn export`: a trained fold as files a phone or an Ascend chip can run.

Written into --out (the graph: lmtcnn.serving; input `image` uint8 [N, S, S, 3] RGB,
outputs `age_probs` [N, 8] and `gender_probs` [N, 2]):
  lmtcnn.pb           frozen graph (N free): TensorFlow, and Ascend's ATC makes an .om of it
  lmtcnn.tflite       TFLite float32 (N = 1)
  lmtcnn-int8.tflite  TFLite, the network in int8 weights and activations (N = 1),
                      calibrated on the fold's own training images; the standardisation
                      and LRN stay float32 (FLOAT_IN_INT8); TensorFlow 2 only (INT8_NOTE)
  savedmodel/         a SavedModel with a serving signature, on request
  export.json         sizes, latencies, the parity check and the ATC command

Every export checks each format against the checkpoint run in TensorFlow, on the fold's
first test images: float formats may differ by at most FLOAT_TOLERANCE in any
probability; int8 must pick the same top-1 age group and gender on INT8_AGREEMENT of the
images. Int8 softmax outputs come in steps of 1/256, so where the checkpoint's two best
classes are closer than that step int8 cannot tell them apart; such ties are counted and
printed beside the agreement, for the reader, but the rule counts them as disagreements.
"""

import glob
import os
import platform
import shutil
import statistics
import sys
import time

import numpy as np

from lmtcnn.adience import AGE_GROUPS, GENDERS
from lmtcnn.errors import UserError
from lmtcnn.files import write_bytes_atomic, write_json_atomic
from lmtcnn.serving import INPUT, OUTPUTS

FILES = {"frozen": "lmtcnn.pb", "tflite": "lmtcnn.tflite", "tflite-int8": "lmtcnn-int8.tflite",
         "savedmodel": "savedmodel"}
DEFAULT_FORMATS = ("frozen", "tflite", "tflite-int8")
FLOAT_TOLERANCE = 1e-4
INT8_AGREEMENT = 0.97
INT8_STEP = 1.0 / 256
PARITY_IMAGES = 256
CALIBRATION_IMAGES = 100
LATENCY_RUNS = 50
# The per-image standardisation's ops stay float32 in the int8 model: TFLite's int8 DIV
# aborts when the divisor's raw byte is 0, a valid value whenever its zero point is not
# (one synthetic test face in 114 hit it, its standard deviation falling on that byte).
# They are a few cheap ops on the input; in LMTCNN these op types occur nowhere else
# (batch norm folds into MUL and ADD). TFLite has no int8 LRN either: it stays float too.
FLOAT_IN_INT8 = ("MEAN", "SUB", "SQUARED_DIFFERENCE", "SQRT", "MAXIMUM", "DIV")
INT8_NOTE = ("TensorFlow 1.15's post-training quantizer has no int8 kernel for the in-graph standardisation "
             "(SQUARE) and, told to leave such ops in float, writes a model that fails to load; export "
             "tflite-int8 with TensorFlow 2 (the tf2 lane) from the same fold directory")
TABLE_ROW = "{:<12} {:<19} {:>9} {:>9}  {:>8} {:>8}  {:>7} {:>7}  {:>7} {:>7}  {}"
TABLE_GROUPS = "{:<12} {:<19} {:>9} {:>9}  {:^17}  {:^15}  {:^15}  {}"
ATC = ('atc --model={model} --framework=3 --input_format=NHWC --input_shape="{input}:1,{size},{size},3" '
       '--out_nodes="{outputs}" --output={output} --soc_version=Ascend310')


def int8_supported():
    from lmtcnn.tfcompat import VERSION

    return not VERSION.startswith("1.")


def parse_formats(text):
    """(formats, notes) from --format's comma list; None gives the defaults this
    TensorFlow can make. UserError for an unknown name or int8 on TensorFlow 1."""
    if text is None:
        if int8_supported():
            return list(DEFAULT_FORMATS), []
        return [f for f in DEFAULT_FORMATS if f != "tflite-int8"], ["tflite-int8 not made: " + INT8_NOTE]
    formats = []
    for name in (part.strip() for part in text.split(",")):
        if name not in FILES:
            raise UserError("--format %s: unknown format; choose from %s" % (name, ",".join(FILES)))
        if name == "tflite-int8" and not int8_supported():
            raise UserError("--format tflite-int8: " + INT8_NOTE)
        if name not in formats:
            formats.append(name)
    return formats, []


def export(trained, out_dir, formats, parity_images=PARITY_IMAGES, calibration_images=CALIBRATION_IMAGES,
           latency_runs=LATENCY_RUNS, threads=1):
    """Write `formats` of `trained` (lmtcnn.trained_fold.TrainedFold, its fold known) into
    `out_dir`, check and time each; returns the report (also written as export.json)."""
    from lmtcnn.inference import checkpoint_model

    images, ages, genders = _fold_images(trained, "test", parity_images)
    calibration = _fold_images(trained, "train", calibration_images)[0] if "tflite-int8" in formats else None
    paths = {name: os.path.join(out_dir, FILES[name]) for name in formats}
    reference = checkpoint_model(trained.config.model, trained.checkpoint, threads, what="--checkpoint")
    try:
        os.makedirs(out_dir, exist_ok=True)
        _write(reference, paths, trained, threads, calibration)
        expected = reference.predict(images)
        rows = [_measure("checkpoint", trained.checkpoint, reference, images, (ages, genders), latency_runs)]
    finally:
        reference.close()
    for name in formats:
        model = _open(name, paths[name], threads)
        try:
            rows.append(_measure(name, paths[name], model, images, (ages, genders), latency_runs, expected))
        finally:
            model.close()
    report = _report(trained, reference.naming, rows, len(images), latency_runs, threads)
    if "frozen" in paths:
        report["atc"] = atc_command(paths["frozen"], trained.config.model.image_size)
    write_json_atomic(os.path.join(out_dir, "export.json"), report)
    return report


def _report(trained, naming, rows, images, latency_runs, threads):
    from lmtcnn.tfcompat import VERSION

    size = trained.config.model.image_size
    return {
        "source": {"checkpoint": trained.checkpoint, "naming": naming, "config": trained.config_path,
                   "fold": trained.fold, "model_type": trained.config.model.type, "image_size": size},
        "tensorflow": VERSION, "cpu": cpu_name(), "threads": threads, "latency_runs": latency_runs,
        "input": {"name": INPUT, "dtype": "uint8", "shape": ["N", size, size, 3], "channels": "RGB"},
        "outputs": {OUTPUTS[0]: list(AGE_GROUPS), OUTPUTS[1]: list(GENDERS)},
        "parity": {"split": "test", "images": int(images), "float_tolerance": FLOAT_TOLERANCE,
                   "int8_min_agreement": INT8_AGREEMENT, "int8_tie": INT8_STEP},
        # One image at a time has no batch to normalise with: the serving graph always uses
        # the moving averages, whatever eval.batch_norm scored the run's own tables.
        "batch_norm": "moving averages",
        "formats": rows,
        "passed": all(row.get("passed", True) for row in rows),
    }


def _fold_images(trained, role, limit):
    """The fold's first `limit` images of `role` as model inputs, with their labels."""
    from lmtcnn.input_pipeline import input_images
    from lmtcnn.prepare import load_manifest, split_files

    data_dir = trained.config.data.data_dir
    stored_size = load_manifest(data_dir)["image_size"]
    files, count = split_files(data_dir, trained.fold, role)
    if count == 0:
        raise UserError("%s: fold %d has no %s images to check the export with" % (data_dir, trained.fold, role))
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise UserError("%s: fold %d %s data missing (%s); prepare the data again, or pass --set "
                        "data.data_dir=DIR" % (data_dir, trained.fold, role, missing[0]))
    return input_images(files, trained.config.model.image_size, min(limit, count), stored_size)


def _write(reference, paths, trained, threads, calibration):
    from lmtcnn.inference import checkpoint_model

    if "frozen" in paths:
        write_bytes_atomic(paths["frozen"], frozen_graph_def(reference).SerializeToString())
    if "savedmodel" in paths:
        _write_saved_model(reference, paths["savedmodel"])
    tflite = [name for name in ("tflite", "tflite-int8") if name in paths]
    if tflite:
        # TFLite wants a static batch: the same network, restored again with N = 1.
        single = checkpoint_model(trained.config.model, trained.checkpoint, threads, batch_size=1)
        try:
            for name in tflite:
                write_bytes_atomic(paths[name], _tflite(single, calibration if name == "tflite-int8" else None))
        finally:
            single.close()


def frozen_graph_def(model):
    """The session's inference graph with its variables turned into constants."""
    from lmtcnn.tfcompat import tf

    graph_def = tf.graph_util.convert_variables_to_constants(model.sess, model.sess.graph.as_graph_def(),
                                                             list(OUTPUTS))
    return _without_assertions(graph_def)


def _without_assertions(graph_def):
    """TF 1.15's per-image standardisation asserts at run time that a batch of unknown size
    holds 3-D images; the placeholder's shape already guarantees it, and Assert ops are
    only in the way of converters (ATC). TensorFlow 2 adds none."""
    from lmtcnn.tfcompat import tf

    asserts = {node.name for node in graph_def.node if node.op == "Assert"}
    if not asserts:
        return graph_def
    for node in graph_def.node:
        kept = [name for name in node.input if name.lstrip("^") not in asserts]
        del node.input[:]
        node.input.extend(kept)
    return tf.graph_util.extract_sub_graph(graph_def, list(OUTPUTS))


def _write_saved_model(model, path):
    from lmtcnn.tfcompat import tf

    # The builder refuses an existing directory: build beside it, then swap it in.
    staging = path + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    with model.sess.graph.as_default():
        tf.saved_model.simple_save(model.sess, staging, inputs={INPUT: model.image},
                                   outputs=dict(zip(OUTPUTS, model.outputs)))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(staging, path)


def _tflite(model, calibration=None):
    """A TFLite flatbuffer of a batch-1 session model: float32, or int8 calibrated on
    `calibration` (uint8 images)."""
    from lmtcnn.inference import tflite_deprecation_quiet
    from lmtcnn.tfcompat import tf

    _toco_on_path()
    with model.sess.graph.as_default():
        converter = tf.lite.TFLiteConverter.from_session(model.sess, [model.image], model.outputs)
    if calibration is None:
        # TF 1.15's converter takes a uint8 input only as a quantized one: mean 0, std 1
        # make its real value the byte itself, which is what the graph's cast reads.
        converter.inference_input_type = tf.uint8
        converter.quantized_input_stats = {INPUT: (0.0, 1.0)}
        return converter.convert()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = tf.lite.RepresentativeDataset(lambda: ([image[None]] for image in calibration))
    # Selective quantization (TensorFlow's documented way): everything int8 but the
    # standardisation, see FLOAT_IN_INT8.
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(FLOAT_IN_INT8))
    with tflite_deprecation_quiet():  # the debugger opens an interpreter of its own
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_options=options)
    return debugger.get_nondebug_quantized_model()


def _toco_on_path():
    """TF 1.15's converter runs the `toco_from_protos` script its wheel installed beside
    the interpreter; a virtual environment used without activating it lacks that on PATH."""
    scripts = os.path.dirname(sys.executable)
    if shutil.which("toco_from_protos") is None and os.path.isfile(os.path.join(scripts, "toco_from_protos")):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")


def _open(name, path, threads):
    from lmtcnn.inference import TFLiteModel, frozen_graph_model, saved_model

    if name == "savedmodel":
        return saved_model(path, threads)
    if name == "frozen":
        return frozen_graph_model(path, threads)
    return TFLiteModel(path, threads)


def _measure(name, path, model, images, labels, runs, expected=None):
    """The format's row: size, latency, accuracy on the images' labels and, against the
    checkpoint's `expected` probabilities, the parity check."""
    outputs = model.predict(images)
    row = {"format": name, "path": path, "bytes": _bytes(path), "latency_ms": _latency_ms(model, images[:1], runs),
           "age_accuracy": _accuracy(outputs[0], labels[0]), "gender_accuracy": _accuracy(outputs[1], labels[1])}
    if expected is not None:
        row.update(_parity(name, expected, outputs))
    return row


def _latency_ms(model, image, runs):
    """Median wall time of one single-image prediction, after one untimed run (which
    builds what later runs reuse)."""
    model.predict(image)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.predict(image)
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 3)


def _parity(name, expected, outputs):
    checks = {task: _agreement(want, got) for task, want, got in zip(("age", "gender"), expected, outputs)}
    if name == "tflite-int8":
        passed = all(c["top1_agreement"] >= INT8_AGREEMENT for c in checks.values())
    else:
        passed = all(c["max_abs_diff"] <= FLOAT_TOLERANCE for c in checks.values())
    return dict(checks, passed=passed)


def _agreement(want, got):
    """How probabilities `got` [n, k] follow the checkpoint's `want`."""
    same = got.argmax(1) == want.argmax(1)
    # A tie: the class `got` picks is within one int8 output step of the checkpoint's best.
    picked = want[np.arange(len(want)), got.argmax(1)]
    tied = ~same & (want.max(1) - picked < INT8_STEP)
    return {"max_abs_diff": float(np.abs(want - got).max()), "top1_agreement": float(same.mean()),
            "ties": int(tied.sum()), "top1_agreement_with_ties": float((same | tied).mean())}


def _accuracy(probs, labels):
    return float((probs.argmax(1) == labels).mean())


def _bytes(path):
    """Size on disk of a file, a directory, or a checkpoint prefix (its .index and .data files)."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(base, f)) for base, _, files in os.walk(path) for f in files)
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(p) for p in glob.glob(glob.escape(path) + ".data-*") + [path + ".index"])


def atc_command(pb_path, image_size):
    """The ATC command line that makes an Ascend offline model (.om) of the frozen graph."""
    return ATC.format(model=pb_path, input=INPUT, size=image_size, outputs=";".join(n + ":0" for n in OUTPUTS),
                      output=os.path.splitext(pb_path)[0])


def cpu_name():
    try:
        with open("/proc/cpuinfo", "r") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_report(report, notes=()):
    """The table, the ties counted, the ATC command and `notes`, as printed lines."""
    source, parity = report["source"], report["parity"]
    lines = ["%s %dx%d, fold %s, checkpoint %s (%s names); TensorFlow %s" % (
                 source["model_type"], source["image_size"], source["image_size"], source["fold"],
                 source["checkpoint"], source["naming"], report["tensorflow"]),
             "checked on the first %d test images; latency: median of %d single-image runs, %d thread(s), %s" % (
                 parity["images"], report["latency_runs"], report["threads"], report["cpu"]),
             TABLE_GROUPS.format("format", "file", "size", "latency", "max |dp|", "same top-1", "accuracy", "check"),
             TABLE_ROW.format("", "", "", "", "age", "gender", "age", "gender", "age", "gender", "").rstrip()]
    for row in report["formats"]:
        checked = row["format"] != "checkpoint"
        lines.append(TABLE_ROW.format(
            row["format"], os.path.basename(row["path"].rstrip(os.sep)), "%.2f MB" % (row["bytes"] / 1e6),
            "%.2f ms" % row["latency_ms"],
            *(["%.1e" % row[task]["max_abs_diff"] for task in ("age", "gender")] if checked else ["-", "-"]),
            *(["%.1f%%" % (100 * row[task]["top1_agreement"]) for task in ("age", "gender")] if checked
              else ["-", "-"]),
            "%.1f%%" % (100 * row["age_accuracy"]), "%.1f%%" % (100 * row["gender_accuracy"]),
            _verdict(row) if checked else "reference"))
    for row in report["formats"][1:]:  # after the checkpoint's own row
        ties = [(task, row[task]) for task in ("age", "gender") if row[task]["ties"]]
        if ties:
            lines.append("%s: %s within 1/256 of the checkpoint's best class, (%s)" % (
                row["format"], " and ".join("%d %s" % (c["ties"], task) for task, c in ties),
                ", ".join("%s %.1f%% with ties" % (task, 100 * c["top1_agreement_with_ties"]) for task, c in ties)))
    if "atc" in report:
        lines += ["Ascend offline model (on a host with CANN; --soc_version is your chip, as `npu-smi info` "
                  "names it):", "  " + report["atc"]]
    return "\n".join(lines + list(notes))


def failures(report):
    """One sentence per format that failed its check."""
    out = []
    for row in report["formats"][1:]:
        if row["passed"]:
            continue
        if row["format"] == "tflite-int8":
            out.append("%s picks the checkpoint's top-1 on %.1f%% of age and %.1f%% of gender predictions, under "
                       "the %.0f%% required" % (row["format"], 100 * row["age"]["top1_agreement"],
                                                100 * row["gender"]["top1_agreement"], 100 * INT8_AGREEMENT))
        else:
            out.append("%s differs from the checkpoint by up to %.2g in an age and %.2g in a gender probability, "
                       "over the %.0e allowed" % (
                           row["format"], row["age"]["max_abs_diff"], row["gender"]["max_abs_diff"], FLOAT_TOLERANCE))
    return out


def _verdict(row):
    rule = (">= %.0f%% same top-1" % (100 * INT8_AGREEMENT) if row["format"] == "tflite-int8"
            else "<= %.0e" % FLOAT_TOLERANCE)
    return "%s (%s)" % ("ok" if row["passed"] else "FAILED", rule)
