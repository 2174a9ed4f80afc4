"""Before anything is submitted: the data each fold needs, and the plan a dry run prints."""

import os

from rich.table import Table

from lmtcnn.errors import UserError
from lmtcnn.prepare import MANIFEST, check_fold_data, load_manifest, prepare
from lmtcnn.synth import synthesize


def ensure_data(config, say=print, generate=True):
    """Generate synthetic data on first use when configured; check every fold's splits.

    Returns {fold: {"train": n, "val": n, "test": n}}, or None when synthetic data is
    still to be generated and `generate` is False (a dry run does no work).
    Raises UserError naming the data directory and fold when something is missing.
    """
    data = config.data
    if data.synthetic_per_fold and not os.path.isfile(os.path.join(data.data_dir, MANIFEST)):
        if not generate:
            return None
        raw = os.path.join(data.data_dir, "raw")
        say("generating synthetic Adience data in %s (first use) ..." % raw)
        synthesize(raw, per_fold=data.synthetic_per_fold, seed=data.synthetic_seed)
        prepare(raw, data.data_dir)
    manifest = load_manifest(data.data_dir)
    counts = {fold: check_fold_data(config, manifest, fold) for fold in config.scheduler.folds}
    pretrained = config.train.pretrained_checkpoint
    if pretrained and not (os.path.isdir(pretrained) or os.path.exists(pretrained + ".index")):
        raise UserError("train.pretrained_checkpoint %s: no checkpoint there (give a prefix such as "
                        "model.ckpt-1000, or a directory holding a `checkpoint` file)" % pretrained)
    return counts


def plan_table(config, counts, placement, request, run_dir, where):
    """The plan: the shared paths once, then one row per fold."""
    from rich.console import Group
    from rich.text import Text

    from scheduler.placement import format_request

    table = Table()
    for column in ("fold", "train/val/test images", "resource", "output"):
        table.add_column(column, no_wrap=True)
    for fold in config.scheduler.folds:
        c = counts[fold] if counts else None
        table.add_row(str(fold), "%d/%d/%d" % (c["train"], c["val"], c["test"]) if c else "synthetic, made on run",
                      "%s %s" % (placement, format_request(request)), "fold_%d/" % fold)
    lines = [Text("plan: %s on %s" % (config.name, where)), Text("data: %s" % config.data.data_dir),
             Text("run directory: %s" % run_dir)]
    if placement == "gpu":
        lines.append(Text("GPU memory per fold: %s" % gpu_memory_line(config)))
    return Group(*lines + [table])


def gpu_memory_line(config):
    """What each fold's TensorFlow may take of its GPU, as the fold task will set it."""
    from scheduler.placement import gpu_memory_fraction

    folds = config.scheduler.folds_per_gpu
    fraction = config.train.gpu_memory_fraction or gpu_memory_fraction(folds)
    share = "up to %g of its GPU" % fraction if fraction else "grows as needed"
    return share + (" (%d folds share each GPU)" % folds if folds > 1 else " (a GPU per fold)")
