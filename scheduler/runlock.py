"""One driver per run directory: `driver.lock`, held before the driver writes anything.

The driver keeps an exclusive `flock` on the file for as long as it runs, and writes its
name into it (host, pid, start time). The kernel drops the lock when the process dies,
however it dies, so on one host a lock that can be taken is never a live driver's; on
a shared filesystem (NFS v4) the lock reaches the other hosts. A second driver, or a
`--resume` while the first runs, finds the lock held and is refused with the holder's
name. A record left by another host whose lock could be taken may still be alive on a
filesystem that keeps locks per host, so taking it over needs `--force` (the user knows
that host is down). The file stays after a run, empty: no driver.
"""

import fcntl
import json
import os
import socket
import time

from lmtcnn.errors import UserError

LOCK = "driver.lock"


def read_holder(run_dir):
    """The record in the lock file: {} when it is empty or torn, None when there is none."""
    try:
        with open(os.path.join(run_dir, LOCK), "r", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        record = json.loads(text) if text.strip() else {}
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _held(path):
    """True when some process holds the lock file's lock, False when none does."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock we may have taken
    return False


def holder_alive(run_dir):
    """True: a driver holds the run directory. False: none does. None: the record names a
    driver on another host and no lock is visible from here, so this host cannot tell."""
    path = os.path.join(run_dir, LOCK)
    if _held(path):
        return True
    holder = read_holder(run_dir)
    if holder and holder.get("host") not in (None, socket.gethostname()):
        return None
    return False


def describe(holder):
    holder = holder or {}
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"])) if "started" in holder else "?"
    return "driver pid %s on %s since %s" % (holder.get("pid", "?"), holder.get("host", "?"), when)


class RunLock:
    """The held lock of one run directory (keep it for the driver's lifetime)."""

    def __init__(self, run_dir, fd, record, note):
        self.run_dir, self.fd, self.record, self.note = run_dir, fd, record, note

    def release(self):
        """Empty the record, then drop the lock: a reader sees no driver, or a live one."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass  # a full or read-only disk: the lock itself still goes with the descriptor
        os.close(self.fd)
        self.fd = None


def _take(fd, tries=5, wait_s=0.05):
    """The exclusive lock on `fd`, or False. A few tries: `status` and `table` look with a
    shared lock held for an instant, which must not turn a --resume away."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            if attempt + 1 < tries:
                time.sleep(wait_s)
    return False


def acquire(run_dir, force=False):
    """Take the run directory's lock. Returns a RunLock whose `note` says whose record was
    taken over ("" if none). Raises UserError naming the holder when it is held, or the
    directory when the lock file cannot be written."""
    path = os.path.join(run_dir, LOCK)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserError("%s: cannot create %s (%s); choose a run directory you can write" % (
            run_dir, LOCK, e.strerror))
    if not _take(fd):
        os.close(fd)
        holder = read_holder(run_dir)
        if holder:
            raise UserError("%s: the %s is running this run (%s); watch it with `python -m scheduler status %s`"
                            % (run_dir, describe(holder), LOCK, run_dir))
        raise UserError("%s: another driver is starting on this run (%s); wait for it, or choose another run "
                        "directory" % (run_dir, LOCK))
    holder = read_holder(run_dir)
    note = ""
    if holder:
        elsewhere = holder.get("host") not in (None, socket.gethostname())
        if elsewhere and not force:
            os.close(fd)
            raise UserError("%s: held by the %s (%s); this host cannot check it: if that driver is gone, pass "
                            "--force" % (run_dir, describe(holder), LOCK))
        note = "took over the lock of the %s, which is gone" % describe(holder)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        raise UserError("%s: cannot write %s (%s)" % (run_dir, LOCK, e.strerror))
    return RunLock(run_dir, fd, record, note)
