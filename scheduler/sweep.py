"""A sweep: a base configuration and a grid of overrides, each cell a whole cross-validation.

The sweep file (configs/sweep-demo.yaml):

  name: sweep-demo
  base: configs/demo.yaml        # a run configuration, as `scheduler run` takes
  set: {train.max_steps: 200}    # optional: keys every cell changes
  grid:                          # every combination is a cell, in this order
    model.type: [LMTCNN-1-1, LMTCNN-2-1]
    train.learning_rate: [0.01, 0.003]
  rank_by: age_top1              # optional: the metric that names the best cell

The sweep directory holds sweep.json (the cells, their overrides and directories) and one
ordinary run directory per cell, so `scheduler table/report/status/compare` read a cell
as they read any run. Relative paths (base, and those inside it) resolve against the
working directory, as for `scheduler run`.
"""

import copy
import itertools
import json
import os
import re
import time
from dataclasses import dataclass
from typing import List

import yaml

from lmtcnn.config import build_config, config_to_dict, load_config
from lmtcnn.errors import UserError
from lmtcnn.files import read_json, write_json_atomic
from scheduler.config import RunConfig, load_run_config
from scheduler.results import METRIC_COLUMNS

SWEEP_RECORD = "sweep.json"
SWEEP_KEYS = ("name", "base", "set", "grid", "rank_by")
METRICS = tuple(key for key, _ in METRIC_COLUMNS)
# One driver serves every cell, so what it decides (where folds run, the Ray cluster, the
# run directories) is the sweep's, not a cell's.
SHARED_SECTION = "scheduler."


@dataclass
class Cell:
    index: int      # 1, 2, ...: the order cells are run in
    overrides: dict  # {dotted key: value} of the grid
    run_dir: str
    config: RunConfig

    @property
    def label(self):
        return "c%d" % self.index

    def describe(self):
        """"model.type=LMTCNN-2-1 train.learning_rate=0.003"."""
        return " ".join("%s=%s" % (key, _value_text(value)) for key, value in self.overrides.items())


@dataclass
class Sweep:
    name: str
    path: str         # the sweep file, or the sweep directory's record when resumed
    sweep_dir: str
    rank_by: str
    keys: List[str]   # the grid's keys, in the file's order
    cells: List[Cell]
    scheduler: object  # the SchedulerConfig every cell shares


def load_sweep(path, overrides=()):
    """Read a sweep file into a Sweep whose sweep_dir is still to be chosen (""); every
    cell's configuration is built and checked before anything starts. UserError names the
    file and the key."""
    spec = _read_spec(path)
    base_path = spec.get("base")
    if not isinstance(base_path, str) or not base_path:
        raise UserError("%s: key 'base' must name a run configuration, e.g. base: configs/cv5.yaml" % path)
    base = load_run_config(base_path)
    raw = config_to_dict(base)
    for key, value in _mapping(spec, "set", path).items():
        _set(raw, key, value, path, "set")
        build_config(raw, RunConfig, origin="%s: set %s" % (path, key))
    for item in overrides:  # --set on the command line: for every cell, after the file's `set`
        key, value = _split_override(item)
        _set(raw, key, value, "--set", item)
        build_config(raw, RunConfig, origin="--set %s" % item)
    grid = _mapping(spec, "grid", path)
    if not grid:
        raise UserError("%s: key 'grid' must map keys to lists of values, e.g. grid: {train.learning_rate: "
                        "[0.01, 0.003]}" % path)
    for key, values in grid.items():
        if key.startswith(SHARED_SECTION) or key == "name":
            raise UserError("%s: grid key '%s': one driver runs every cell, so %s is the sweep's; set it under "
                            "'set' or in the base configuration" % (path, key, "the name" if key == "name"
                                                                       else "the scheduler section"))
        if not isinstance(values, list) or not values:
            raise UserError("%s: grid key '%s' must list its values, e.g. %s: [a, b]" % (path, key, key))
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise UserError("%s: grid key '%s' lists a value twice; list each once" % (path, key))
    name = spec.get("name", os.path.splitext(os.path.basename(path))[0])
    if not isinstance(name, str) or not name or "/" in name:
        raise UserError("%s: key 'name' must be a non-empty name without '/'" % path)
    rank_by = spec.get("rank_by", "age_top1")
    if rank_by not in METRICS:
        raise UserError("%s: key 'rank_by' must be one of %s" % (path, ", ".join(METRICS)))
    cells = []
    for index, values in enumerate(itertools.product(*grid.values()), start=1):
        chosen = dict(zip(grid, values))
        cell_raw = copy.deepcopy(raw)
        for key, value in chosen.items():
            _set(cell_raw, key, value, path, "grid")
        cell_raw["name"] = "%s-c%d" % (name, index)
        origin = "%s: grid cell %s" % (path, " ".join("%s=%s" % (k, _value_text(v)) for k, v in chosen.items()))
        config = build_config(cell_raw, RunConfig, origin=origin)
        cells.append(Cell(index, chosen, "", config))
    shared = build_config(raw, RunConfig, origin=path).scheduler
    return Sweep(name, os.path.abspath(path), "", rank_by, list(grid), cells, shared)


