"""`python -m scheduler` as a user runs it: real subprocesses, real exit codes and stderr.

Mistakes a user can make (a bad key, missing data, a request no node can hold, a
directory that is not a run) end with exit status 2 and one line on stderr naming the
file, key or path; a dry run prints the plan and touches nothing.
"""

import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
import yaml
from rich.console import Console

from conftest import ROOT

# Ray's own log lines on stderr, e.g.
#   2026-11-29 13:08:40,171<TAB>WARNING authentication_token_setup.py:85 -- Token authentication ...
#   [2026-11-29 13:08:40,171 W 123 456] core_worker.cc:12: ...
# Only runs that start Ray filter these; everything else must be the scheduler's own line.
RAY_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\s+(DEBUG|INFO|WARNING|ERROR)\s+\S+\.py:\d+ -- "
                          r"|\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [DIWEF] \d+ \d+\] \S+:\d+: )")


def ray_version():
    import ray

    return tuple(int(x) for x in ray.__version__.split(".")[:2])


def start_scheduler(*args, env=None, cwd=ROOT):
    """Start `python -m scheduler ARGS` from the repository root.

    RAY_ADDRESS=local: a run without an address starts its own Ray instance even when this
    machine runs another one (ray.init() would otherwise join a `ray start` cluster).
    """
    full_env = dict(os.environ, RAY_ADDRESS="local")
    full_env.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "scheduler"] + [str(a) for a in args], cwd=cwd,
                            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)


