"""The Ray task of one fold attempt: claim the device, set its environment, train.

Runs in a fresh worker process (max_calls=1), so TensorFlow state and device memory die
with the task, and the device variables are set before TensorFlow is first imported.
"""

import errno
import fcntl
import json
import os
import socket
import tempfile

import ray

from lmtcnn import events as ev
from lmtcnn.files import read_json
from scheduler import faults
from scheduler.collect import pack_dir, stage_dir
from scheduler.rundir import RUN_RECORD, fold_dir

LOCK_DIR_ENV = "LMTCNN_LOCK_DIR"  # tests give each session its own; default: the host's temp dir


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


class FoldError(Exception):
    """How a fold attempt failed, as plain data: the driver reads it without TensorFlow.

    retryable: a runtime or device error another attempt may not meet; False for the
    user's errors (bad data or configuration, a diverged loss) and a full disk, which a
    retry would only repeat.
    """

    def __init__(self, reason, retryable):
        super().__init__(reason)
        self.reason, self.retryable = reason, retryable

    def __reduce__(self):
        return FoldError, (self.reason, self.retryable)


def classify(error):
    """The FoldError for an exception raised by training."""
    from lmtcnn.errors import TrainingDiverged, UserError

    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    disk_full = getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error)
    # TF puts a header ("Graph execution error:") above the line that says what happened.
    telling = [line for line in lines if ("No space left" in line if disk_full else not line.endswith(":"))]
    text = (telling or lines or [""])[0][:400]
    reason = "%s: %s" % (type(error).__name__, text) if text else type(error).__name__
    if isinstance(error, (UserError, TrainingDiverged)):
        return FoldError(reason, retryable=False)
    if disk_full:
        return FoldError(reason + "; free disk space, then resume the run", retryable=False)
    return FoldError(reason, retryable=True)


def lock_dir():
    return os.environ.get(LOCK_DIR_ENV) or tempfile.gettempdir()


