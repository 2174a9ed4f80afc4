"""The Ray driver: submit one task per fold, stream progress, retry, stop, write results."""

import io
import logging
import os
import signal
import tarfile
import threading
import time

from rich.live import Live

from lmtcnn import events as ev
from lmtcnn.config import config_to_dict, dump_config
from lmtcnn.errors import UserError
from scheduler import faults
from scheduler import placement as pl
from scheduler import rundir
from scheduler import state as st
from scheduler.dashboard import format_event, render
from scheduler.plan import ensure_data, plan_table
from scheduler.results import build_results, to_table, write_results

POLL_S = 0.25
NPU_SYSTEM_CONFIG = {"custom_unit_instance_resources": "neuron_cores,TPU,NPU"}


def connect(address, local_npus):
    """Join `address` (or $RAY_ADDRESS, which `ray job submit` sets), or start a local Ray
    instance. Returns True when we started it."""
    import ray

    if ray.is_initialized():
        return False
    # Worker output stays in each fold's log.txt; printed here it would tear the live view.
    options = dict(log_to_driver=False, logging_level=logging.WARNING)
    address = cluster_address(address)
    if address:
        ray.init(address=address, **options)
        return False
    if ray_version() >= (2, 10):
        npus = local_npus if local_npus >= 0 else None  # Ray finds Ascend devices itself
    else:
        npus = local_npus if local_npus >= 0 else visible_npu_count()
        # Without it Ray 2.7.2 gives every NPU task instance 0.
        options["_system_config"] = NPU_SYSTEM_CONFIG
    # "local": a new instance even when `ray start` left one running on this machine.
    ray.init(address="local", resources={pl.NPU: npus} if npus else None, **options)
    return True


def visible_npu_count():
    """NPUs this host lets us use: ASCEND_RT_VISIBLE_DEVICES when set, else /dev/davinci<N>."""
    import glob

    visible = os.environ.get("ASCEND_RT_VISIBLE_DEVICES", "").strip()
    if visible:
        return len(visible.split(","))
    return len(glob.glob("/dev/davinci[0-9]*"))


def cluster_address(configured):
    """The cluster to join: the configured one, else $RAY_ADDRESS; "" (or "local") for a
    new local instance."""
    address = configured or os.environ.get("RAY_ADDRESS", "")
    return "" if address == "local" else address


def ray_version():
    import ray

    return tuple(int(x) for x in ray.__version__.split(".")[:2])


class Run:
    """One session of a run directory: new, or resumed (its earlier events replayed)."""

    def __init__(self, config, run_dir, console, live, resumed):
        self.config, self.run_dir, self.console, self.live_mode = config, run_dir, console, live
        self.log = rundir.EventLog(run_dir)
        self.view = st.RunView()
        self.pending = {}  # ObjectRef -> (fold, attempt)
        self.notified_unshared = False
        self.stopping = False  # after Ctrl-C: nothing is retried or resubmitted
        # Fold attempts whose task has reported and not yet ended (finished, failed,
        # stopped or died): after Ctrl-C the driver waits for these to save and stop,
        # since Ray reports a cancelled task at once, before its handler has run.
        self.active = set()
        self.fault_plan = faults.load_plan()  # None outside the fault-matrix tests
        if resumed:
            for event in rundir.read_events(run_dir):
                st.apply(self.view, event)

    def emit(self, event):
        """Record an event: events.jsonl, the state, and a plain line when not live."""
        event.setdefault("time", time.time())
        if event["event"] == ev.MESSAGE and event.get("not_shared") and not self.notified_unshared:
            self.notified_unshared = True
            self.emit(ev.make(st.NOTICE, text=event["text"]))
        if "attempt" in event and "pid" in event:  # sent by a fold task
            key = (event["fold"], event["attempt"])
            if event["event"] in (ev.FOLD_STOPPED, ev.FOLD_FINISHED, ev.FOLD_FAILED):
                self.active.discard(key)
            else:
                self.active.add(key)
        self.log.append(event)
        st.apply(self.view, event)
        if not self.live_mode:
            self.console.print(format_event(event), highlight=False, markup=False, soft_wrap=True)

    def drain(self, channel):
        import ray

        for event in ray.get(channel.drain.remote()):
            self.emit(event)

    def submit(self, fold, attempt, placement, request, channel, run_id):
        from scheduler.fold_task import run_fold

        ref = run_fold.options(**pl.task_options(request)).remote(
            config_to_dict(self.config), fold, attempt, self.run_dir, run_id, placement, channel, self.fault_plan)
        self.pending[ref] = (fold, attempt)
        self.emit(ev.make(st.FOLD_QUEUED, fold=fold, attempt=attempt))

    def collect(self, ref, placement, request, channel, run_id):
        """Handle one finished task: record success, retry a lost worker, or fail the fold."""
        import ray
        from ray.exceptions import RayError, RayTaskError, TaskCancelledError

        fold, attempt = self.pending.pop(ref)
        try:
            result = ray.get(ref)
        except TaskCancelledError:
            return  # the fold reports its own stop (it stays in `active` until then)
        except RayTaskError as e:  # a Python error inside the fold: retrying would repeat it
            self.drain(channel)
            self.active.discard((fold, attempt))
            view = self.view.folds[fold]
            if not (view.state == "failed" and view.attempt == attempt):  # the trainer may have said so
                self.emit(ev.make(ev.FOLD_FAILED, fold=fold, attempt=attempt, reason=task_error_reason(e)))
            return
        except RayError as e:  # the worker process or its node died
            self.drain(channel)
            self.active.discard((fold, attempt))
            if self.stopping:
                return
            reason = "%s (attempt %d)" % (type(e).__name__, attempt)
            if attempt <= self.config.scheduler.max_retries:
                self.emit(ev.make(st.FOLD_RETRYING, fold=fold, attempt=attempt + 1, reason=reason))
                self.submit(fold, attempt + 1, placement, request, channel, run_id)
            else:
                self.emit(ev.make(ev.FOLD_FAILED, fold=fold, attempt=attempt,
                                  reason="%s; no retries left (scheduler.max_retries %d)"
                                         % (reason, self.config.scheduler.max_retries)))
            return
        if result["archive"] is not None:
            unpack(result["archive"], rundir.fold_dir(self.run_dir, fold))
        self.drain(channel)
        self.emit(result["finished"])

    def refresh(self, live):
        if live is not None:
            live.update(render(self.view, time.time()), refresh=True)


