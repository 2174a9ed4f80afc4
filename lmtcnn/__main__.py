"""`python -m lmtcnn {synth,prepare,summary,train,eval}`: one device, no Ray."""

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
            "eval": run_eval}

if __name__ == "__main__":
    sys.exit(main())