def _read_spec(path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            spec = yaml.safe_load(f)
    except FileNotFoundError:
        raise UserError("%s: no such sweep file; pass a YAML file such as configs/sweep-demo.yaml" % path)
    except (IsADirectoryError, UnicodeDecodeError):
        raise UserError("%s: not a sweep file (a directory or binary); pass a YAML file such as "
                        "configs/sweep-demo.yaml" % path)
    except OSError as e:
        raise UserError("%s: cannot read it (%s)" % (path, e.strerror or e))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = ": line %d" % (mark.line + 1) if mark else ""
        raise UserError("%s%s: not valid YAML (%s)" % (path, where, " ".join(str(getattr(e, "problem", None)
                                                                                   or e).split())))
    if not isinstance(spec, dict):
        raise UserError("%s: a sweep file maps %s; see configs/sweep-demo.yaml" % (path, ", ".join(SWEEP_KEYS)))
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise UserError("%s: unknown key '%s'; a sweep file has %s (training keys go under 'set' or in the base "
                        "configuration)" % (path, unknown[0], ", ".join(SWEEP_KEYS)))
    return spec


def _mapping(spec, key, path):
    value = spec.get(key) or {}
    if not isinstance(value, dict):
        raise UserError("%s: key '%s' must map dotted keys to values, e.g. %s: {train.max_steps: 100}"
                        % (path, key, key))
    return {str(k): v for k, v in value.items()}


def _split_override(item):
    if "=" not in item:
        raise UserError("--set %s: expected key=value, e.g. --set scheduler.max_retries=1" % item)
    key, text = item.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(text)
    except yaml.YAMLError:
        return key.strip(), text


def _set(raw, dotted, value, origin, what):
    """Set `dotted` in the nested dict `raw`; build_config then names an unknown key."""
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise UserError("%s: %s key '%s': '%s' is not a section (data, model, train, eval, scheduler)"
                            % (origin, what, dotted, part))
    node[parts[-1]] = value


def _value_text(value):
    return value if isinstance(value, str) else json.dumps(value)


def cell_dir_name(cell):
    """c2_type=LMTCNN-2-1_learning_rate=0.003: the order, then each key's last part and its
    value, in characters every shell and filesystem takes as they are."""
    parts = ["%s=%s" % (key.split(".")[-1], _value_text(value)) for key, value in cell.overrides.items()]
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", "_".join([cell.label] + parts))[:120]


# --- the sweep directory -----------------------------------------------------------------

def new_sweep_dir(sweep, requested=""):
    """Create the sweep directory (requested, else <runs_root>/<name>-<time>) and give
    every cell its run directory inside it. Returns the directories made, innermost first
    (for removal if the driver is refused)."""
    from scheduler import rundir

    if requested:
        path = os.path.abspath(requested)
        if os.path.exists(os.path.join(path, SWEEP_RECORD)):
            raise UserError("%s: holds an earlier sweep; continue it with `python -m scheduler sweep --resume %s` "
                            "or choose another --sweep-dir" % (path, path))
        if os.path.isdir(path) and os.listdir(path):
            raise UserError("%s: not empty; a sweep starts in a new or empty directory (--sweep-dir)" % path)
        created = rundir._missing_dirs(path)
        rundir._make_dirs(path, exist_ok=True)
    else:
        base = os.path.abspath(os.path.join(sweep.scheduler.runs_root, "%s-%s" % (
            sweep.name, time.strftime("%Y%m%d-%H%M%S"))))
        created = rundir._missing_dirs(os.path.dirname(base))
        rundir._make_dirs(os.path.dirname(base), exist_ok=True)
        path, number = base, 1
        while not rundir._make_dirs(path, exist_ok=False):
            number += 1
            path = "%s-%d" % (base, number)
        created.insert(0, path)
    sweep.sweep_dir = path
    for cell in sweep.cells:
        cell.run_dir = os.path.join(path, cell_dir_name(cell))
        cell.config.scheduler.run_dir = cell.run_dir
    return created


def write_record(sweep):
    write_json_atomic(os.path.join(sweep.sweep_dir, SWEEP_RECORD), {
        "name": sweep.name, "sweep_file": sweep.path, "rank_by": sweep.rank_by, "keys": sweep.keys,
        "created": time.time(),
        "cells": [{"index": c.index, "overrides": c.overrides, "dir": os.path.basename(c.run_dir)}
                  for c in sweep.cells]})


def load_sweep_dir(sweep_dir, overrides=()):
    """The Sweep of an existing sweep directory, for --resume: each cell keeps the
    configuration its run directory recorded; `overrides` may change scheduler keys only."""
    from scheduler.rundir import CONFIG

    path = os.path.join(sweep_dir, SWEEP_RECORD)
    if not os.path.isfile(path):
        raise UserError("%s: not a sweep directory (no %s); resume a single run with `python -m scheduler run "
                        "--resume`" % (sweep_dir, SWEEP_RECORD))
    try:
        record = read_json(path)
    except (OSError, ValueError) as e:
        raise UserError("%s: cannot be read (%s); the cells are ordinary run directories: resume each with "
                        "`python -m scheduler run --resume`" % (path, e))
    changed = [o for o in overrides if not o.startswith(SHARED_SECTION)]
    if changed:
        raise UserError("--set %s: a resumed sweep keeps its cells' training configuration; only scheduler.* "
                        "keys may change" % changed[0])
    cells = []
    for entry in record["cells"]:
        run_dir = os.path.join(os.path.abspath(sweep_dir), entry["dir"])
        config_path = os.path.join(run_dir, CONFIG)
        if not os.path.isfile(config_path):
            raise UserError("%s: missing; the sweep's cell %s cannot be resumed without it" % (config_path,
                                                                                              entry["index"]))
        config = load_config(config_path, RunConfig, list(overrides))
        config.scheduler.run_dir = run_dir
        cells.append(Cell(entry["index"], entry["overrides"], run_dir, config))
    return Sweep(record["name"], path, os.path.abspath(sweep_dir), record.get("rank_by", "age_top1"),
                 record.get("keys", []), cells, cells[0].config.scheduler)


def plan_table(sweep, counts, placement, request, where):
    """What a dry run prints: the shared plan, then one row per cell."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from scheduler.placement import format_request
    from scheduler.widths import add_column

    target = sweep.sweep_dir or os.path.abspath(os.path.join(sweep.scheduler.runs_root, "%s-<time>" % sweep.name))
    folds = sweep.scheduler.folds
    table = Table()
    for header in ("cell", "overrides", "folds", "images train/val/test, all folds"):
        add_column(table, header)
    for cell, count in zip(sweep.cells, counts):
        images = "/".join(str(sum(count[k][split] for k in folds)) for split in ("train", "val", "test")) \
            if count else "synthetic, made on run"
        table.add_row(cell.label, cell.describe(), ",".join(map(str, folds)), images)
    slots_line = "%d cells x %d folds = %d fold runs, each %s %s, released in cell order as slots free" % (
        len(sweep.cells), len(folds), len(sweep.cells) * len(folds), placement, format_request(request))
    lines = [Text("plan: sweep %s on %s" % (sweep.name, where)), Text(slots_line),
             Text("sweep directory: %s" % target)]
    if placement == "gpu":
        from scheduler.plan import gpu_memory_line

        lines.append(Text("GPU memory per fold: %s" % gpu_memory_line(sweep.cells[0].config)))
    return Group(*lines + [table])
