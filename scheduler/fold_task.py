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
import threading
import time

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


class DeviceClaim:
    """The lock files a fold holds on its device while its task lives; close() releases them."""

    def __init__(self, files):
        self.files = files

    def close(self):
        for f in self.files:
            f.close()


def claim_device(placement, index, shares=1):
    """Hold a lock file for the device on this host while the task lives. A held lock means
    two folds were given one chip: Ray 2.7.2 does that when the head was started without
    the NPU system config, and two Ray instances on one host each hand out every chip.
    shares: folds Ray places on the device at once (scheduler.folds_per_gpu): each holds the
    device's lock shared, which a fold with the device to itself would hold exclusively,
    and one of `shares` slot locks, so a further fold (another Ray instance) is refused too.
    Returns the DeviceClaim (keep it until the task ends), None on CPU placement."""
    if index is None:
        return None
    name = os.path.join(lock_dir(), "lmtcnn-%s%d" % (placement, index))
    lock = _open_lock(name + ".lock", placement, index)
    try:
        fcntl.flock(lock, (fcntl.LOCK_SH if shares > 1 else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise RuntimeError(_taken(placement, index))
    if shares == 1:
        return DeviceClaim([lock])
    for slot in range(shares):
        held = _open_lock("%s-share%d.lock" % (name, slot), placement, index)
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            held.close()
            continue
        return DeviceClaim([lock, held])
    lock.close()
    raise RuntimeError("%s %d on %s already runs %d folds (scheduler.folds_per_gpu %d): another Ray instance on "
                       "this host places folds on it too" % (placement.upper(), index, socket.gethostname(), shares,
                                                             shares))


def _open_lock(path, placement, index):
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
    return os.fdopen(fd, "r")


def _taken(placement, index):
    where = "%s %d on %s is already used by another fold" % (placement.upper(), index, socket.gethostname())
    if placement == "gpu":
        return where + (" (another Ray instance on this host, or a run whose scheduler.folds_per_gpu differs: a "
                        "fold with a GPU to itself never shares it)")
    return where + (" (another Ray instance on this host, or a Ray 2.7.2 head started without "
                    "--system-config='{\"custom_unit_instance_resources\":\"neuron_cores,TPU,NPU\"}', which "
                    "cluster/start-head.sh sets)")


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
    the progress channel; the finished event is kept for the task's result instead.

    Sending: one actor call costs far more than one event (about 700 calls/s is all 20
    tasks got through the channel on 2 cores), so events travel in batches. An event goes
    at once when the task has no call to the channel unanswered, as every step event of a
    real fold does (they come seconds apart); while one is, step events wait here and a
    daemon thread sends them as one call when it is answered, or HOLD_S after the first
    of them came, whichever is first. Every other event (checkpoints, evaluations, the
    stop, messages) goes at once with whatever waits before it: those are the events a
    stop, a resume or the stall check relies on. `close` sends what is left and waits
    until the channel holds it, before the task returns."""

    # The longest a step event waits here while the channel is slow to answer (busy, or
    # restarting after its process died). Under the driver's POLL_S (0.25 s), so batching
    # never holds a report back past one turn of the driver's loop and never makes a fold
    # look quieter to the stall check; long enough that a burst leaves in a few calls.
    # A worker killed with events waiting loses at most this much of its reports, as it
    # loses a call still in flight (both show as an earlier last step, never a lost end).
    HOLD_S = 0.2
    # The most events in one call: a bound on its size (an event is a few hundred bytes).
    BATCH_MAX = 500

    def __init__(self, fold, attempt, channel, fault_plan):
        self.tags = {"fold": fold, "attempt": attempt, "host": socket.gethostname(),
                     "node_id": ray.get_runtime_context().get_node_id(), "device_label": "", "pid": os.getpid()}
        self.channel, self.fault_plan = channel, fault_plan
        self.sequence, self.log, self.finished, self.stopped = 0, None, {}, False
        # All sending happens under this lock, so calls leave in sequence order: Ray runs
        # one caller's calls to an actor in the order they were made, from any thread.
        self._cond = threading.Condition()
        self._waiting, self._first_at = [], None  # step events not yet sent; when the first came
        self._in_flight = None  # the last call to the channel, until it is answered
        self._flusher, self._closed = None, False

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
            self._send(event, at_once=event["event"] != ev.STEP_DONE)
        faults.after_event(self.fault_plan, event, self.channel)

    def _send(self, event, at_once):
        with self._cond:
            if not self._waiting:
                self._first_at = time.monotonic()
            self._waiting.append(event)
            if at_once or self._closed or self._in_flight is None or len(self._waiting) >= self.BATCH_MAX:
                self._push()
            if self._flusher is None and not self._closed:
                self._flusher = threading.Thread(target=self._flush_loop, name="lmtcnn-reporter", daemon=True)
                self._flusher.start()
            self._cond.notify()

    def _push(self):
        """Send what waits as one call (the lock held)."""
        if self._waiting:
            batch, self._waiting, self._first_at = self._waiting, [], None
            self._in_flight = self.channel.push_many.remote(batch)

    def _flush_loop(self):
        while True:
            with self._cond:
                while self._in_flight is None and not self._closed:
                    self._cond.wait()
                if self._in_flight is None:  # closed, nothing unanswered
                    return
                call = self._in_flight
                due = self._first_at + self.HOLD_S if self._waiting else time.monotonic() + self.HOLD_S
            # Outside the lock: the task goes on reporting while the call is answered.
            try:
                answered = bool(ray.wait([call], timeout=max(due - time.monotonic(), 0))[0])
            except Exception:  # Ray shutting down with the worker: send at the due time regardless
                answered = False
                time.sleep(max(due - time.monotonic(), 0))
            with self._cond:
                if answered and self._in_flight is call:
                    self._in_flight = None
                if self._waiting and (self._in_flight is None or time.monotonic() >= self._first_at + self.HOLD_S):
                    self._push()

    def close(self, timeout):
        """Send what waits, stop the thread, and wait until the channel holds every event
        sent (calls from one caller run in order, so its `flush` returns after them).
        Raises what ray.get raises (the channel lost, or slower than `timeout`)."""
        with self._cond:
            self._push()
            self._closed = True
            self._cond.notify()
            done = self.channel.flush.remote()
        ray.get(done, timeout=timeout)


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
        shares = config_dict.get("scheduler", {}).get("folds_per_gpu", 1) if placement == "gpu" else 1
        lock = claim_device(placement, index, shares)
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
            report.close(timeout=30)
        except Exception:  # a lost channel must not hide how the fold ended
            pass


def _train_fold(config_dict, fold, attempt, session, placement, report):
    from lmtcnn.config import apply_override, build_config
    from scheduler.config import RunConfig
    from scheduler.placement import gpu_memory_fraction

    for key, value in faults.config_overrides(report.fault_plan, fold, attempt).items():
        apply_override(config_dict, "%s=%s" % (key, json.dumps(value)))
    config = build_config(config_dict, RunConfig)
    if config.train.device == "auto":
        config.train.device = placement
    if config.train.device == "cpu" and not config.train.cpu_threads:
        config.train.cpu_threads = config.scheduler.cpus_per_fold
    if not config.train.preprocess_threads:
        config.train.preprocess_threads = config.scheduler.cpus_per_fold
    if placement == "gpu" and not config.train.gpu_memory_fraction:
        # The fold's share of its GPU's memory: lmtcnn knows only the fraction, not why.
        config.train.gpu_memory_fraction = gpu_memory_fraction(config.scheduler.folds_per_gpu)
    staging = faults.staging(report.fault_plan, fold, attempt)
    workdir, shared = fold_workdir(session, fold, pretend_unshared=staging is not None)
    os.makedirs(workdir, exist_ok=True)
    host, label = report.tags["host"], report.tags["device_label"]

    with open(os.path.join(workdir, "log.txt"), "a", encoding="utf-8") as report.log:
        visible = {k: os.environ[k] for k in ("ASCEND_RT_VISIBLE_DEVICES", "ASCEND_DEVICE_ID",
                                              "CUDA_VISIBLE_DEVICES") if k in os.environ}
        said = " ".join("%s=%s" % kv for kv in sorted(visible.items())) or "no device variables"
        memory = {}
        if placement == "gpu":  # what the fold's TensorFlow may take of the GPU, as its log must show
            memory = {"gpu_memory_fraction": config.train.gpu_memory_fraction}
            fraction, folds = config.train.gpu_memory_fraction, config.scheduler.folds_per_gpu
            said += "; GPU memory: %s%s" % ("up to %g of it" % fraction if fraction else "grows as needed",
                                            ", a GPU shared by up to %d folds" % folds if folds > 1 else "")
        report(ev.make(ev.MESSAGE, env=visible, text="%s on %s: %s" % (label, host, said), **memory))
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
