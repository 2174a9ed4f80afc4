"""Folds that ran on a host without the run directory: staged there, collected by the driver.

The fold writes under a per-user staging root on its host, keyed by the run directory
and the run's identity (`rundir.new_run_key`), so a later attempt on the same host (a retry,
a resumed run) finds its checkpoints and a new run at a reused path does not. When
it finishes, the task returns the staged directory as a tar archive; the driver checks
every member, extracts into a temporary directory beside the fold's, keeps the log lines
of earlier attempts, swaps the result into place, and only then asks the host to delete
its copy. Until that point the staged copy is the one that counts.
"""

import getpass
import hashlib
import io
import os
import shutil
import socket
import tarfile
import tempfile

LOG = "log.txt"


class UnsafeArchive(Exception):
    """An archive member that would land outside the fold directory, or is not a plain file."""


def staging_root():
    """This user's staging directory on this host (0700: checkpoints are nobody else's)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry, as in some containers
        user = "uid%d" % os.getuid()
    root = os.path.join(tempfile.gettempdir(), "lmtcnn-runs-%s" % user)
    os.makedirs(root, mode=0o700, exist_ok=True)
    return root


def stage_dir(run_dir, driver_host, fold, run_key=""):
    """Where `fold` of the run stages on this host; run_key tells apart runs that used one path."""
    name = "%s:%s" % (driver_host, os.path.abspath(run_dir)) + (":" + run_key if run_key else "")
    key = hashlib.sha1(name.encode("utf-8")).hexdigest()[:16]
    return os.path.join(staging_root(), key, "fold_%d" % fold)


def pack_dir(path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(path, arcname=".")
    return buffer.getvalue()


def _safe_name(member):
    """The member's path relative to the fold directory; UnsafeArchive for anything else."""
    name = member.name
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts:
        raise UnsafeArchive("member %r points outside the fold directory" % name)
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchive("member %r is a link or device, not a file" % name)
    return os.path.join(*parts) if parts else ""


def _extract(archive, target):
    """Every member of `archive` under `target`, checked before anything is written."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
        members = [(m, _safe_name(m)) for m in tar.getmembers()]
        for member, name in members:
            path = os.path.join(target, name)
            if member.isdir():
                os.makedirs(path, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with tar.extractfile(member) as source, open(path, "wb") as out:
                shutil.copyfileobj(source, out)


def unpack(archive, destination):
    """Install the fold directory in `archive` at `destination` (replacing what is there).

    Raises UnsafeArchive (nothing written) when a member is absolute, holds `..`, or is
    a link or device; tarfile.TarError for a damaged archive. Whatever fails, the
    destination is left as it was.
    """
    from lmtcnn.files import UMASK

    parent = os.path.dirname(os.path.abspath(destination))
    base = os.path.basename(destination)
    incoming = tempfile.mkdtemp(prefix=".%s.incoming-" % base, dir=parent)
    replaced = None
    try:
        _extract(archive, incoming)
        _keep_earlier_log(os.path.join(destination, LOG), os.path.join(incoming, LOG))
        os.chmod(incoming, 0o777 & ~UMASK)  # mkdtemp's 0700 is not what a fold directory has
        if os.path.isdir(destination):
            replaced = tempfile.mkdtemp(prefix=".%s.replaced-" % base, dir=parent)
            os.rename(destination, os.path.join(replaced, base))
        os.rename(incoming, destination)
    except BaseException:
        if replaced is not None and not os.path.exists(destination):
            os.rename(os.path.join(replaced, base), destination)  # put the earlier one back
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    finally:
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)


def _keep_earlier_log(old_path, new_path):
    """Attempts that ran elsewhere wrote the run directory's log; the staged log holds the
    attempts of one host. Keep both, without repeating what the staged log already has."""
    if not os.path.isfile(old_path):
        return
    with open(old_path, "r", encoding="utf-8", errors="replace") as f:
        old = f.read()
    new = ""
    if os.path.isfile(new_path):
        with open(new_path, "r", encoding="utf-8", errors="replace") as f:
            new = f.read()
    if not new.startswith(old):
        with open(new_path, "w", encoding="utf-8") as f:
            f.write(old + new)


def remove_staged(path):
    """Delete a collected fold's staged copy on its host (run as a task pinned there)."""
    if os.path.isdir(path) and os.path.realpath(path).startswith(os.path.realpath(staging_root()) + os.sep):
        shutil.rmtree(path, ignore_errors=True)
    return socket.gethostname()
