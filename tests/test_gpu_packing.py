"""Several folds on one GPU (scheduler.folds_per_gpu): the request Ray gets, the memory cap
TensorFlow gets, the device locks, the plan, the dashboard, and two real fold tasks
sharing one GPU that a local Ray instance declares (no GPU needed: TensorFlow trains on
the CPU, while Ray places, numbers and exports the GPU as it would a real one).
"""

import io
import os
import subprocess
import sys
import threading

import pytest
import ray
from rich.console import Console

from conftest import ROOT, quiet_console, run_config, write_faults
from lmtcnn.config import build_config
from lmtcnn.errors import UserError
from scheduler import dashboard, rundir
from scheduler import placement as pl
from scheduler import state as st
from scheduler.config import RunConfig
from scheduler.driver import NPU_SYSTEM_CONFIG, run
from scheduler.fold_task import claim_device

GIVE_UP_S = 180  # only unblocks a run whose folds could not run together; never asserted on


@pytest.fixture(scope="module")
def one_gpu():
    """A real local Ray instance declaring one GPU (and one NPU, which `auto` prefers)."""
    options = dict(num_cpus=2, num_gpus=1, resources={pl.NPU: 1}, log_to_driver=False, include_dashboard=False)
    if tuple(int(x) for x in ray.__version__.split(".")[:2]) < (2, 10):
        options["_system_config"] = NPU_SYSTEM_CONFIG
    # "local": a new instance even when another `ray start` cluster runs on this machine.
    ray.init(address="local", **options)
    yield
    ray.shutdown()


def scheduler_config(**scheduler):
    return build_config({"scheduler": scheduler}, RunConfig)


# -- configuration ---------------------------------------------------------------------

@pytest.mark.parametrize("scheduler, train, words", [
    ({"folds_per_gpu": 0}, {}, ["scheduler.folds_per_gpu", "from 1"]),
    ({"folds_per_gpu": -2}, {}, ["scheduler.folds_per_gpu", "from 1"]),
    ({"folds_per_gpu": 9}, {}, ["scheduler.folds_per_gpu", "to 8"]),
    ({"folds_per_gpu": 2, "device": "npu"}, {}, ["scheduler.folds_per_gpu", "GPUs only", "folds_per_gpu 1"]),
    ({"folds_per_gpu": 2}, {"gpu_memory_fraction": 0.6}, ["train.gpu_memory_fraction", "1/2", "set it to 0"]),
    ({}, {"gpu_memory_fraction": 1.5}, ["train.gpu_memory_fraction", "[0, 1]"]),
])
def test_bad_sharing_settings_are_one_line_naming_the_key(scheduler, train, words):
    with pytest.raises(UserError) as e:
        build_config({"scheduler": scheduler, "train": train}, RunConfig)
    message = str(e.value)
    assert e.value.exit_status == 2 and "\n" not in message
    for word in words:
        assert word in message


def test_sharing_settings_that_are_accepted():
    assert scheduler_config().scheduler.folds_per_gpu == 1
    for device in ("auto", "gpu", "cpu"):  # auto decides at placement time; cpu ignores it
        assert scheduler_config(device=device, folds_per_gpu=3).scheduler.folds_per_gpu == 3
    config = build_config({"scheduler": {"folds_per_gpu": 2}, "train": {"gpu_memory_fraction": 0.4}}, RunConfig)
    assert config.train.gpu_memory_fraction == 0.4


