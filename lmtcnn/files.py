"""The one way this project writes a file: a temporary name beside it, then a rename.

A reader (another host on a shared filesystem, `scheduler status`, a resumed run) sees
either the old file or the whole new one, never half of one.
"""

import json
import os
import tempfile

# mkstemp creates files 0600; a written file gets what the process's umask allows, as a
# file made by open() would. Read once: os.umask can only be read by setting it.
UMASK = os.umask(0o022)
os.umask(UMASK)


def write_bytes_atomic(path, data):
    """Write `data` to `path` so that the file is either absent, old or complete."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path, text):
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, obj):
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path):
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)
