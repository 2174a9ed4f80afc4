"""`lmtcnn` is a plain library: importing it never loads Ray, rich or the scheduler.

Checked two ways: in a fresh interpreter (what sys.modules holds after the imports) and
in the source (no import statement anywhere in lmtcnn/, including inside functions).

TensorFlow 2.16+ imports Keras 3 from `import tensorflow`, and Keras 3 imports rich; that
is TensorFlow's doing, not ours. So the subprocess first imports lmtcnn's third-party
dependencies, notes which forbidden modules they already brought, and reports only what
the lmtcnn imports add on top. Ray and the scheduler must be absent altogether.
"""

import ast
import glob
import json
import os
import subprocess
import sys

from conftest import ROOT

FORBIDDEN = ("ray", "rich", "scheduler")
LIBRARY = ("lmtcnn.model", "lmtcnn.train", "lmtcnn.prepare", "lmtcnn.input_pipeline", "lmtcnn.evaluate",
           "lmtcnn.synth", "lmtcnn.workdir", "lmtcnn.export", "lmtcnn.predict", "lmtcnn.inference", "lmtcnn.faces")
# What the scheduler's driver and a fold task import before they set the device
# variables, and what prepare's decoding workers import: no TensorFlow may load here.
TF_FREE = ("lmtcnn.adience", "lmtcnn.config", "lmtcnn.errors", "lmtcnn.events", "lmtcnn.files", "lmtcnn.images",
           "lmtcnn.prepare", "lmtcnn.synth", "lmtcnn.workdir")

PROBE = """
import json, sys
WATCH = %r
def loaded():
    return sorted(m for m in sys.modules if m.split('.')[0] in WATCH)
for name in %r:
    __import__(name)
baseline = loaded()
for name in %r:
    __import__(name)
print(json.dumps({"baseline": baseline, "loaded": loaded(), "added": sorted(set(loaded()) - set(baseline))}))
"""


def probe(modules, watch=FORBIDDEN, preload=("cv2", "numpy", "yaml", "tensorflow.compat.v1")):
    done = subprocess.run([sys.executable, "-c", PROBE % (tuple(watch), tuple(preload), tuple(modules))],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def tf1():
    import tensorflow

    return tensorflow.__version__.startswith("1.")


def test_library_imports_no_ray_rich_or_scheduler():
    result = probe(LIBRARY)
    assert result["added"] == []
    assert [m for m in result["loaded"] if m.split(".")[0] in ("ray", "scheduler")] == []
    # Anything already there came with TensorFlow's Keras (TF 2.16+), never on TF 1.15.
    if tf1():
        assert result["loaded"] == []


def test_the_probe_sees_an_import():
    # The same probe with a forbidden module imported explicitly must report it (a light
    # module beside it: the probe's own logic is what is tested here).
    result = probe(("lmtcnn.config", "ray"), preload=("yaml",))
    assert "ray" in result["added"] and "ray" in result["loaded"]
    assert "rich" in probe(("lmtcnn.config", "rich"), preload=("yaml",))["added"]


def test_driver_side_modules_load_no_tensorflow():
    result = probe(TF_FREE, watch=("tensorflow", "keras") + FORBIDDEN, preload=())
    assert result["loaded"] == []
    # ... and the probe notices TensorFlow when it does load.
    assert "tensorflow" in probe(("lmtcnn.tfcompat",), watch=("tensorflow",), preload=())["added"]


def forbidden_imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += ["%s:%d %s" % (os.path.basename(path), node.lineno, n) for n in names
                  if n.split(".")[0] in FORBIDDEN]
    return found


def test_no_import_statement_in_the_library_source():
    files = sorted(glob.glob(os.path.join(ROOT, "lmtcnn", "*.py")))
    assert len(files) > 10
    assert [hit for path in files for hit in forbidden_imports(path)] == []


def test_source_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from rich.console import Console\n    import ray.util\n")
    assert forbidden_imports(str(bad)) == ["bad.py:2 rich.console", "bad.py:3 ray.util"]
