"""The Ray task of one fold attempt: claim the device, set its environment, train.

Runs in a fresh worker process (max_calls=1), so TensorFlow state and device memory die
with the task, and the device variables are set before TensorFlow is first imported.
"""

import fcntl
import io
import json
import os
import shutil
import socket
import tarfile
import tempfile

import ray

from lmtcnn import events as ev
from lmtcnn.files import read_json
from scheduler import faults
from scheduler.rundir import RUN_RECORD, fold_dir


def device_index(placement):
    """The device instance Ray assigned to this task, or None on CPU placement."""
    if placement == "cpu":
        return None
    key = "NPU" if placement == "npu" else "GPU"
    context = ray.get_runtime_context()
    if hasattr(context, "get_accelerator_ids"):  # Ray 2.10+: NPU and GPU are native
        ids = context.get_accelerator_ids().get(key)
        if ids:
            return int(ids[0])
    if placement == "gpu":
        return int(ray.get_gpu_ids()[0])
    # Ray 2.7.2 tracks instances of a custom resource only when the head lists it in
    # `custom_unit_instance_resources`; this private call is the only way to read them.
    ids = ray._private.worker.global_worker.core_worker.resource_ids().get(key, [])
    instance = int(ids[0][0]) if ids else 0
    # Ray counts instances 0..n-1; a host started with ASCEND_RT_VISIBLE_DEVICES=4,5,...
    # (inherited by this worker) means chip visible[instance].
    visible = os.environ.get("ASCEND_RT_VISIBLE_DEVICES", "").strip()
    return int(visible.split(",")[instance]) if visible else instance


def claim_device(node_id, placement, index):
    """Hold a lock file for (node, device) while the task lives; a held lock means Ray gave
    two running folds the same device, which happens on Ray 2.7.2 when the head was
    started without the NPU system config. Returns the open lock file (keep it open)."""
    if index is None:
        return None
    path = os.path.join(tempfile.gettempdir(), "lmtcnn-%s-%s%d.lock" % (node_id[:16], placement, index))
    lock = open(path, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise RuntimeError("%s %d on %s is already used by another fold: start the Ray head with "
                           "--system-config='{\"custom_unit_instance_resources\":\"neuron_cores,TPU,NPU\"}' "
                           "(cluster/start-head.sh does)" % (placement.upper(), index, socket.gethostname()))
    return lock


def set_device_env(placement, index):
    if placement == "npu":
        # One visible chip, renumbered to logical 0 for the Ascend runtime.
        os.environ["ASCEND_RT_VISIBLE_DEVICES"] = str(index)
        os.environ["ASCEND_DEVICE_ID"] = "0"
    elif placement == "gpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def fold_workdir(run_dir, run_id, fold):
    """(work directory, shared): the run's own fold directory when this host sees the
    driver's run directory, else a local staging directory collected at the end."""
    try:
        shared = read_json(os.path.join(run_dir, RUN_RECORD)).get("run_id") == run_id
    except (OSError, ValueError):
        shared = False
    if shared:
        return fold_dir(run_dir, fold), True
    return os.path.join(tempfile.gettempdir(), "lmtcnn-runs", run_id, "fold_%d" % fold), False


def pack_dir(path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(path, arcname=".")
    return buffer.getvalue()


@ray.remote(max_calls=1, max_retries=0)
def run_fold(config_dict, fold, attempt, run_dir, run_id, placement, channel, fault_plan=None):
    """Train one fold attempt; returns {"finished": event, "archive": tar bytes or None}.

    Progress goes to `channel` tagged with fold, attempt, host and device. The finished
    event travels in the return value instead, so the driver records it exactly once.
    """
    host = socket.gethostname()
    node_id = ray.get_runtime_context().get_node_id()
    index = device_index(placement)
    label = "CPU" if index is None else "%s%d" % (placement.upper(), index)
    lock = claim_device(node_id, placement, index)
    try:
        set_device_env(placement, index)
        return _train_fold(config_dict, fold, attempt, run_dir, run_id, placement, channel, host, node_id,
                           label, fault_plan)
    finally:
        if lock is not None:  # released now: the process may outlive the task a little
            lock.close()


def _train_fold(config_dict, fold, attempt, run_dir, run_id, placement, channel, host, node_id, label,
                fault_plan):
    from lmtcnn.config import apply_override, build_config
    from scheduler.config import RunConfig
    from scheduler.dashboard import format_event

    for key, value in faults.config_overrides(fault_plan, fold, attempt).items():
        apply_override(config_dict, "%s=%s" % (key, json.dumps(value)))
    config = build_config(config_dict, RunConfig)
    if config.train.device == "auto":
        config.train.device = placement
    if config.train.device == "cpu" and not config.train.cpu_threads:
        config.train.cpu_threads = max(config.scheduler.cpus_per_fold, 1)
    workdir, shared = fold_workdir(run_dir, run_id, fold)
    os.makedirs(workdir, exist_ok=True)
    finished, stopped = {}, []

    with open(os.path.join(workdir, "log.txt"), "a", encoding="utf-8") as log:
        def report(event):
            event.update(fold=fold, attempt=attempt, host=host, node_id=node_id, device_label=label,
                         pid=os.getpid())
            log.write(format_event(event) + "\n")
            log.flush()
            if event["event"] == ev.FOLD_FINISHED:
                finished.update(event)
            else:
                if event["event"] == ev.FOLD_STOPPED:
                    stopped.append(event)
                channel.push.remote(event)
            faults.after_event(fault_plan, event)

        visible = {k: os.environ[k] for k in ("ASCEND_RT_VISIBLE_DEVICES", "ASCEND_DEVICE_ID",
                                              "CUDA_VISIBLE_DEVICES") if k in os.environ}
        report(ev.make(ev.MESSAGE, env=visible, text="%s on %s: %s" % (
            label, host, " ".join("%s=%s" % kv for kv in sorted(visible.items())) or "no device variables")))
        if not shared:
            report(ev.make(ev.MESSAGE, not_shared=True,
                           text="%s does not see the run directory %s: fold %d writes to %s and is collected "
                                "when it finishes; its checkpoints do not survive the loss of %s"
                                % (host, run_dir, fold, workdir, host)))
        try:
            from lmtcnn.train import train  # TensorFlow loads here, after the device variables

            train(config, fold, workdir, report)
        except KeyboardInterrupt:  # cancelled (Ctrl-C on the driver)
            if not stopped:  # before the trainer's session existed: nothing to save, but say so
                report(ev.make(ev.FOLD_STOPPED, step=None))
            raise
        finally:
            # The driver records the task's end from its result: progress must be there first.
            try:
                ray.get(channel.flush.remote(), timeout=30)
            except Exception:  # a lost channel must not hide how the fold ended
                pass
    if shared:
        return {"finished": finished, "archive": None}
    archive = pack_dir(workdir)
    shutil.rmtree(workdir, ignore_errors=True)  # the driver's copy is the one that counts
    return {"finished": finished, "archive": archive}
