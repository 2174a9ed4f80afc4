"""Shared fixtures: one synthetic Adience release and its prepared data per test session."""

import os
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# Device locks are per host; a test session keeps its own, so two sessions on one machine
# (the two lanes side by side) never see each other's NPU 0 as taken. Ray workers and
# driver subprocesses inherit it.
os.environ["LMTCNN_LOCK_DIR"] = tempfile.mkdtemp(prefix="lmtcnn-test-locks-")


@pytest.fixture(scope="session")
def raw_adience(tmp_path_factory):
    from lmtcnn.synth import synthesize

    out = str(tmp_path_factory.mktemp("adience"))
    synthesize(out, per_fold=120, seed=1)
    return out


@pytest.fixture(scope="session")
def prepared(raw_adience, tmp_path_factory):
    from lmtcnn.prepare import prepare

    out = str(tmp_path_factory.mktemp("prepared") / "data")
    prepare(raw_adience, out, workers=2)
    return out


def tiny_config(data_dir, **train):
    """A configuration that trains in seconds on 64x64 inputs on the CPU."""
    from lmtcnn.config import build_config, Config

    settings = dict(device="cpu", batch_size=16, max_steps=6, log_every_steps=2, checkpoint_every_steps=4,
                    summary_every_steps=2, eval_every_steps=0, shuffle_buffer=64, preprocess_threads=2,
                    cpu_threads=1)
    settings.update(train)
    return build_config({"name": "tiny", "data": {"data_dir": data_dir},
                         "model": {"image_size": 64, "batch_norm_decay": 0.9}, "train": settings,
                         "eval": {"batch_size": 16}}, Config)


def run_config(data_dir, run_dir, folds, **sections):
    """A scheduler RunConfig for tiny CPU-trained folds writing into `run_dir`."""
    from lmtcnn.config import build_config
    from scheduler.config import RunConfig

    train = dict(device="cpu", batch_size=16, max_steps=8, log_every_steps=2, checkpoint_every_steps=4,
                 summary_every_steps=4, eval_every_steps=0, shuffle_buffer=64, preprocess_threads=1, cpu_threads=1)
    train.update(sections.get("train", {}))
    scheduler = dict(folds=list(folds), run_dir=str(run_dir), device="cpu", max_retries=2, stop_timeout_s=60.0)
    scheduler.update(sections.get("scheduler", {}))
    return build_config({"name": "t", "data": {"data_dir": data_dir},
                         "model": {"image_size": 64, "batch_norm_decay": 0.9},
                         "train": train, "eval": {"batch_size": 16}, "scheduler": scheduler}, RunConfig)


def quiet_console():
    import io

    from rich.console import Console

    return Console(file=io.StringIO(), width=140, color_system=None)


def ray_init_local(**resources):
    """A real local Ray instance with `resources` (e.g. NPU=2), as the driver would start."""
    import ray

    from scheduler.driver import NPU_SYSTEM_CONFIG

    options = dict(num_cpus=2, log_to_driver=False, include_dashboard=False)
    if tuple(int(x) for x in ray.__version__.split(".")[:2]) < (2, 10):
        options["_system_config"] = NPU_SYSTEM_CONFIG
    # "local": a new instance even when `ray start` left one on this machine (ray.init()
    # alone would join that one, or fail on its stale address).
    ray.init(address="local", resources=resources or None, **options)


class EventTail:
    """Follows a run's events.jsonl from a thread and calls `on_event` for each new event."""

    def __init__(self, run_dir, on_event):
        import threading

        self.path = os.path.join(str(run_dir), "events.jsonl")
        self.on_event, self.stop = on_event, threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self):
        import json
        import time

        offset = 0
        while not self.stop.is_set():
            if os.path.exists(self.path):
                with open(self.path) as f:
                    f.seek(offset)
                    for line in f:
                        if not line.endswith("\n"):
                            break
                        offset += len(line.encode("utf-8"))
                        self.on_event(json.loads(line))
            time.sleep(0.1)

    def close(self):
        self.stop.set()
        self.thread.join(5)


