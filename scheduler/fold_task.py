"""The Ray task of one fold attempt: claim the device, set its environment, train.

Runs in a fresh worker process (max_calls=1), so TensorFlow state and device memory die
with the task, and the device variables are set before TensorFlow is first imported.
"""

import errno
import fcntl
import json
import os
import signal
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
    try:
        # Another user's lock file is opened as it is: with fs.protected_regular (the
        # default of most distributions) O_CREAT on it in /tmp is refused.
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o666)
            os.fchmod(fd, 0o666)  # readable by everyone: another user's Ray instance must see it held
        except FileExistsError:  # created meanwhile by another fold
            fd = os.open(path, os.O_RDONLY)
    except PermissionError:
        raise RuntimeError("%s: cannot open the lock of %s %d on %s; let every user read it (chmod 666) or set "
                           "%s to a shared directory" % (path, placement.upper(), index, socket.gethostname(),
                                                         LOCK_DIR_ENV))
    lock = os.fdopen(fd, "r")
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
    return stage_dir(session["run_dir"], session["driver_host"], fold, session.get("run_key", "")), False


class Reporter:
    """The fold attempt's `report`: tags each event (fold, attempt, host, device, pid, a
    sequence number), writes it to the fold's log.txt once that is open, and sends it to
    the progress channel; the finished event is kept for the task's result instead."""

    def __init__(self, fold, attempt, channel, fault_plan):
        self.tags = {"fold": fold, "attempt": attempt, "host": socket.gethostname(),
                     "node_id": ray.get_runtime_context().get_node_id(), "device_label": "", "pid": os.getpid()}
        self.channel, self.fault_plan = channel, fault_plan
        self.sequence, self.log, self.finished, self.stopped = 0, None, {}, False

    def __call__(self, event):
        from scheduler.dashboard import format_event

        event.update(self.tags)
        if event["event"] != ev.FOLD_FAILED:  # numbered: what the driver receives
            self.sequence += 1
            event["seq"] = self.sequence
        if self.log is not None:
            self.log.write(format_event(event) + "\n")
            self.log.flush()
        if event["event"] == ev.FOLD_FINISHED:
            self.finished.update(event)
        elif event["event"] != ev.FOLD_FAILED:  # the driver reports failures, retried or final
            self.stopped = self.stopped or event["event"] == ev.FOLD_STOPPED
            self.channel.push.remote(event)
        faults.after_event(self.fault_plan, event, self.channel)


def _allow_cancel():
    """Ray cancels a running task by simulating Ctrl-C in its worker (interrupt_main), which
    does nothing while SIGINT is ignored, as it is in every process that a shell started in
    the background, and so in a local Ray instance such a driver started: restore it."""
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the worker's main thread: nothing to restore from here
        pass


@ray.remote(max_calls=1, max_retries=0)
def run_fold(config_dict, fold, attempt, session, placement, channel, fault_plan=None):
    """Train one fold attempt.

    Args: session = {"run_dir", "run_id", "driver_host", "run_key"} of the driver.
    Returns: {"finished": event, "archive": tar bytes or None, "staged": path or None,
      "node_id": node}; the archive (with the staged path it came from) when this host
      does not see the run directory.
    Raises: FoldError (retryable or not) for any error; KeyboardInterrupt when cancelled.
    Progress goes to `channel` tagged with fold, attempt, host, device and a sequence
    number per attempt. The finished event travels in the return value instead, so the
    driver records it exactly once, even if the channel restarted meanwhile.
    """
    _allow_cancel()
    report = Reporter(fold, attempt, channel, fault_plan)
    # A word before any file is touched: from here on the driver's stall check hears the
    # attempt, also when it then hangs on a filesystem that does not answer.
    report(ev.make(ev.MESSAGE, text="attempt started on %s" % report.tags["host"]))
    lock = None
    try:
        index = device_index(placement)
        report.tags["device_label"] = "CPU" if index is None else "%s%d" % (placement.upper(), index)
        lock = claim_device(placement, index)
        set_device_env(placement, index)
        return _train_fold(config_dict, fold, attempt, session, placement, report)
    except KeyboardInterrupt:  # cancelled (Ctrl-C on the driver)
        if not report.stopped:  # before the trainer's session existed: nothing to save, but say so
            report(ev.make(ev.FOLD_STOPPED, step=None))
        raise
    except FoldError:
        raise
    except Exception as e:  # also outside training (the log, the staging directory): classified
        raise classify(e) from None
    finally:
        if lock is not None:  # released now: the process may outlive the task a little
            lock.close()
        # The driver records the task's end from its result: progress must be there first.
        try:
            ray.get(channel.flush.remote(), timeout=30)
        except Exception:  # a lost channel must not hide how the fold ended
            pass


def _train_fold(config_dict, fold, attempt, session, placement, report):
    from lmtcnn.config import apply_override, build_config
    from scheduler.config import RunConfig

    for key, value in faults.config_overrides(report.fault_plan, fold, attempt).items():
        apply_override(config_dict, "%s=%s" % (key, json.dumps(value)))
    config = build_config(config_dict, RunConfig)
    if config.train.device == "auto":
        config.train.device = placement
    if config.train.device == "cpu" and not config.train.cpu_threads:
        config.train.cpu_threads = config.scheduler.cpus_per_fold
    if not config.train.preprocess_threads:
        config.train.preprocess_threads = config.scheduler.cpus_per_fold
    staging = faults.staging(report.fault_plan, fold, attempt)
    workdir, shared = fold_workdir(session, fold, pretend_unshared=staging is not None)
    os.makedirs(workdir, exist_ok=True)
    host, label = report.tags["host"], report.tags["device_label"]

    with open(os.path.join(workdir, "log.txt"), "a", encoding="utf-8") as report.log:
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
        finally:
            report.log = None
    if shared:
        return {"finished": report.finished, "archive": None, "staged": None, "node_id": report.tags["node_id"]}
    # The staged copy stays until the driver has installed this one (scheduler.collect).
    archive = faults.tamper(pack_dir(workdir), staging)
    return {"finished": report.finished, "archive": archive, "staged": workdir, "node_id": report.tags["node_id"]}


@ray.remote(num_cpus=0, max_retries=0)
def remove_staged(path):
    from scheduler.collect import remove_staged as remove

    return remove(path)