def finish(process, timeout=120):
    """Wait for `process`; the timeout only guards against a hang (Ray waits forever on a
    request no node can hold, which the scheduler must refuse before submitting)."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def scheduler(*args, env=None, timeout=120, cwd=ROOT):
    """Run `python -m scheduler ARGS` to the end; returns a CompletedProcess."""
    return finish(start_scheduler(*args, env=env, cwd=cwd), timeout=timeout)


def error_line(result, ray_started=False):
    """The one line the scheduler printed on stderr (after dropping Ray's log lines, when
    the command started Ray)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if ray_started:
        lines = [line for line in lines if not RAY_LOG_LINE.match(line)]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def body_rows(text):
    """{first cell: cells} of the first rich table's body rows (a later table, such as the
    comparison with the published results, reuses fold numbers)."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            rows.setdefault(cells[0], cells)
    return rows


def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data, default_flow_style=False))
    return str(path)


def config_for(tmp_path, data_dir, **scheduler_keys):
    """A run configuration in tmp_path: 64x64 inputs, folds 0 and 1, runs under tmp_path."""
    scheduler_section = {"folds": [0, 1], "runs_root": str(tmp_path / "runs")}
    scheduler_section.update(scheduler_keys)
    return write_yaml(tmp_path / "run.yaml", {"name": "cli", "data": {"data_dir": str(data_dir)},
                                              "model": {"image_size": 64}, "scheduler": scheduler_section})


@pytest.mark.parametrize("text, words", [
    ("scheduler: {folds: [0, 7]}\n", ["scheduler.folds", "0 to 4"]),
    ("scheduler: {fold: [0, 1]}\n", ["unknown key 'scheduler.fold'", "folds"]),
    ("train: {learning_rate: 1e-4}\n", ["train.learning_rate", "1.0e-4"]),
    ("scheduler: {device: tpu}\n", ["scheduler.device", "auto, npu, gpu, cpu"]),
])
def test_bad_config_exits_2_naming_file_and_key(tmp_path, text, words):
    path = tmp_path / "typo.yaml"
    path.write_text(text)
    result = scheduler("run", str(path), "--dry-run")
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    assert str(path) in line
    for word in words:
        assert word in line
    assert result.stdout == ""


@pytest.mark.parametrize("args, words", [
    (["--set", "train.learning_rate=1e-4"], ["train.learning_rate", "1.0e-4"]),
    (["--set", "scheduler.folds=[0,9]"], ["scheduler.folds"]),
    (["--set", "train.max_steps"], ["--set train.max_steps", "key=value"]),
    (["--folds", "0,x"], ["--folds 0,x", "0,3"]),
])
def test_bad_override_exits_2(tmp_path, args, words):
    path = config_for(tmp_path, tmp_path / "nodata")
    result = scheduler("run", path, "--dry-run", *args)
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    for word in words:
        assert word in line


def test_a_bad_override_key_is_blamed_on_set_not_the_file(tmp_path):
    path = config_for(tmp_path, tmp_path / "nodata")
    result = scheduler("run", path, "--dry-run", "--set", "scheduler.devise=npu")
    assert result.returncode == 2
    line = error_line(result)
    assert "scheduler.devise" in line and "--set" in line


@pytest.mark.parametrize("content, words", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", ["not a UTF-8 text file"]),
    ("name: caf\xe9\n".encode("latin-1"), ["not a UTF-8 text file"]),
    (b"name: x\x00y\n", ["not valid YAML"]),
    (b"scheduler: {cpus_per_fold: 0}\n", ["scheduler.cpus_per_fold", ">= 1"]),
    (b"scheduler: {stall_timeout_s: -5}\n", ["scheduler.stall_timeout_s", ">= 0"]),
    (None, ["a directory, not a configuration file"]),
])
def test_unreadable_or_impossible_configuration_exits_2(tmp_path, content, words):
    path = tmp_path / "cfg.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    result = scheduler("run", str(path), "--dry-run")
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    assert str(path) in line
    for word in words:
        assert word in line, line


def test_no_configuration_exits_2():
    result = scheduler("run")
    assert result.returncode == 2
    assert "configs/cv5.yaml" in error_line(result)


def test_missing_configuration_file_exits_2(tmp_path):
    result = scheduler("run", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    line = error_line(result)
    assert str(tmp_path / "absent.yaml") in line and "no such configuration file" in line


def test_data_dir_without_manifest_exits_2_with_the_prepare_command(tmp_path):
    data_dir = tmp_path / "unprepared"
    data_dir.mkdir()
    result = scheduler("run", config_for(tmp_path, data_dir), "--dry-run")
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    assert str(data_dir) in line and "manifest.json" in line
    assert "python -m lmtcnn prepare" in line and "--out %s" % data_dir in line
    assert not (tmp_path / "runs").exists()


def manifest_counts(data_dir, fold):
    with open(os.path.join(data_dir, "manifest.json")) as f:
        entry = json.load(f)["folds"][str(fold)]
    return entry["train"]["count"], entry["val"]["count"], entry["test"]["count"]


@pytest.fixture
def short_dir():
    """A directory with a short path (/tmp/lmtXXXXXXXX): the plan's rows then fit the
    120 columns the scheduler prints into a pipe (see test_plan_rows_keep_counts_resource_and_paths)."""
    path = tempfile.mkdtemp(prefix="lmt", dir="/tmp")
    yield path
    shutil.rmtree(path)


def test_dry_run_prints_the_plan_and_creates_nothing(prepared, short_dir):
    data_dir = os.path.join(short_dir, "d")
    os.symlink(prepared, data_dir)
    runs_root = os.path.join(short_dir, "r")
    write_yaml(pathlib.Path(short_dir, "run.yaml"),
               {"name": "cli", "data": {"data_dir": data_dir}, "model": {"image_size": 64},
                "scheduler": {"folds": [0, 1], "runs_root": runs_root}})
    result = scheduler("run", os.path.join(short_dir, "run.yaml"), "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert lines[0] == "plan: cli on a local Ray instance"
    assert lines[1] == "data: %s" % data_dir
    assert lines[2] == "run directory: %s" % os.path.join(runs_root, "cli-<time>")
    rows = body_rows(result.stdout)
    assert sorted(rows) == ["0", "1"], result.stdout
    for fold in (0, 1):
        data, resource, output = rows[str(fold)][1:]
        assert data == "%d/%d/%d" % manifest_counts(prepared, fold), data
        assert resource == "cpu {CPU: 1}"
        assert output == "fold_%d/" % fold, output
    assert not os.path.exists(runs_root)
    assert sorted(os.listdir(short_dir)) == ["d", "run.yaml"]
    assert [line for line in result.stderr.splitlines() if line.strip() and not RAY_LOG_LINE.match(line)] == []


def test_from_any_directory_relative_paths_are_the_working_directory_s(prepared, short_dir):
    """The project is installed (`make`), so `python -m scheduler` runs outside the
    checkout; a config's relative paths resolve against where the command runs."""
    os.symlink(prepared, os.path.join(short_dir, "d"))
    write_yaml(pathlib.Path(short_dir, "run.yaml"), {"name": "cli", "data": {"data_dir": "d"},
                                                     "model": {"image_size": 64},
                                                     "scheduler": {"folds": [0], "runs_root": "r"}})
    result = scheduler("run", "run.yaml", "--dry-run", cwd=short_dir)
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert lines[1] == "data: %s" % os.path.join(short_dir, "d")
    assert lines[2] == "run directory: %s" % os.path.join(short_dir, "r", "cli-<time>")


