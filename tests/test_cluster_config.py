"""Offline checks of cluster/: Ray's own `ray up` validation of ascend-hosts.yaml and
dry runs of the start scripts. Nothing here starts Ray or opens an SSH connection."""
import copy
import json
import os
import shlex
import subprocess
from pathlib import Path

import click
import jsonschema
import pytest
import yaml

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"


def load_config():
    with open(str(CLUSTER / "ascend-hosts.yaml")) as f:
        return yaml.safe_load(f)


def ray_up_offline(config):
    """What `ray up` does to the YAML before its first SSH connection.

    _bootstrap_config runs util.prepare_config (local.config.prepare_local, then
    util.fillout_defaults on Ray's local/defaults.yaml) and util.validate_config (JSON
    schema). Going through it hides that prepare_local returns a dict on Ray 2.7.2 but
    (dict, modified) on 2.60. no_config_cache=True keeps /tmp/ray-config-* out of it.
    """
    from ray.autoscaler._private.commands import _bootstrap_config

    return _bootstrap_config(copy.deepcopy(config), no_config_cache=True)


def test_config_passes_ray_up_validation():
    raw = load_config()
    done = ray_up_offline(raw)

    assert done["provider"]["type"] == "local"
    assert done["provider"]["head_ip"] == raw["provider"]["head_ip"]
    assert done["provider"]["worker_ips"] == raw["provider"]["worker_ips"]
    assert done["head_start_ray_commands"] == raw["head_start_ray_commands"]
    assert done["worker_start_ray_commands"] == raw["worker_start_ray_commands"]

    # Ray caps or tolerates mismatches with only a warning, so check them here.
    n = len(raw["provider"]["worker_ips"])
    assert raw["min_workers"] == raw["max_workers"] == n
    (node_type,) = done["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == n


def test_config_commands():
    raw = load_config()
    (head,) = raw["head_start_ray_commands"]
    (worker,) = raw["worker_start_ray_commands"]
    assert "cluster/start-head.sh" in head and "--dashboard-host 127.0.0.1" in head
    # Without it the head's autoscaler would never start the workers after `ray up`.
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "cluster/start-worker.sh" in worker and "$RAY_HEAD_IP" in worker
    setup = " ".join(raw["setup_commands"])
    for needed in ("/usr/local/Ascend/ascend-toolkit/set_env.sh",
                   "/usr/local/Ascend/cann/set_env.sh", "pip install -e /mnt/nfs/lmtcnn"):
        assert needed in setup


def _unknown_key(c):
    c["npu_count"] = 8


def _node_types(c):
    c["available_node_types"] = {"npu_host": {"node_config": {}, "resources": {"NPU": 8}}}


def _no_worker_ips(c):
    del c["provider"]["worker_ips"]


@pytest.mark.parametrize("breakage, error", [
    (_unknown_key, jsonschema.ValidationError),  # schema allows no extra top-level keys
    (_node_types, click.ClickException),  # prepare_local aborts on it
    (_no_worker_ips, click.ClickException),
])
def test_broken_config_is_rejected(breakage, error):
    config = load_config()
    breakage(config)
    with pytest.raises(error):
        ray_up_offline(config)


def run_script(name, *args, **env):
    # Start from a clean slate so the caller's shell can't leak settings into the test.
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("NPU_COUNT", "NPU_DEVICE_DIR", "RAY_HEAD_ADDRESS", "DRY_RUN", "ASCEND_RT_VISIBLE_DEVICES")}
    full_env.update(env)
    return subprocess.run(["bash", str(CLUSTER / name)] + list(args), env=full_env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=30)


def ray_start_options(result):
    """The dry run's `ray start` line as {option: value}; flags map to None."""
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "ray stop" and len(lines) == 2
    words = shlex.split(lines[1])
    assert words[:2] == ["ray", "start"]
    return dict(w.split("=", 1) if "=" in w else (w, None) for w in words[2:])


SYSTEM_CONFIG = {"custom_unit_instance_resources": "neuron_cores,TPU,NPU"}


def test_head_dry_run_with_npu_count():
    result = run_script("start-head.sh", "--dry-run", NPU_COUNT="3")
    assert '--resources=\'{"NPU": 3}\'' in result.stdout
    opts = ray_start_options(result)
    assert "--head" in opts and opts["--port"] == "6379"
    assert json.loads(opts["--resources"]) == {"NPU": 3}
    assert json.loads(opts["--system-config"]) == SYSTEM_CONFIG
    assert opts["--dashboard-host"] == "127.0.0.1"


def test_head_counts_davinci_devices(tmp_path):
    for name in ("davinci0", "davinci1", "davinci2", "davinci_manager", "devmm_svm"):
        (tmp_path / name).touch()
    opts = ray_start_options(run_script("start-head.sh", DRY_RUN="1", NPU_DEVICE_DIR=str(tmp_path)))
    assert json.loads(opts["--resources"]) == {"NPU": 3}


def test_visible_devices_limit_the_count(tmp_path):
    """A host started with ASCEND_RT_VISIBLE_DEVICES offers only those chips: a fold's
    device index picks from that list, so counting every /dev/davinci node would let a
    fold index past it."""
    for k in range(8):
        (tmp_path / ("davinci%d" % k)).touch()
    opts = ray_start_options(run_script("start-head.sh", DRY_RUN="1", NPU_DEVICE_DIR=str(tmp_path),
                                        ASCEND_RT_VISIBLE_DEVICES="4, 5,6"))
    assert json.loads(opts["--resources"]) == {"NPU": 3}
    opts = ray_start_options(run_script("start-worker.sh", "--dry-run", "10.0.0.1", NPU_DEVICE_DIR=str(tmp_path),
                                        ASCEND_RT_VISIBLE_DEVICES="2"))
    assert json.loads(opts["--resources"]) == {"NPU": 1}
    opts = ray_start_options(run_script("start-head.sh", DRY_RUN="1", NPU_COUNT="2",
                                        ASCEND_RT_VISIBLE_DEVICES="4,5,6"))
    assert json.loads(opts["--resources"]) == {"NPU": 2}  # an explicit count still wins


def test_no_npus_omits_resource(tmp_path):
    opts = ray_start_options(run_script("start-head.sh", "--dry-run", NPU_DEVICE_DIR=str(tmp_path)))
    assert "--resources" not in opts
    assert json.loads(opts["--system-config"]) == SYSTEM_CONFIG


def test_worker_dry_run():
    result = run_script("start-worker.sh", "--dry-run", "10.0.0.1", NPU_COUNT="3")
    assert '"NPU": 3' in result.stdout
    opts = ray_start_options(result)
    assert opts["--address"] == "10.0.0.1:6379"
    assert json.loads(opts["--resources"]) == {"NPU": 3}
    assert "--head" not in opts and "--system-config" not in opts


def test_worker_address_from_env():
    opts = ray_start_options(run_script("start-worker.sh", "--dry-run", NPU_COUNT="3",
                                        RAY_HEAD_ADDRESS="10.0.0.1:6380"))
    assert opts["--address"] == "10.0.0.1:6380"


def test_worker_without_address_exits_2():
    result = run_script("start-worker.sh", "--dry-run", NPU_COUNT="3")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("usage: start-worker.sh")