def task_error_reason(error):
    cause = getattr(error, "cause", None)
    if cause is not None:
        return "%s: %s" % (type(cause).__name__, str(cause).strip().splitlines()[-1] if str(cause).strip() else "")
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def unpack(archive, destination):
    os.makedirs(destination, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
        tar.extractall(destination)


def finished_folds(run_dir, folds):
    """Folds whose metrics.json exists: done in an earlier session, never run again."""
    from lmtcnn.files import read_json
    from lmtcnn.workdir import metrics_file

    done = {}
    for fold in folds:
        path = metrics_file(rundir.fold_dir(run_dir, fold))
        if os.path.isfile(path):
            done[fold] = read_json(path)
    return done


def run(config, console, resume_dir=None, live=False, dry_run=False):
    """Run (or resume) the configured folds. Returns the process exit status.

    Raises UserError for problems found before submission (data, resources, run dir).
    """
    import ray

    resolve_paths(config)
    if resume_dir and rundir.driver_alive(resume_dir):
        raise UserError("%s: its driver is still running (see run.json); watch it with "
                        "`python -m scheduler status %s`" % (resume_dir, resume_dir))
    counts = ensure_data(config, say=lambda text: console.print(text, highlight=False), generate=not dry_run)
    started_ray = connect(config.scheduler.address, config.scheduler.local_npus)
    try:
        where = cluster_address(config.scheduler.address) or "a local Ray instance"
        nodes = pl.alive_nodes()
        placement = pl.choose_placement(config.scheduler.device, nodes)
        if config.train.device in ("npu", "gpu") and placement != config.train.device:
            raise UserError("train.device %s: the folds are placed on %s (scheduler.device %s); set train.device "
                            "auto or %s" % (config.train.device, placement, config.scheduler.device, placement))
        request = pl.resource_request(placement, config.scheduler.cpus_per_fold)
        pl.check_feasible(request, nodes, where)
        if dry_run:
            target = resume_dir or config.scheduler.run_dir or os.path.join(
                config.scheduler.runs_root, "%s-<time>" % config.name)
            console.print(plan_table(config, counts, placement, request, os.path.abspath(target), where))
            return 0
        run_dir = resume_dir or rundir.new_run_dir(config)
        if not resume_dir:
            rundir.write_config(run_dir, dump_config(config))
        return _drive(config, console, run_dir, bool(resume_dir), live, placement, request, where, len(nodes))
    finally:
        if started_ray:
            ray.shutdown()


def resolve_paths(config):
    """Absolute input paths: fold tasks run in the Ray worker's directory, not the driver's."""
    config.data.data_dir = os.path.abspath(config.data.data_dir)
    if config.train.pretrained_checkpoint:
        config.train.pretrained_checkpoint = os.path.abspath(config.train.pretrained_checkpoint)


class StopRequest:
    """A stop asked of the driver: Ctrl-C (SIGINT), SIGTERM (`ray job stop`, systemd, kill)
    or SIGHUP (the SSH session or terminal closed). The first sets a flag the loop reads
    between steps, so no task result is half handled, and every running fold saves a
    checkpoint; a second raises KeyboardInterrupt and the folds are killed."""

    SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                signum = getattr(signal, name, None)
                if signum is not None:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def _drive(config, console, run_dir, resumed, live_mode, placement, request, where, node_count):
    from scheduler.channel import start_channel

    run_id = rundir.make_run_id()
    rundir.record_driver(run_dir, run_id)
    session = Run(config, run_dir, console, live_mode, resumed)
    folds = config.scheduler.folds
    session.emit(ev.make(st.RUN_STARTED, name=config.name, run_dir=run_dir, folds=folds,
                         placement="%s %s" % (placement, pl.format_request(request)), where=where,
                         resumed=resumed))
    if node_count > 1:
        session.emit(ev.make(st.NOTICE, text="%d nodes: keep the run directory on a filesystem every host "
                                             "mounts at the same path, or checkpoints die with their host"
                                             % node_count))
    done = finished_folds(run_dir, folds)
    for fold in folds:
        if fold in done:
            session.emit(ev.make(st.FOLD_SKIPPED, fold=fold, metrics=done[fold]))
    outcome = "crashed"  # until proven otherwise: run.json must not claim "finished"
    # Ray's own warnings (a worker died, memory pressure) print above the live view.
    live = Live(render(session.view, time.time()), console=console, auto_refresh=False,
                redirect_stdout=True, redirect_stderr=True) if live_mode else None
    try:
        with StopRequest() as stop:
            channel = start_channel()
            for fold in folds:
                if fold not in done:
                    attempt = session.view.folds[fold].attempt + 1 if fold in session.view.folds else 1
                    session.submit(fold, attempt, placement, request, channel, run_id)
            if live is not None:
                live.start()
            try:
                _watch(session, channel, placement, request, run_id, live, stop)
                if stop.requested:
                    _stop(session, channel, live, stop.signal_name)
                    outcome = "interrupted"
                else:
                    session.emit(ev.make(st.RUN_FINISHED))
                    outcome = "finished"
            finally:
                if live is not None:
                    session.refresh(live)
                    live.stop()
    finally:
        session.log.close()
        rundir.mark_ended(run_dir, outcome)
    if outcome == "interrupted":
        st.mark_interrupted(session.view)
    results = build_results(session.view)
    write_results(run_dir, results)
    console.print(to_table(results))
    console.print("results: %s/results.{md,csv,json}" % run_dir, highlight=False)
    if outcome == "interrupted":
        console.print("interrupted; resume with: python -m scheduler run --resume %s" % run_dir, highlight=False)
        return 130
    return 0 if all(row["state"] == "done" for row in results["folds"]) else 1


def _watch(session, channel, placement, request, run_id, live, stop):
    import ray

    while session.pending and not stop.requested:
        ready, _ = ray.wait(list(session.pending), num_returns=len(session.pending), timeout=POLL_S)
        session.drain(channel)
        for ref in ready:
            session.collect(ref, placement, request, channel, run_id)
        session.refresh(live)
    session.drain(channel)


def _stop(session, channel, live, signal_name):
    """Every running fold saves a checkpoint and stops; a second signal kills them."""
    import ray

    session.stopping = True
    session.emit(ev.make(st.NOTICE, text="%s: stopping; each running fold saves a checkpoint (Ctrl-C again to kill)"
                                         % signal_name))
    for ref in list(session.pending):
        ray.cancel(ref)
    deadline = time.time() + session.config.scheduler.stop_timeout_s
    try:
        while (session.pending or session.active) and time.time() < deadline:
            if session.pending:
                ready, _ = ray.wait(list(session.pending), num_returns=len(session.pending), timeout=POLL_S)
            else:
                ready = []
                time.sleep(POLL_S)
            session.drain(channel)
            for ref in ready:
                session.collect(ref, None, None, channel, None)
            session.refresh(live)
    except KeyboardInterrupt:
        pass
    for ref in list(session.pending):
        ray.cancel(ref, force=True)
        session.pending.pop(ref)
    try:
        session.drain(channel)
    except Exception:  # the channel may already be gone with a dying cluster
        pass
    session.emit(ev.make(st.RUN_INTERRUPTED, resume="python -m scheduler run --resume %s" % session.run_dir))