def test_npu_with_two_folds_per_gpu_exits_2_with_one_line(tmp_path):
    path = tmp_path / "npu.yaml"
    path.write_text("scheduler:\n  device: npu\n  folds_per_gpu: 2\n")
    result = subprocess.run([sys.executable, "-m", "scheduler", "run", str(path), "--dry-run"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                            env=dict(os.environ, RAY_ADDRESS="local"), timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "scheduler.folds_per_gpu" in lines[0]
    assert "folds_per_gpu 1" in lines[0] and result.stdout == ""


# -- what Ray and TensorFlow are asked for ---------------------------------------------

@pytest.mark.parametrize("folds_per_gpu", range(1, 9))
def test_n_shares_fit_one_gpu_in_rays_units_and_memory_leaves_headroom(folds_per_gpu):
    share = pl.resource_request("gpu", 2, folds_per_gpu)["GPU"]
    # Ray books 1/10000 units: what we ask is already in them, and N of them fit one GPU.
    assert share * pl.RAY_RESOURCE_UNIT == int(share * pl.RAY_RESOURCE_UNIT + 1e-9)
    assert folds_per_gpu * share <= 1 < (folds_per_gpu + 1) * share
    fraction = pl.gpu_memory_fraction(folds_per_gpu)
    if folds_per_gpu == 1:
        assert share == 1 and fraction == 0.0  # a GPU to itself: allow_growth as before
    else:
        assert 0 < fraction < 1.0 / folds_per_gpu and folds_per_gpu * fraction <= 1 - folds_per_gpu * 0.04


def test_an_npu_is_always_asked_whole_and_a_cpu_fold_asks_no_gpu():
    assert pl.resource_request("npu", 12, 4) == {"CPU": 12, pl.NPU: 1}
    assert pl.resource_request("cpu", 2, 4) == {"CPU": 2}
    assert pl.task_options(pl.resource_request("gpu", 1, 3)) == {"num_cpus": 1, "num_gpus": 0.3333}
    assert pl.format_request(pl.resource_request("gpu", 1, 2)) == "{CPU: 1, GPU: 0.5}"
    assert "one fold per chip" in pl.placement_note("npu", 2)
    assert "CPUs" in pl.placement_note("cpu", 2)
    assert pl.placement_note("gpu", 2) == pl.placement_note("npu", 1) == ""


def test_session_config_caps_gpu_memory_at_the_fold_share():
    from lmtcnn.device import session_config

    shared = session_config("gpu", 1, gpu_memory_fraction=pl.gpu_memory_fraction(2))
    assert shared.gpu_options.per_process_gpu_memory_fraction == pytest.approx(0.45)
    assert shared.gpu_options.allow_growth  # up to the cap, as it is used
    alone = session_config("gpu", 1)
    assert alone.gpu_options.per_process_gpu_memory_fraction == 0 and alone.gpu_options.allow_growth
    assert session_config("cpu", 1, gpu_memory_fraction=0.45).device_count["GPU"] == 0


def test_shared_gpu_locks_take_n_folds_and_refuse_more_or_an_exclusive_one(tmp_path, monkeypatch):
    monkeypatch.setenv("LMTCNN_LOCK_DIR", str(tmp_path))
    first, second = claim_device("gpu", 0, shares=2), claim_device("gpu", 0, shares=2)
    try:
        with pytest.raises(RuntimeError, match="already runs 2 folds"):
            claim_device("gpu", 0, shares=2)
        with pytest.raises(RuntimeError, match="GPU 0 on .* is already used"):
            claim_device("gpu", 0)  # a fold that expects the GPU to itself
    finally:
        first.close()
    third = claim_device("gpu", 0, shares=2)  # the freed share
    second.close()
    third.close()
    alone = claim_device("gpu", 0)
    try:
        with pytest.raises(RuntimeError, match="folds_per_gpu differs"):
            claim_device("gpu", 0, shares=2)
    finally:
        alone.close()


# -- the dashboard -----------------------------------------------------------------------

def started(fold, host, label, state_time):
    return {"event": "fold_started", "time": state_time, "fold": fold, "attempt": 1, "host": host,
            "device_label": label, "device": "gpu", "start_step": 0, "total_steps": 100}


def test_dashboard_marks_a_gpu_that_running_folds_share():
    view = st.RunView(name="cv5", run_dir="/runs/cv5")
    st.apply(view, {"event": st.RUN_STARTED, "time": 0.0, "folds": [0, 1, 2, 3], "name": "cv5",
                    "run_dir": "/runs/cv5"})
    for fold, label in ((0, "GPU0"), (1, "GPU1"), (2, "GPU0"), (3, "GPU1")):
        st.apply(view, started(fold, "gpu-host", label, 1.0))
    st.apply(view, {"event": "fold_finished", "time": 2.0, "fold": 3, "attempt": 1, "step": 100,
                    "metrics": {"age_top1": 0.5, "age_top2": 0.7, "gender": 0.8}, "wall_s": 1.0})
    for width in (80, 60):
        out = io.StringIO()
        Console(file=out, width=width, height=30, color_system=None).print(dashboard.render(view, 3.0))
        rows = {line.split("│")[1].strip(): line for line in out.getvalue().splitlines()
                if line.count("│") > 2 and line.split("│")[1].strip().isdigit()}
        assert "GPU0 ×2" in rows["0"] and "GPU0 ×2" in rows["2"]
        assert "×" not in rows["1"] and "×" not in rows["3"]  # GPU1 runs one fold now
        assert max(len(line) for line in out.getvalue().splitlines()) <= width


# -- two real folds on one declared GPU --------------------------------------------------

def test_two_folds_share_one_gpu_at_once(prepared, tmp_path, monkeypatch, one_gpu):
    run_dir = tmp_path / "run"
    go = str(tmp_path / "go")
    # Each fold waits after it started until both have: two folds that could not share
    # the GPU would never both start (until GIVE_UP_S lets the first one go on).
    write_faults(tmp_path, [{"fold": k, "event": "fold_started", "action": "hold", "until": go} for k in (0, 1)],
                 monkeypatch)
    config = run_config(prepared, run_dir, [0, 1], scheduler={"device": "gpu", "folds_per_gpu": 2},
                        train={"max_steps": 4})
    both_started = threading.Event()

    def release_when_both_started():
        path = os.path.join(str(run_dir), "events.jsonl")
        while not both_started.wait(0.2):
            events = rundir.read_events(str(run_dir)) if os.path.exists(path) else []
            if len({e["fold"] for e in events if e["event"] == "fold_started"}) == 2:
                both_started.set()
        open(go, "w").close()

    watcher = threading.Thread(target=release_when_both_started, daemon=True)
    watcher.start()
    give_up = threading.Timer(GIVE_UP_S, both_started.set)  # the folds then run one after the other
    give_up.start()
    try:
        assert run(config, quiet_console(), report=False) == 0
    finally:
        give_up.cancel()
        both_started.set()
        watcher.join(5)

    events = rundir.read_events(str(run_dir))
    assert not [e for e in events if e["event"] in ("fold_retrying", "fold_failed")], [
        e for e in events if e["event"] in ("fold_retrying", "fold_failed")]
    assert events[0]["placement"] == "gpu {CPU: 1, GPU: 0.5}"
    starts = [e for e in events if e["event"] == "fold_started"]
    finishes = [e for e in events if e["event"] == "fold_finished"]
    assert len(starts) == 2 and len(finishes) == 2
    # Both started before either finished: they ran at the same time, on the same GPU.
    assert events.index(starts[1]) < events.index(finishes[0]), "the two folds did not run at the same time"
    assert {(e["node_id"], e["device_label"]) for e in starts} == {(starts[0]["node_id"], "GPU0")}
    envs = [e for e in events if e["event"] == "message" and "env" in e]
    assert [e["env"].get("CUDA_VISIBLE_DEVICES") for e in envs] == ["0", "0"]  # as each fold's process sees it
    assert [e["gpu_memory_fraction"] for e in envs] == [0.45, 0.45]
    assert all("up to 0.45 of it" in e["text"] for e in envs)
    assert "up to 0.45 of it" in (run_dir / "fold_0" / "log.txt").read_text()

    # The dashboard at the moment both ran shows the GPU shared.
    view = st.RunView()
    for e in events[:events.index(starts[1]) + 1]:
        st.apply(view, e)
    out = io.StringIO()
    Console(file=out, width=80, height=24, color_system=None).print(dashboard.render(view, starts[1]["time"]))
    assert out.getvalue().count("GPU0 ×2") == 2


def test_dry_run_plan_shows_the_share_and_auto_on_npus_says_it_is_ignored(prepared, tmp_path, one_gpu):
    out = io.StringIO()
    console = Console(file=out, width=140, color_system=None)
    config = run_config(prepared, tmp_path / "run", [0, 1], scheduler={"device": "gpu", "folds_per_gpu": 2})
    assert run(config, console, dry_run=True) == 0
    plan = out.getvalue()
    assert "gpu {CPU: 1, GPU: 0.5}" in plan and "up to 0.45 of its GPU (2 folds share each GPU)" in plan
    assert not os.path.exists(str(tmp_path / "run"))

    out.truncate(0)
    out.seek(0)
    config = run_config(prepared, tmp_path / "run", [0], scheduler={"device": "auto", "folds_per_gpu": 2})
    assert run(config, console, dry_run=True) == 0  # this instance offers an NPU: auto takes it
    plan = out.getvalue()
    assert "npu {CPU: 1, NPU: 1}" in plan
    assert plan.count("scheduler.folds_per_gpu 2 applies to GPUs only and is ignored") == 1
