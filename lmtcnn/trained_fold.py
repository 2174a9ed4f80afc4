"""Which weights, configuration and test fold a trained model on disk belongs to.

A fold directory comes from `python -m lmtcnn train` (its own config.yaml inside) or from
a scheduler run (`<run>/fold_<k>/`, the run's config.yaml one level up); a checkpoint
prefix may sit anywhere inside one, or stand alone (the reference's own run directory),
in which case --config (and --fold, where the fold's data is needed) say the rest.
"""

import collections
import os
import re

from lmtcnn.errors import UserError

TrainedFold = collections.namedtuple("TrainedFold", "config config_path checkpoint fold")
"""config: lmtcnn.config.Config; checkpoint: a prefix; fold: 0-4, or None when unknown."""

CONFIG = "config.yaml"


def locate(workdir=None, checkpoint=None, config_path=None, fold=None, overrides=(), what=None):
    """The TrainedFold of a fold directory (`workdir`) or of a checkpoint (a prefix or a
    directory holding one). UserError when there is no checkpoint or no configuration."""
    from lmtcnn.config import load_config
    from lmtcnn.evaluate import find_checkpoint

    flag = what or ("--workdir" if workdir else "--checkpoint")
    prefix = find_checkpoint(workdir or checkpoint, what=flag)
    fold_dir = workdir or _enclosing_fold_dir(prefix)
    if fold is None and fold_dir:
        fold = _fold_number(fold_dir)
    if not config_path:
        config_path = _config_beside(fold_dir, flag, workdir or checkpoint)
    config = load_config(config_path, overrides=overrides, ignore_keys=("scheduler",))
    return TrainedFold(config, config_path, prefix, fold)


def _enclosing_fold_dir(prefix):
    """The nearest directory above `prefix` named fold_<k>, or None."""
    folder = os.path.dirname(os.path.abspath(prefix))
    while folder != os.path.dirname(folder):
        if _fold_number(folder) is not None:
            return folder
        folder = os.path.dirname(folder)
    return None


def _fold_number(folder):
    match = re.match(r"fold_(\d)$", os.path.basename(os.path.normpath(folder)))
    return int(match.group(1)) if match else None


def _config_beside(fold_dir, flag, given):
    # `lmtcnn train` keeps the configuration in the fold directory, a scheduler run in the run's.
    candidates = [os.path.join(fold_dir, CONFIG), os.path.join(os.path.dirname(os.path.abspath(fold_dir)), CONFIG)] \
        if fold_dir else []
    for path in candidates:
        if os.path.isfile(path):
            return path
    looked = " or ".join(candidates) if candidates else "nothing: %s is not inside a fold_<k> directory" % given
    raise UserError("%s %s: no configuration found (looked at %s); pass --config FILE, the configuration the "
                    "model was trained with" % (flag, given, looked))


def require_fold(trained, given):
    """The fold number, or UserError asking for --fold."""
    if trained.fold is None:
        raise UserError("%s: not inside a fold_<k> directory, so its test fold is unknown; pass --fold K" % given)
    return trained.fold