@pytest.mark.parametrize("width, data_dir, run_dir", [
    (120, "/mnt/nfs/datasets/adience/prepared-227", "/mnt/nfs/experiments/lmtcnn/runs/cv5-<time>"),
    (80, "data/adience", "runs/cv5-<time>"),  # configs/cv5.yaml's own paths
])
def test_plan_rows_keep_counts_resource_and_paths(width, data_dir, run_dir):
    from lmtcnn.config import build_config
    from scheduler.config import RunConfig
    from scheduler.plan import plan_table

    config = build_config({"name": "cv5", "data": {"data_dir": data_dir}}, RunConfig)
    counts = {k: {"train": 11136, "val": 1242, "test": 3879} for k in range(5)}
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(plan_table(config, counts, "npu", {"CPU": 1, "NPU": 1}, run_dir, "10.0.0.1:6379"))
    text = console.file.getvalue()
    assert "…" not in text, text
    rows = body_rows(text)
    assert sorted(rows) == ["0", "1", "2", "3", "4"], text
    for fold in range(5):
        row = " ".join(rows[str(fold)])
        assert "11136/1242/3879" in row and "npu {CPU: 1, NPU: 1}" in row, text
        assert "fold_%d/" % fold in row, text
    # The shared paths stand once, above the table (a long one may fold).
    squeezed = "".join(text.split())
    assert "".join(run_dir.split()) in squeezed and "".join(data_dir.split()) in squeezed, text


def test_requests_no_node_can_hold_exit_2(prepared, tmp_path):
    # local_npus=0: the local Ray instance declares no NPU even on a host with /dev/davinci*.
    path = config_for(tmp_path, prepared, local_npus=0)
    cases = {"scheduler.device=npu": ["{CPU: 1, NPU: 1}", "scheduler.device"],
             "scheduler.cpus_per_fold=64": ["{CPU: 64}", "scheduler.cpus_per_fold"]}
    # Both start (and stop) their own local Ray instance; started together, they overlap.
    runs = {override: start_scheduler("run", path, "--set", override) for override in cases}
    for override, words in cases.items():
        result = finish(runs[override], timeout=60)
        assert result.returncode == 2, (override, result.stderr)
        line = error_line(result, ray_started=True)
        assert "no node of a local Ray instance can hold one fold's request" in line
        for word in words:
            assert word in line, line
    # No run directory is left behind (the two drivers, started in the same second, were
    # given two names; the runs root one of them made may stay, empty).
    runs = tmp_path / "runs"
    assert not runs.exists() or os.listdir(str(runs)) == []


# Ray 2.60 turns on token authentication for a new local instance, and another process's
# ray.init(address) is refused unless it sets RAY_AUTH_MODE=token; the helper's instance
# opts out. Ray 2.7.2 ignores the variable.
NO_TOKEN = {"RAY_AUTH_MODE": "disabled"}