def snapshot(directory):
    """{relative path: (mtime, bytes)} of every file below `directory`: equal snapshots
    mean nothing was touched."""
    out = {}
    for base, _, names in os.walk(str(directory)):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, str(directory))] = (os.stat(path).st_mtime_ns, f.read())
    return out


def write_faults(tmp_path, rules, monkeypatch=None):
    """Fault rules (scheduler/faults.py) in a file; with `monkeypatch`, named in
    $LMTCNN_FAULTS for the next run() in this process. Returns the file's path."""
    import json

    path = os.path.join(str(tmp_path), "faults.json")
    with open(path, "w") as f:
        json.dump(rules, f)
    if monkeypatch is not None:
        monkeypatch.setenv("LMTCNN_FAULTS", path)
    return path


def summarize(run_dir):
    """What a run's events.jsonl tells of its faults, for assertions and docs/RELIABILITY.md.

    steps_lost: per fold, the steps an attempt had reported beyond the step its successor
    started from, summed. events_lost / events_repeated: per attempt, sequence numbers
    missing below the highest one received / received more than once.
    """
    import collections

    from scheduler import rundir

    events = rundir.read_events(str(run_dir))
    attempts = collections.defaultdict(lambda: {"start": None, "reached": 0, "seqs": []})
    for e in events:
        if "attempt" not in e or "fold" not in e:
            continue
        a = attempts[(e["fold"], e["attempt"])]
        if "seq" in e:
            a["seqs"].append(e["seq"])
        if e["event"] == "fold_started":
            a["start"] = e["start_step"]
        if e["event"] in ("step_done", "checkpoint_saved", "fold_stopped", "fold_finished") and e.get("step"):
            a["reached"] = max(a["reached"], e["step"])
    steps_lost = 0
    for (fold, number), a in attempts.items():
        after = attempts.get((fold, number + 1))
        if after and after["start"] is not None:
            steps_lost += max(a["reached"] - after["start"], 0)
    finished = {e["fold"] for e in events if e["event"] in ("fold_finished", "fold_skipped")}
    failed = {e["fold"] for e in events if e["event"] == "fold_failed"} - finished
    return {
        "events": events,
        "finished": sorted(finished),
        "failed": sorted(failed),
        "attempts": {fold: max(n for f, n in attempts if f == fold) for fold, _ in attempts},
        "steps_lost": steps_lost,
        "events_lost": sum(max(a["seqs"]) - len(set(a["seqs"])) for a in attempts.values() if a["seqs"]),
        "events_repeated": sum(len(a["seqs"]) - len(set(a["seqs"])) for a in attempts.values()),
    }


@pytest.fixture
def fault_record(request):
    """record(**figures): one line of the fault matrix, appended to $LMTCNN_FAULT_REPORT
    (JSON lines; bench/fault_matrix.py turns them into docs/RELIABILITY.md's table)."""
    import json

    def record(**figures):
        path = os.environ.get("LMTCNN_FAULT_REPORT")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps(dict(test=request.node.nodeid, **figures), sort_keys=True) + "\n")

    return record


@pytest.fixture(scope="session")
def cv_runs(prepared, tmp_path_factory):
    """Real run directories, "finished", "failed" (one fold failed) and "interrupted"
    (Ctrl-C mid-run): see tests/cv_runs.py. Made once; tests must not change them."""
    from cv_runs import make_cv_runs

    return make_cv_runs(prepared, str(tmp_path_factory.mktemp("cv_runs")))


@pytest.fixture(scope="session")
def exported(prepared, tmp_path_factory):
    """A fold trained until it tells the synthetic faces apart, in a run's layout, and its
    export to every format this TensorFlow makes: see tests/exported_fold.py."""
    from exported_fold import make_exported_fold

    return make_exported_fold(prepared, str(tmp_path_factory.mktemp("exported")))
