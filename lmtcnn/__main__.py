"""`python -m lmtcnn {synth,prepare,summary,train,eval,export,predict}`: one device, no Ray."""

import argparse
import json
import logging
import os
import sys

from lmtcnn.errors import UserError


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lmtcnn", description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    p = commands.add_parser("synth", help="write a synthetic dataset in the raw Adience layout")
    p.add_argument("out", help="directory for fold_<k>_data.txt and aligned/")
    p.add_argument("--per-fold", type=int, default=200, help="images per fold (default 200)")
    p.add_argument("--seed", type=int, default=0)

    p = commands.add_parser("prepare", help="fold files -> split lists, TFRecords and manifest")
    p.add_argument("--adience-dir", required=True, help="holds fold_<k>_data.txt and the image folders")
    p.add_argument("--out", required=True, help="new directory for the prepared data")
    p.add_argument("--image-set", default="aligned", choices=("aligned", "faces"))
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    p.add_argument("--split-lists", default="", help="the authors' test_fold_is_<k>/ lists instead of our split")
    p.add_argument("--seed", type=int, default=0, help="chooses validation subjects of our own split")

    p = commands.add_parser("summary", help="print the layer table and parameter count")
    p.add_argument("--model-type", default="LMTCNN-1-1", choices=("LMTCNN-1-1", "LMTCNN-2-1"))
    p.add_argument("--image-size", type=int, default=227)

    for name, text in (("train", "train one fold, then evaluate it on its test split"),
                       ("eval", "evaluate a checkpoint on one fold")):
        p = commands.add_parser(name, help=text)
        p.add_argument("--config", required=True, help="YAML configuration, e.g. configs/demo.yaml")
        p.add_argument("--fold", type=int, required=True, choices=range(5), metavar="K", help="test fold 0-4")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a key, e.g. --set train.max_steps=100 (repeatable)")
        if name == "train":
            p.add_argument("--workdir", help="fold directory (default <train.model_dir>/fold_<K>)")
        else:
            p.add_argument("--checkpoint", help="checkpoint prefix or fold directory "
                                                "(default <train.model_dir>/fold_<K>)")
            p.add_argument("--split", default="test", choices=("test", "val"))
            p.add_argument("--out", help="JSON file for the metrics (default beside the checkpoint)")

    p = commands.add_parser("export", help="a trained fold as a frozen graph (for ATC), TFLite float32 and int8, "
                                           "SavedModel; each checked against the checkpoint and timed")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="fold directory: a run's fold_<k>/ or what `train --workdir` wrote")
    source.add_argument("--checkpoint", help="checkpoint prefix (ours or the reference's) or a directory holding one")
    p.add_argument("--out", required=True, help="directory for the exported files and export.json")
    p.add_argument("--format", help="comma list of frozen,tflite,tflite-int8,savedmodel (default frozen,tflite,"
                                    "tflite-int8; TensorFlow 1.15 makes no tflite-int8)")
    p.add_argument("--config", help="the configuration the model was trained with (default: config.yaml in the "
                                    "fold directory, else in the run directory above it)")
    p.add_argument("--fold", type=int, choices=range(5), metavar="K",
                   help="test fold whose images check the export (default: from the fold_<K> directory name)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a configuration key, e.g. --set data.data_dir=DIR (repeatable)")
    p.add_argument("--latency-runs", type=int, default=50, metavar="N", help="timed runs per format (default 50)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="CPU threads per model (default 1)")

    p = commands.add_parser("predict", help="age group and gender of every face in photos")
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="JPEG or PNG files")
    p.add_argument("--model", required=True, help="a .pb or .tflite from `export`, a SavedModel directory, or a "
                                                  "fold directory or checkpoint")
    p.add_argument("--config", help="for a checkpoint outside a fold directory: its configuration")
    p.add_argument("--annotate", metavar="OUT_DIR", help="write each photo with boxes and labels here")
    p.add_argument("--no-detect", action="store_true", help="each photo is one face crop already (no detection)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="CPU threads for the model (default 1)")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from lmtcnn.errors import TrainingDiverged

    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print("error: %s" % e, file=sys.stderr)
        return e.exit_status
    except TrainingDiverged as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.command == "train":
            print("stopped; the last checkpoint is kept: run the same command again to resume", file=sys.stderr)
        return 130


def run_synth(args):
    from lmtcnn.synth import synthesize

    counts = synthesize(args.out, per_fold=args.per_fold, seed=args.seed)
    print("wrote %d synthetic faces (%d with labels the protocol drops) to %s"
          % (counts["images"], counts["messy_rows"], args.out))
    return 0


def run_prepare(args):
    from lmtcnn.prepare import ProgressLine, prepare

    manifest = prepare(args.adience_dir, args.out, image_set=args.image_set, workers=args.workers,
                       split_lists=args.split_lists, seed=args.seed, progress=ProgressLine("decoding"))
    print(format_prepare_summary(manifest, args.out))
    return 0


def format_prepare_summary(manifest, out):
    split = manifest["split"]
    lines = ["prepared %d images into %s (split: %s)" % (manifest["images"], out, split["source"])]
    dropped = manifest["dropped_rows"]
    lines.append("dropped rows: %d (%s)" % (sum(dropped.values()),
                                            ", ".join("%s %d" % kv for kv in sorted(dropped.items())) or "none"))
    if split["source"] == "own" and dropped.get("duplicate row"):
        lines.append("repeated rows: %d dropped, each image is kept once" % dropped["duplicate row"])
    skipped = manifest["skipped_images"]
    lines.append("skipped images: %d (%s)%s" % (sum(skipped.values()),
                                                ", ".join("%s %d" % kv for kv in sorted(skipped.items())) or "none",
                                                "; listed in skipped.txt" if skipped else ""))
    if split["source"] == "lists":
        lines.append("the lists' repeated lines are kept, one sample each, as the reference trains and scores "
                     "them; train+val: images listed in both")
        if skipped:
            # The list statistics describe the lists as given; the counts, the samples kept.
            lines.append("the counts leave out the lines of the %d skipped images, so they fall short of the lists' "
                         "line counts; repeats and train+val are of the lists as given" % sum(skipped.values()))
        lines.append("fold  train    val   test   repeated lines (train/val/test)   train+val")
        for k, roles in sorted(manifest["folds"].items()):
            r = split["repeated_lines"][k]
            lines.append("%4s %6d %6d %6d   %31s   %9d" % (
                k, roles["train"]["count"], roles["val"]["count"], roles["test"]["count"],
                "%d/%d/%d" % (r["train"], r["val"], r["test"]), split["train_val_images"][k]))
        return "\n".join(lines)
    lines.append("fold  train    val   test")
    for k, roles in sorted(manifest["folds"].items()):
        lines.append("%4s %6d %6d %6d" % (k, roles["train"]["count"], roles["val"]["count"], roles["test"]["count"]))
    return "\n".join(lines)


def run_summary(args):
    from lmtcnn.model import format_summary

    from lmtcnn.config import MIN_IMAGE_SIZE

    if not MIN_IMAGE_SIZE <= args.image_size <= 256:
        raise UserError("--image-size %d: must be between %d and 256" % (args.image_size, MIN_IMAGE_SIZE))
    print(format_summary(args.model_type, args.image_size))
    return 0


def run_train(args):
    from lmtcnn.config import dump_config, load_config
    from lmtcnn.files import write_text_atomic

    config = load_config(args.config, overrides=args.set, ignore_keys=("scheduler",))
    workdir = args.workdir or os.path.join(config.train.model_dir, "fold_%d" % args.fold)
    saved = os.path.join(workdir, "config.yaml")
    if os.path.isfile(saved):
        # Resuming: the checkpoints only fit the network they were trained with.
        earlier = load_config(saved)
        if earlier.model != config.model:
            raise UserError("%s: trained with model %s; resume with the same model keys or choose another "
                            "--workdir" % (workdir, earlier.model))
    from lmtcnn.train import train  # TensorFlow loads only once the configuration is valid

    write_text_atomic(saved, dump_config(config))
    metrics = train(config, args.fold, workdir)
    print(json.dumps({k: v for k, v in metrics.items() if k != "age_confusion"}, sort_keys=True))
    return 0


def run_eval(args):
    from lmtcnn.config import load_config
    from lmtcnn.files import write_json_atomic

    config = load_config(args.config, overrides=args.set, ignore_keys=("scheduler",))
    from lmtcnn.evaluate import evaluate_checkpoint

    source = args.checkpoint or os.path.join(config.train.model_dir, "fold_%d" % args.fold)
    metrics = evaluate_checkpoint(config, args.fold, source, args.split)
    out = args.out or os.path.join(source if os.path.isdir(source) else os.path.dirname(source),
                                   "eval_fold%d_%s.json" % (args.fold, args.split))
    write_json_atomic(out, metrics)
    print(format_metrics(metrics))
    print("wrote %s" % out)
    return 0


def run_export(args):
    if args.latency_runs < 1 or args.threads < 1:
        raise UserError("--latency-runs and --threads must be at least 1")
    from lmtcnn.export import export, failures, format_report, parse_formats
    from lmtcnn.trained_fold import locate, require_fold

    formats, notes = parse_formats(args.format)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError("--out %s: a file, not a directory; name a directory for the exported files" % args.out)
    trained = locate(workdir=args.workdir, checkpoint=args.checkpoint, config_path=args.config, fold=args.fold,
                     overrides=args.set)
    require_fold(trained, args.workdir or args.checkpoint)
    if trained.config.eval.batch_norm == "batch":
        notes = notes + ["batch norm: the exported models use its moving averages (one photo has no batch to "
                         "normalise with); the run scored its test folds with batch statistics "
                         "(eval.batch_norm: batch), so their accuracy can differ from this table's"]
    report = export(trained, args.out, formats, latency_runs=args.latency_runs, threads=args.threads)
    print(format_report(report, notes))
    print("wrote %s" % os.path.join(args.out, "export.json"))
    problems = failures(report)
    for problem in problems:
        print("error: %s; the files are kept in %s to inspect" % (problem, args.out), file=sys.stderr)
    return 1 if problems else 0


def run_predict(args):
    if args.threads < 1:
        raise UserError("--threads must be at least 1")
    from lmtcnn.predict import predict

    return predict(args.photos, args.model, config_path=args.config, annotate_dir=args.annotate,
                   detect=not args.no_detect, threads=args.threads)


def format_metrics(m):
    from lmtcnn.adience import AGE_GROUPS

    lines = ["fold %d %s split, %d images, checkpoint %s (BN: %s)" % (m["fold"], m["split"], m["count"],
                                                                      m["checkpoint"], m["batch_norm"]),
             "age top-1 %.2f%%  age top-2 %.2f%%  age 1-off %.2f%%  gender %.2f%%"
             % (100 * m["age_top1"], 100 * m["age_top2"], 100 * m["age_one_off"], 100 * m["gender"]),
             "age confusion (rows true, columns predicted):",
             "%10s " % "" + " ".join("%9s" % g for g in AGE_GROUPS)]
    for group, row in zip(AGE_GROUPS, m["age_confusion"]):
        lines.append("%10s " % group + " ".join("%9d" % v for v in row))
    return "\n".join(lines)


COMMANDS = {"synth": run_synth, "prepare": run_prepare, "summary": run_summary, "train": run_train,
            "eval": run_eval, "export": run_export, "predict": run_predict}

if __name__ == "__main__":
    sys.exit(main())
