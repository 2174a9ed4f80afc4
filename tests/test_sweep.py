"""`python -m scheduler sweep`: a grid of whole cross-validations under one driver.

The real sweep below is made certain on any CPU by fault rules (scheduler/faults.py),
which match a fold and attempt in every cell alike: each cell's fold 1 is held after its
checkpoint at step 4, so the Ctrl-C lands with both fold 0s finished and both fold 1s
at a known step, and --resume finishes them from there. The order in which a sweep hands
folds to Ray (cell by cell, a retry ahead of folds not yet started) is tested on the
dispatcher itself, with the cluster's nodes given as data.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from scheduler.__main__ import main
from scheduler.dispatch import slots

STEPS = 8
HELD_AT = 4


def write(path, text):
    with open(str(path), "w") as f:
        f.write(text)
    return str(path)


def base_config(tmp_path, data_dir):
    return write(tmp_path / "base.yaml",
                 "name: base\n"
                 "data: {data_dir: %s}\n"
                 "model: {image_size: 64, batch_norm_decay: 0.9}\n"
                 "train: {device: cpu, batch_size: 16, max_steps: %d, checkpoint_every_steps: 4, log_every_steps: 2,\n"
                 "        summary_every_steps: 4, eval_every_steps: 0, shuffle_buffer: 64, preprocess_threads: 1,\n"
                 "        cpu_threads: 1}\n"
                 "eval: {batch_size: 16}\n"
                 "scheduler: {device: cpu, folds: [0, 1], local_cpus: 2, max_retries: 1, runs_root: %s}\n"
                 % (data_dir, STEPS, tmp_path / "runs"))


def sweep_file(tmp_path, data_dir, grid="grid: {train.learning_rate: [0.01, 0.02]}\n", extra=""):
    return write(tmp_path / "sweep.yaml", "name: lr\nbase: %s\n%s%s" % (base_config(tmp_path, data_dir), grid, extra))


# --- the sweep file ------------------------------------------------------------------------

def test_every_combination_is_a_cell_in_the_files_order(tmp_path):
    from scheduler.sweep import cell_dir_name, load_sweep

    path = sweep_file(tmp_path, "/data", grid="grid:\n  model.type: [LMTCNN-1-1, LMTCNN-2-1]\n"
                                              "  train.learning_rate: [0.01, 0.003]\n",
                      extra="set: {train.max_steps: 5}\n")
    sweep = load_sweep(path)
    assert [(c.config.model.type, c.config.train.learning_rate) for c in sweep.cells] == [
        ("LMTCNN-1-1", 0.01), ("LMTCNN-1-1", 0.003), ("LMTCNN-2-1", 0.01), ("LMTCNN-2-1", 0.003)]
    assert all(c.config.train.max_steps == 5 for c in sweep.cells)
    assert [c.config.name for c in sweep.cells] == ["lr-c1", "lr-c2", "lr-c3", "lr-c4"]
    assert cell_dir_name(sweep.cells[3]) == "c4_type=LMTCNN-2-1_learning_rate=0.003"
    assert sweep.cells[3].describe() == "model.type=LMTCNN-2-1 train.learning_rate=0.003"


@pytest.mark.parametrize("grid, extra, expected", [
    ("grid: {train.learning_rate: 0.01}\n", "", "grid key 'train.learning_rate' must list its values"),
    ("grid: {scheduler.cpus_per_fold: [1, 2]}\n", "", "grid key 'scheduler.cpus_per_fold': one driver runs every"),
    ("grid: {model.type: [LMTCNN-1-1, LMTCNN-3]}\n", "", "grid cell model.type=LMTCNN-3: key 'model.type'"),
    ("grid: {model.tipe: [a]}\n", "", "grid cell model.tipe=a: unknown key"),
    ("grid: {train.learning_rate: [0.01, 0.01]}\n", "", "lists a value twice"),
    ("grid: {}\n", "", "key 'grid' must map keys to lists"),
    ("grid: {train.learning_rate: [0.01]}\n", "rank_by: speed\n", "key 'rank_by' must be one of"),
    ("grid: {train.learning_rate: [0.01]}\n", "epochs: 3\n", "unknown key 'epochs'"),
    ("grid: {train.learning_rate: [0.01]}\n", "set: {train.max_steps: -1}\n", "set train.max_steps: key"),
])
def test_a_bad_sweep_file_is_one_line_naming_it_and_exit_2(tmp_path, capsys, grid, extra, expected):
    path = sweep_file(tmp_path, "/data", grid=grid, extra=extra)
    assert main(["sweep", path, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: %s" % path), err
    assert expected in err, err
    assert not os.path.exists(str(tmp_path / "runs"))


def test_sweep_commands_that_cannot_be_meant(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "none.yaml")]) == 2
    assert "no such sweep file" in capsys.readouterr().err
    assert main(["sweep", "--resume", str(tmp_path)]) == 2
    assert "not a sweep directory" in capsys.readouterr().err
    assert main(["sweep"]) == 2
    assert "name a sweep file" in capsys.readouterr().err


def test_slots_count_what_the_alive_nodes_hold_at_once():
    nodes = [{"Resources": {"CPU": 8, "GPU": 1}}, {"Resources": {"CPU": 2}}, {"Resources": {"CPU": 24, "NPU": 8}}]
    assert slots({"CPU": 1}, nodes) == 34
    assert slots({"CPU": 3}, nodes) == 2 + 0 + 8
    assert slots({"CPU": 2, "NPU": 1}, nodes) == 8
    assert slots({"CPU": 1, "GPU": 1 / 3}, [{"Resources": {"CPU": 8, "GPU": 1}}]) == 3  # fractions of a GPU
    assert slots({"CPU": 1, "GPU": 1}, [{"Resources": {"CPU": 8}}]) == 0


class Cell:
    """What the dispatcher sees of a session: its queue and the attempts it handed to Ray."""

    def __init__(self, folds):
        self.waiting, self.pending = [(k, 1) for k in folds], {}

    def release(self, count=None):
        taken = self.waiting[:count] if count is not None else self.waiting
        self.waiting = self.waiting[len(taken):]
        self.pending.update((item, None) for item in taken)
        return len(taken)


def test_a_sweep_releases_cell_by_cell_and_a_retry_first():
    from scheduler.dispatch import Dispatcher

    nodes = [{"Resources": {"CPU": 2}}]
    first, second = Cell([0, 1]), Cell([0, 1])
    dispatcher = Dispatcher([first, second], {"CPU": 1}, throttle=True, nodes=lambda: nodes)
    dispatcher.release()
    assert list(first.pending) == [(0, 1), (1, 1)] and second.pending == {}  # two slots: the first cell's
    del first.pending[(1, 1)]  # its fold 1 was lost; the session queues the retry ahead
    first.waiting.insert(0, (1, 2))
    dispatcher.release()
    assert (1, 2) in first.pending and second.pending == {}
    del first.pending[(0, 1)]
    dispatcher.release()
    assert list(second.pending) == [(0, 1)] and second.waiting == [(1, 1)]
    # No alive node can hold a fold: all go to Ray, where each fold's unplaceable timeout runs.
    nodes[:] = [{"Resources": {"CPU": 0.5}}]
    dispatcher.slots = None
    dispatcher.release()
    assert second.waiting == [] and (1, 1) in second.pending
    # A run hands Ray every queued fold at once.
    run = Cell([0, 1, 2, 3, 4])
    Dispatcher([run], {"CPU": 1}, throttle=False, nodes=lambda: [{"Resources": {"CPU": 1}}]).release()
    assert len(run.pending) == 5


# --- the live view -------------------------------------------------------------------------

def test_the_live_view_groups_folds_by_cell_and_fits_80_columns(tmp_path):
    from rich.console import Console

    from lmtcnn import events as ev
    from scheduler import state as st
    from scheduler.sweep import load_sweep
    from scheduler.sweep_view import render_sweep

    sweep = load_sweep(sweep_file(tmp_path, "/data"))
    views = []
    for cell in sweep.cells:
        view = st.RunView()
        for event in [ev.make(st.RUN_STARTED, name=cell.config.name, run_dir="/r", folds=[0, 1]),
                      ev.make(ev.FOLD_STARTED, fold=1, attempt=1, device="cpu", start_step=0, total_steps=8),
                      ev.make(st.NOTICE, text="2 nodes: keep the run directory shared"),
                      ev.make(st.NOTICE, text="only here %s" % cell.label)]:
            st.apply(view, dict(event, time=100.0))
        views.append(view)
    st.apply(views[0], ev.make(ev.FOLD_FINISHED, fold=0, attempt=1, time=101.0, metrics={
        "age_top1": 0.5, "age_top2": 0.7, "age_one_off": 0.8, "gender": 0.9, "step": 8}))
    console = Console(width=80, height=40, file=open(os.devnull, "w"), color_system=None)
    with console.capture() as capture:
        console.print(render_sweep(sweep, views, 110.0))
    text = capture.get()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "c1 train.learning_rate=0.01: 1/2 done, 1 running, age top-1 50.0" in text
    assert "c2 train.learning_rate=0.02: 0/2 done, 1 running" in text
    rows = [line.split()[1] for line in lines if line.startswith("│") and "/" in line.split()[1]]
    assert rows == ["c1/0", "c1/1", "c2/0", "c2/1"]
    # The driver's notice to every cell once; a cell's own with its name.
    assert text.count("2 nodes: keep") == 1 and "c2: only here c2" in text


# --- a real sweep: retries first, Ctrl-C, resume ------------------------------------------

def events_of(cell_dir):
    path = os.path.join(cell_dir, "events.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def start(args, faults=None):
    env = dict(os.environ, RAY_ADDRESS="local")
    if faults:
        env["LMTCNN_FAULTS"] = faults
    return subprocess.Popen([sys.executable, "-m", "scheduler", "sweep"] + args + ["--no-dashboard", "--no-report"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                            start_new_session=True, env=env)


@pytest.fixture(scope="module")
def interrupted_sweep(prepared, tmp_path_factory):
    """(sweep dir, the driver's output) of a sweep stopped by Ctrl-C with each cell's fold 0
    finished and its fold 1 held after its checkpoint at step 4."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    faults = write(tmp_path / "faults.json", json.dumps([
        {"fold": 1, "attempt": 1, "event": "checkpoint_saved", "step": HELD_AT, "action": "hold"}]))
    sweep_dir = str(tmp_path / "the-sweep")
    driver = start([sweep_file(tmp_path, prepared), "--sweep-dir", sweep_dir], faults)
    try:
        deadline = time.time() + 600  # guards a hang only; the fault rules decide when
        while time.time() < deadline:
            assert driver.poll() is None, "the sweep ended early:\n" + driver.stdout.read()
            cells = sorted(d for d in os.listdir(sweep_dir) if d.startswith("c")) if os.path.isdir(sweep_dir) else []
            story = [events_of(os.path.join(sweep_dir, d)) for d in cells]
            if len(story) == 2 and all(
                    any(e["event"] == "fold_finished" and e["fold"] == 0 for e in events)
                    and any(e["event"] == "checkpoint_saved" and e["fold"] == 1 and e["step"] == HELD_AT
                            for e in events) for events in story):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the folds never reached their held step")
        driver.send_signal(signal.SIGINT)
        output, _ = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, output
    return sweep_dir, output