def test_dry_run_joins_the_cluster_named_by_ray_address(prepared, tmp_path):
    """`ray job submit -- python -m scheduler run ...` (cluster/README.md) runs the driver with
    RAY_ADDRESS set to the cluster; the scheduler must join it rather than fail."""
    helper = subprocess.Popen(
        [sys.executable, "-c", "import sys, ray\n"
                               "context = ray.init(num_cpus=1, include_dashboard=False)\n"
                               "print(context.address_info['gcs_address'], flush=True)\n"
                               "sys.stdin.read()\n"],
        cwd=str(tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        universal_newlines=True, env=dict(os.environ, RAY_ADDRESS="local", **NO_TOKEN))
    try:
        address = helper.stdout.readline().strip()
        assert address, "the helper's Ray instance did not start"
        result = scheduler("run", config_for(tmp_path, prepared), "--dry-run",
                           env=dict(NO_TOKEN, RAY_ADDRESS=address), timeout=90)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("plan: cli on "), result.stdout
    finally:
        helper.stdin.close()  # the helper returns and shuts its Ray instance down
        try:
            helper.wait(timeout=60)
        except subprocess.TimeoutExpired:
            helper.kill()
            helper.wait()


@pytest.mark.parametrize("command", ["status", "table"])
def test_status_and_table_of_a_directory_that_is_no_run_exit_2(tmp_path, command):
    result = scheduler(command, str(tmp_path))
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    assert str(tmp_path) in line and "not a run directory" in line and "events.jsonl" in line
    assert result.stdout == ""
    missing = tmp_path / "absent"
    result = scheduler(command, str(missing))
    assert result.returncode == 2
    assert str(missing) in error_line(result)


def test_status_and_table_replay_a_run_directory(tmp_path):
    """A run whose driver is gone: status calls the unfinished fold interrupted and says
    how to resume; table shows the finished fold's numbers and the other's state."""
    from lmtcnn import events as ev
    from scheduler import state as st

    run_dir = tmp_path / "cv5-1"
    run_dir.mkdir()
    metrics = {"count": 117, "age_top1": 0.523, "age_top2": 0.75, "age_one_off": 0.9, "gender": 0.812,
               "age_confusion": [[0] * 8 for _ in range(8)], "step": 150, "wall_s": 95.0}
    events = [ev.make(st.RUN_STARTED, name="cv5", run_dir=str(run_dir), folds=[0, 1], placement="cpu {CPU: 1}",
                      where="a local Ray instance", resumed=False)]
    for fold in (0, 1):
        events += [ev.make(st.FOLD_QUEUED, fold=fold, attempt=1),
                   ev.make(ev.FOLD_STARTED, fold=fold, attempt=1, host="vm", device_label="CPU", device="cpu",
                           start_step=0, total_steps=150, train_images=391)]
    events += [ev.make(ev.FOLD_FINISHED, fold=0, attempt=1, host="vm", device_label="CPU", step=150,
                       metrics=metrics, wall_s=95.0),
               ev.make(ev.STEP_DONE, fold=1, attempt=1, host="vm", device_label="CPU", step=60, total_steps=150,
                       loss=1.5, learning_rate=0.01, images_per_s=300.0)]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + '{"event": "step_d')
    (run_dir / "run.json").write_text(json.dumps({"run_id": "abc", "host": "vm", "pid": 1, "ended": "interrupted"}))

    result = scheduler("status", str(run_dir))
    assert result.returncode == 0, result.stderr
    rows = body_rows(result.stdout)
    assert rows["0"][1:5] == ["done", "1", "vm:CPU", "150/150"], result.stdout
    assert rows["0"][5].startswith("age top-1 52.30%, gender 81.20%, 1:35"), result.stdout
    assert rows["1"][1:5] == ["interrupted", "1", "vm:CPU", "60/150"], result.stdout
    assert "resume with: python -m scheduler run --resume %s" % run_dir in result.stdout

    result = scheduler("table", str(run_dir))
    assert result.returncode == 0, result.stderr
    rows = body_rows(result.stdout)
    assert rows["0"][1:5] == ["52.30", "75.00", "90.00", "81.20"], result.stdout
    # The unfinished fold shows a state word and no number.
    assert rows["1"][1].isalpha() and rows["1"][2:6] == ["", "", "", ""], result.stdout
    assert rows["mean"][1] == "52.30"


def make_run_dir(tmp_path, data_dir):
    """A run directory as the driver leaves it: config.yaml holding the resolved configuration."""
    from lmtcnn.config import dump_config
    from scheduler.config import load_run_config

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = load_run_config(config_for(tmp_path, data_dir))
    (run_dir / "config.yaml").write_text(dump_config(config))
    (run_dir / "events.jsonl").write_text("")
    return run_dir


def test_resume_refuses_a_training_override(tmp_path):
    run_dir = make_run_dir(tmp_path, tmp_path / "data")
    result = scheduler("run", "--resume", str(run_dir), "--set", "train.max_steps=5")
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    assert "--set train.max_steps=5" in line and "only scheduler.* keys may change" in line


@pytest.mark.parametrize("args, words", [
    (["--resume", "{run}", "{config}"], ["not both"]),
    (["--resume", "{run}", "--run-dir", "{tmp}/elsewhere"], ["--run-dir", "stays in"]),
    (["--resume", "{tmp}/absent", "--set", "scheduler.max_retries=1"], ["absent", "not a run directory"]),
])
def test_resume_misuse_exits_2(tmp_path, args, words):
    run_dir = make_run_dir(tmp_path, tmp_path / "data")
    names = {"run": str(run_dir), "config": config_for(tmp_path, tmp_path / "data"), "tmp": str(tmp_path)}
    result = scheduler("run", *[a.format(**names) for a in args])
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    for word in words:
        assert word in line
