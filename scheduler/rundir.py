"""The run directory: one folder holds everything a run produces.

  config.yaml       the resolved configuration
  run.json          run id, driver host and pid (tells `status` whether it is alive)
  events.jsonl      every progress event, appended as it arrives
  fold_<k>/         the fold's work directory (checkpoints/, tensorboard/, final/,
                    metrics.json, log.txt)
  results.{json,csv,md}
"""

import json
import os
import socket
import time
import uuid

from lmtcnn.errors import UserError
from lmtcnn.files import read_json, write_json_atomic, write_text_atomic

EVENTS = "events.jsonl"
CONFIG = "config.yaml"
RUN_RECORD = "run.json"


def new_run_dir(config):
    s = config.scheduler
    path = s.run_dir or os.path.join(s.runs_root, "%s-%s" % (config.name, time.strftime("%Y%m%d-%H%M%S")))
    if os.path.exists(os.path.join(path, EVENTS)):
        raise UserError("%s: holds an earlier run; continue it with `python -m scheduler run --resume %s` "
                        "or choose another scheduler.run_dir" % (path, path))
    os.makedirs(path, exist_ok=True)
    return os.path.abspath(path)


def fold_dir(run_dir, fold):
    return os.path.join(run_dir, "fold_%d" % fold)


def write_config(run_dir, config_yaml):
    write_text_atomic(os.path.join(run_dir, CONFIG), config_yaml)


def record_driver(run_dir, run_id):
    """Mark the run as driven by this process; fold tasks compare the run id to learn
    whether they see the same run directory (a shared filesystem) as the driver."""
    record = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    write_json_atomic(os.path.join(run_dir, RUN_RECORD), record)
    return record


def make_run_id():
    return uuid.uuid4().hex[:12]


def driver_alive(run_dir):
    """True when the driver recorded in run.json still runs (checked on its own host only)."""
    try:
        record = read_json(os.path.join(run_dir, RUN_RECORD))
    except (OSError, ValueError):
        return False
    if record.get("ended") or record.get("host") != socket.gethostname():
        return False
    try:
        os.kill(record["pid"], 0)
    except (OSError, KeyError):
        return False
    return True


def mark_ended(run_dir, how):
    path = os.path.join(run_dir, RUN_RECORD)
    record = read_json(path)
    record["ended"] = how
    write_json_atomic(path, record)


class EventLog:
    """Appends events to events.jsonl, one JSON object a line, flushed as they come."""

    def __init__(self, run_dir):
        self.path = os.path.join(run_dir, EVENTS)
        self.file = open(self.path, "a", encoding="utf-8")

    def append(self, event):
        self.file.write(json.dumps(event, sort_keys=True) + "\n")
        self.file.flush()

    def close(self):
        self.file.close()


def read_events(run_dir):
    """Every event of the run, in order; a torn last line (a killed driver) is skipped."""
    path = os.path.join(run_dir, EVENTS)
    if not os.path.isfile(path):
        raise UserError("%s: not a run directory (no %s); pass a directory under runs/" % (run_dir, EVENTS))
    out = []
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