def test_cells_run_in_order_and_ctrl_c_keeps_every_cell(interrupted_sweep):
    sweep_dir, output = interrupted_sweep
    record = json.load(open(os.path.join(sweep_dir, "sweep.json")))
    cells = [os.path.join(sweep_dir, c["dir"]) for c in record["cells"]]
    assert [c["overrides"] for c in record["cells"]] == [{"train.learning_rate": 0.01}, {"train.learning_rate": 0.02}]
    first, second = (events_of(c) for c in cells)

    def when(events, kind, fold):
        return next(e["time"] for e in events if e["event"] == kind and e["fold"] == fold)

    # Two slots, both taken by the first cell; the second cell began as its fold 0 ended.
    assert when(second, "fold_started", 0) > when(first, "fold_finished", 0)
    for events in (first, second):
        assert events[-1]["event"] == "run_interrupted"
        assert [(e["fold"], e["step"]) for e in events if e["event"] == "fold_stopped"] == [(1, HELD_AT)]
    assert "resume with: python -m scheduler sweep --resume %s" % sweep_dir in output
    assert "c2: fold 1 try 1" in output  # plain lines name their cell


def test_resume_finishes_only_what_is_missing_then_one_row_per_cell(interrupted_sweep, capsys):
    sweep_dir, _ = interrupted_sweep
    record = json.load(open(os.path.join(sweep_dir, "sweep.json")))
    cells = [os.path.join(sweep_dir, c["dir"]) for c in record["cells"]]
    before = [len(events_of(c)) for c in cells]
    driver = start(["--resume", sweep_dir])
    output, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, output
    for cell, skip in zip(cells, before):
        later = events_of(cell)[skip:]
        assert [e["fold"] for e in later if e["event"] == "fold_skipped"] == [0]
        assert [(e["fold"], e["start_step"]) for e in later if e["event"] == "fold_started"] == [(1, HELD_AT)]
    results = json.load(open(os.path.join(sweep_dir, "results.json")))
    assert [(r["cell"], r["finished_folds"]) for r in results["cells"]] == [("c1", 2), ("c2", 2)]
    means = [r["summary"]["age_top1"]["mean"] for r in results["cells"]]
    best = results["cells"][means.index(max(means))]
    assert results["best"] == best["cell"] and best["best"]
    other = [r for r in results["cells"] if not r["best"]][0]
    assert other["vs_best"]["n"] == 2
    assert abs(other["vs_best"]["mean_difference"] - (min(means) - max(means))) < 0.02
    # `table` on the sweep directory: the same table, one row per cell.
    assert main(["table", sweep_dir]) == 0
    table = capsys.readouterr().out
    assert "accuracy per cell" in table and "best" in table
    assert [line.split()[1] for line in table.splitlines() if line.startswith("│")] == ["c1", "c2"]
