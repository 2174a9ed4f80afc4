"""The run directory: one folder holds everything a run produces.

  config.yaml       the resolved configuration
  driver.lock       held while a driver runs the directory (scheduler/runlock.py)
  run.json          run id, driver host and pid, and how the last session ended
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


def new_run_dir(config, force=False):
    """Create (or reuse an empty) run directory and lock it. Returns (path, runlock.RunLock,
    created): the directories this call made, innermost first. A default name
    (<runs_root>/<name>-<time>) taken by a run started in the same second gets a suffix."""
    from scheduler import runlock

    s = config.scheduler
    if s.run_dir:
        path = os.path.abspath(s.run_dir)
        if os.path.exists(os.path.join(path, EVENTS)):
            _refuse_earlier_run(path)
        created = _missing_dirs(path)
        _make_dirs(path, exist_ok=True)
    else:
        base = os.path.abspath(os.path.join(s.runs_root, "%s-%s" % (config.name, time.strftime("%Y%m%d-%H%M%S"))))
        created = _missing_dirs(os.path.dirname(base))
        _make_dirs(os.path.dirname(base), exist_ok=True)
        path, number = base, 1
        while not _make_dirs(path, exist_ok=False):
            number += 1
            path = "%s-%d" % (base, number)
        created.insert(0, path)
    lock = runlock.acquire(path, force)
    if os.path.exists(os.path.join(path, EVENTS)):  # another driver started it just before us
        lock.release()
        _refuse_earlier_run(path)
    return path, lock, created


def _make_dirs(path, exist_ok):
    """True when made (or there, with exist_ok); False when it exists already."""
    try:
        os.makedirs(path, exist_ok=exist_ok)
    except FileExistsError:
        return False
    except OSError as e:
        raise UserError("%s: cannot create the run directory (%s); choose another scheduler.run_dir or "
                        "scheduler.runs_root" % (path, e.strerror))
    return True


def _missing_dirs(path):
    """The directories of `path` that do not exist yet, innermost first."""
    missing = []
    while path and not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def remove_unused(created):
    """Delete the directories a refused driver made (innermost first), where they hold
    nothing but its lock file."""
    from scheduler import runlock

    for path in created:
        if not os.path.isdir(path) or not set(os.listdir(path)) <= {runlock.LOCK}:
            return
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)


def _refuse_earlier_run(path):
    from scheduler import runlock

    if runlock.holder_alive(path) is not False:
        raise UserError("%s: the %s is running this run (%s); choose another scheduler.run_dir"
                        % (path, runlock.describe(runlock.read_holder(path)), runlock.LOCK))
    raise UserError("%s: holds an earlier run; continue it with `python -m scheduler run --resume %s` "
                    "or choose another scheduler.run_dir" % (path, path))


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
    """True when a driver holds the run directory's lock, None when its record names a
    driver on another host whose lock this host cannot see, False otherwise."""
    from scheduler import runlock

    return runlock.holder_alive(run_dir)


def mark_ended(run_dir, how):
    path = os.path.join(run_dir, RUN_RECORD)
    try:
        record = read_json(path)
    except (OSError, ValueError):
        record = {}
    record["ended"] = how
    write_json_atomic(path, record)


class EventLog:
    """Appends events to events.jsonl, one JSON object a line, written as they come.

    A write that fails (a full disk) keeps its bytes and the next append tries them
    again, so a freed disk loses no event and the driver never dies of it; `on_trouble`
    hears of the first failure and of the recovery.
    """

    def __init__(self, run_dir, on_trouble=None):
        self.path = os.path.join(run_dir, EVENTS)
        self.on_trouble = on_trouble or (lambda text: None)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        self.backlog = b""
        self.failing = False
        size = os.fstat(self.fd).st_size
        if size:
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    # A killed driver left a torn last line: end it, or the next event
                    # would be glued to it and lost with it.
                    self.backlog = b"\n"

    def append(self, event):
        self.backlog += (json.dumps(event, sort_keys=True) + "\n").encode("utf-8")
        self._write()

    def _write(self):
        try:
            while self.backlog:
                written = os.write(self.fd, self.backlog)
                self.backlog = self.backlog[written:]
        except OSError as e:
            if not self.failing:
                self.failing = True
                self.on_trouble("cannot write %s (%s); events are kept in memory and written once it works "
                                "again" % (self.path, e.strerror))
            return
        if self.failing:
            self.failing = False
            self.on_trouble("writing %s again; no event was lost" % self.path)

    def close(self):
        """Write what is still held (one last try), then close; say what could not be written."""
        if self.fd is None:
            return
        if self.backlog:
            self._write()
        if self.backlog:
            lines = self.backlog.count(b"\n")
            self.on_trouble("%d events were never written to %s (the write still fails): the log lacks them"
                            % (lines, self.path))
        os.close(self.fd)
        self.fd = None


def new_run_key():
    """A run's identity, given by its first session and kept by every --resume: staged folds
    are keyed by it, so a new run at the path of a deleted one never picks up that run's
    staged checkpoints."""
    return uuid.uuid4().hex


def replay(run_dir):
    """(view of the run from its events.jsonl, whether its driver still runs: True, False,
    or None when it runs on another host as far as its lock tells). A run whose driver is
    gone has its unfinished folds marked interrupted."""
    from scheduler import state as st

    view = st.RunView()
    for event in read_events(run_dir):
        st.apply(view, event)
    alive = driver_alive(run_dir)
    if alive is False:
        st.mark_interrupted(view)
    return view, alive


def read_events(run_dir):
    """Every event of the run, in order; a torn last line (a killed driver) or a damaged
    one (bytes that are no UTF-8 decode to U+FFFD, which JSON refuses) is skipped."""
    path = os.path.join(run_dir, EVENTS)
    if not os.path.isfile(path):
        raise UserError("%s: not a run directory (no %s); pass a directory under runs/" % (run_dir, EVENTS))
    out = []
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
