"""One driver per run directory: `driver.lock`, taken before the driver writes anything.

The lock file names its holder (host, pid, start time). A second driver, or a `--resume`
while the first still runs, is refused with the holder's name. A lock whose process is
gone from this host is stale and taken over; a lock held from another host cannot be
checked from here, so taking it over needs `--force` (the user knows that host is down).
"""

import json
import os
import socket
import time

from lmtcnn.errors import UserError

LOCK = "driver.lock"


def process_start(pid):
    """The kernel's start time of `pid` (clock ticks since boot) or None: with the pid it
    tells a live driver from an unrelated process that reused its pid."""
    try:
        with open("/proc/%d/stat" % pid, "r") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def read_holder(run_dir):
    """The lock's record, {} when the file is torn, None when there is no lock."""
    try:
        with open(os.path.join(run_dir, LOCK), "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def holder_alive(holder):
    """True: the holder runs on this host. False: it is gone. None: another host's, unknown."""
    if not holder or "pid" not in holder:
        return False
    if holder.get("host") != socket.gethostname():
        return None
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    started = holder.get("proc_start")
    return started is None or process_start(holder["pid"]) in (None, started)


def describe(holder):
    return "driver pid %s on %s since %s" % (holder.get("pid", "?"), holder.get("host", "?"), time.strftime(
        "%Y-%m-%d %H:%M:%S", time.localtime(holder["started"])) if "started" in holder else "?")


def acquire(run_dir, force=False):
    """Take the run directory's lock. Returns (record, note) where note says whose stale lock
    was taken over ("" if none). Raises UserError naming the holder when it is held."""
    path = os.path.join(run_dir, LOCK)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
              "proc_start": process_start(os.getpid())}
    note = ""
    for _ in range(5):  # a few rounds in case another driver takes over the same stale lock
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            holder = read_holder(run_dir)
            if holder is None:
                continue  # released meanwhile
            alive = holder_alive(holder)
            if alive:
                raise UserError("%s: the %s is running this run (%s); watch it with `python -m scheduler status "
                                "%s`" % (run_dir, describe(holder), LOCK, run_dir))
            if alive is None and not force:
                raise UserError("%s: held by the %s (%s); this host cannot check it: if that driver is gone, "
                                "pass --force" % (run_dir, describe(holder), LOCK))
            note = "took over the lock of the %s, which is gone" % describe(holder) if holder else \
                "took over a torn lock file"
            try:
                # Renamed, not deleted: a driver racing us for the same stale lock then
                # fails to rename it rather than deleting the lock we are about to write.
                os.rename(path, "%s.stale-%d" % (path, os.getpid()))
                os.unlink("%s.stale-%d" % (path, os.getpid()))
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        return record, note
    raise UserError("%s: could not take %s; another driver keeps taking it" % (run_dir, LOCK))


def release(run_dir, record):
    """Remove the lock if it is still ours."""
    holder = read_holder(run_dir)
    if holder and all(holder.get(k) == record[k] for k in ("host", "pid", "started")):
        try:
            os.unlink(os.path.join(run_dir, LOCK))
        except FileNotFoundError:
            pass
