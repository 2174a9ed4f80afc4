"""One trained fold, laid out as a scheduler run leaves it, and its export: conftest's
session fixture `exported` makes it once, shared by test_export.py and test_predict.py
(training and exporting are the slow part of both).

  <tmp>/run/config.yaml       the run's configuration (with its scheduler section)
  <tmp>/run/fold_1/           final/model.ckpt, checkpoints/, metrics.json (lmtcnn.train)
  <tmp>/export/               every format this TensorFlow makes, and export.json
"""

import contextlib
import io
import json
import os

from conftest import tiny_config

FOLD = 1
STEPS = 300
LATENCY_RUNS = 3  # the command's 50 would cost the tests seconds for nothing they check

class ExportedFold:
    pass


def int8_here():
    from lmtcnn.export import int8_supported

    return int8_supported()


def formats_here():
    return ["frozen", "tflite"] + (["tflite-int8"] if int8_here() else []) + ["savedmodel"]


def run_main(args):
    """(exit status, stdout, stderr) of `python -m lmtcnn ARGS`, in this process."""
    from lmtcnn.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in args])
    return status, out.getvalue(), err.getvalue()


def make_exported_fold(prepared, base):
    from lmtcnn.config import dump_config
    from lmtcnn.train import train

    made = ExportedFold()
    made.run_dir = os.path.join(base, "run")
    made.workdir = os.path.join(made.run_dir, "fold_%d" % FOLD)
    made.out = os.path.join(base, "export")
    # Trained until it tells the synthetic faces apart (about 95% age top-1): a network
    # that barely depends on its input would pass any parity check, a broken export too.
    made.config = tiny_config(prepared, max_steps=STEPS, checkpoint_every_steps=STEPS, log_every_steps=50,
                              summary_every_steps=50, augment="none")
    os.makedirs(made.run_dir)
    with open(os.path.join(made.run_dir, "config.yaml"), "w") as f:
        f.write(dump_config(made.config) + "scheduler: {device: cpu, folds: [%d]}\n" % FOLD)
    train(made.config, FOLD, made.workdir, report=lambda event: None)
    made.formats = formats_here()
    made.status, made.stdout, made.stderr = run_main(
        ["export", "--workdir", made.workdir, "--out", made.out, "--format", ",".join(made.formats),
         "--latency-runs", LATENCY_RUNS])
    with open(os.path.join(made.out, "export.json")) as f:
        made.report = json.load(f)
    made.paths = {row["format"]: row["path"] for row in made.report["formats"]}
    return made