def claim_device(placement, index):
    """Hold a lock file for the device on this host while the task lives. A held lock means
    two folds were given one chip: Ray 2.7.2 does that when the head was started without
    the NPU system config, and two Ray instances on one host each hand out every chip.
    Returns the open lock file (keep it open), None on CPU placement."""
    if index is None:
        return None
    path = os.path.join(lock_dir(), "lmtcnn-%s%d.lock" % (placement, index))
    # Writable by everyone: another user's Ray instance must be able to find it held.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        os.fchmod(fd, 0o666)
    except OSError:
        pass  # another user's file: locking it still works
    lock = os.fdopen(fd, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise RuntimeError("%s %d on %s is already used by another fold (another Ray instance on this host, or "
                           "a Ray 2.7.2 head started without --system-config='{\"custom_unit_instance_resources\":"
                           "\"neuron_cores,TPU,NPU\"}', which cluster/start-head.sh sets)"
                           % (placement.upper(), index, socket.gethostname()))
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


def fold_workdir(session, fold, pretend_unshared=False):
    """(work directory, shared): the run's own fold directory when this host sees the
    driver's run directory (its run.json names this session), else a staging directory
    on this host, collected by the driver when the fold finishes."""
    try:
        shared = read_json(os.path.join(session["run_dir"], RUN_RECORD)).get("run_id") == session["run_id"]
    except (OSError, ValueError):
        shared = False
    shared = shared and not pretend_unshared
    if shared:
        return fold_dir(session["run_dir"], fold), True
    return stage_dir(session["run_dir"], session["driver_host"], fold), False


@ray.remote(max_calls=1, max_retries=0)
def run_fold(config_dict, fold, attempt, session, placement, channel, fault_plan=None):
    """Train one fold attempt.

    Args: session = {"run_dir", "run_id", "driver_host"} of the driver.
    Returns: {"finished": event, "archive": tar bytes or None, "staged": path or None,
      "node_id": node}; the archive (with the staged path it came from) when this host
      does not see the run directory.
    Raises: FoldError (retryable or not); KeyboardInterrupt when cancelled.
    Progress goes to `channel` tagged with fold, attempt, host, device and a sequence
    number per attempt. The finished event travels in the return value instead, so the
    driver records it exactly once, even if the channel restarted meanwhile.
    """
    host = socket.gethostname()
    node_id = ray.get_runtime_context().get_node_id()
    index = device_index(placement)
    label = "CPU" if index is None else "%s%d" % (placement.upper(), index)
    lock = claim_device(placement, index)
    try:
        set_device_env(placement, index)
        return _train_fold(config_dict, fold, attempt, session, placement, channel, host, node_id, label,
                           fault_plan)
    finally:
        if lock is not None:  # released now: the process may outlive the task a little
            lock.close()


def _train_fold(config_dict, fold, attempt, session, placement, channel, host, node_id, label, fault_plan):
    from lmtcnn.config import apply_override, build_config
    from scheduler.config import RunConfig
    from scheduler.dashboard import format_event

    for key, value in faults.config_overrides(fault_plan, fold, attempt).items():
        apply_override(config_dict, "%s=%s" % (key, json.dumps(value)))
    config = build_config(config_dict, RunConfig)
    if config.train.device == "auto":
        config.train.device = placement
    if config.train.device == "cpu" and not config.train.cpu_threads:
        config.train.cpu_threads = config.scheduler.cpus_per_fold
    if not config.train.preprocess_threads:
        config.train.preprocess_threads = config.scheduler.cpus_per_fold
    staging = faults.staging(fault_plan, fold, attempt)
    workdir, shared = fold_workdir(session, fold, pretend_unshared=staging is not None)
    os.makedirs(workdir, exist_ok=True)
    finished, stopped, sequence = {}, [], [0]

    with open(os.path.join(workdir, "log.txt"), "a", encoding="utf-8") as log:
        def report(event):
            event.update(fold=fold, attempt=attempt, host=host, node_id=node_id, device_label=label,
                         pid=os.getpid())
            if event["event"] != ev.FOLD_FAILED:  # numbered: what the driver receives
                sequence[0] += 1
                event["seq"] = sequence[0]
            log.write(format_event(event) + "\n")
            log.flush()
            if event["event"] == ev.FOLD_FINISHED:
                finished.update(event)
            elif event["event"] != ev.FOLD_FAILED:  # the driver reports failures, retried or final
                if event["event"] == ev.FOLD_STOPPED:
                    stopped.append(event)
                channel.push.remote(event)
            faults.after_event(fault_plan, event, channel)

        visible = {k: os.environ[k] for k in ("ASCEND_RT_VISIBLE_DEVICES", "ASCEND_DEVICE_ID",
                                              "CUDA_VISIBLE_DEVICES") if k in os.environ}
        report(ev.make(ev.MESSAGE, env=visible, text="%s on %s: %s" % (
            label, host, " ".join("%s=%s" % kv for kv in sorted(visible.items())) or "no device variables")))
        if not shared:
            report(ev.make(ev.MESSAGE, not_shared=True,
                           text="%s does not see the run directory %s: fold %d writes to %s and is collected "
                                "when it finishes; its checkpoints do not survive the loss of %s"
                                % (host, session["run_dir"], fold, workdir, host)))
        try:
            from lmtcnn.train import train  # TensorFlow loads here, after the device variables

            train(config, fold, workdir, report)
        except KeyboardInterrupt:  # cancelled (Ctrl-C on the driver)
            if not stopped:  # before the trainer's session existed: nothing to save, but say so
                report(ev.make(ev.FOLD_STOPPED, step=None))
            raise
        except Exception as e:
            raise classify(e) from None
        finally:
            # The driver records the task's end from its result: progress must be there first.
            try:
                ray.get(channel.flush.remote(), timeout=30)
            except Exception:  # a lost channel must not hide how the fold ended
                pass
    if shared:
        return {"finished": finished, "archive": None, "staged": None, "node_id": node_id}
    # The staged copy stays until the driver has installed this one (scheduler.collect).
    archive = pack_dir(workdir, extra_member=(staging or {}).get("extra_member"))
    return {"finished": finished, "archive": archive, "staged": workdir, "node_id": node_id}


@ray.remote(num_cpus=0, max_retries=0)
def remove_staged(path):
    from scheduler.collect import remove_staged as remove

    return remove(path)
