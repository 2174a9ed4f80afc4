"""The Ray driver: submit one task per fold, stream progress, retry, stop, write results."""

import logging
import os
import signal
import socket
import threading
import time

from rich.live import Live

from lmtcnn import events as ev
from lmtcnn.config import dump_config
from lmtcnn.errors import UserError
from scheduler import placement as pl
from scheduler import rundir, runlock
from scheduler import state as st
from scheduler.dashboard import render
from scheduler.plan import ensure_data, plan_table
from scheduler.results import build_results, to_table, write_results
from scheduler.session import Session, finished_folds

POLL_S = 0.25
NPU_SYSTEM_CONFIG = {"custom_unit_instance_resources": "neuron_cores,TPU,NPU"}


def connect(address, local_npus, local_cpus=0):
    """Join `address` (or $RAY_ADDRESS, which `ray job submit` sets), or start a local Ray
    instance. Returns True when we started it."""
    import ray

    if ray.is_initialized():
        return False
    # Worker output stays in each fold's log.txt; printed here it would tear the live view.
    options = dict(log_to_driver=False, logging_level=logging.WARNING)
    address = cluster_address(address)
    if address:
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError("scheduler.address %s (or $RAY_ADDRESS): cannot join that Ray cluster (%s); start it "
                            "with cluster/start-head.sh, or leave the address empty for a local instance"
                            % (address, " ".join(str(e).split())[:200]))
        return False
    if ray_version() >= (2, 10):
        npus = local_npus if local_npus >= 0 else None  # Ray finds Ascend devices itself
    else:
        npus = local_npus if local_npus >= 0 else visible_npu_count()
        # Without it Ray 2.7.2 gives every NPU task instance 0.
        options["_system_config"] = NPU_SYSTEM_CONFIG
    if local_cpus:
        options["num_cpus"] = local_cpus
    # The local instance's processes share the driver's process group, so a closed SSH
    # session's SIGHUP reaches them too: they start with it ignored (inherited across
    # exec) and the driver alone decides how to stop. Ray already shields them from SIGINT.
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN) if _main_thread() else None
    try:
        # "local": a new instance even when `ray start` left one running on this machine.
        ray.init(address="local", resources={pl.NPU: npus} if npus else None, **options)
    finally:
        if previous is not None:
            signal.signal(signal.SIGHUP, previous)
    return True


def _main_thread():
    return threading.current_thread() is threading.main_thread()


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


def run(config, console, resume_dir=None, live=False, dry_run=False, force=False, report=True):
    """Run (or resume) the configured folds. Returns the process exit status.

    force: take over the run directory's lock from a driver on another host that is gone.
    Raises UserError for problems found before submission (data, resources, run dir).
    """
    import ray

    resolve_paths(config)
    counts = ensure_data(config, say=lambda text: console.print(text, highlight=False), generate=not dry_run)
    lock, created, started = None, [], False
    if not dry_run:  # locked before anything else starts: a refused driver starts no Ray
        if resume_dir:
            run_dir, lock = resume_dir, runlock.acquire(resume_dir, force)
        else:
            run_dir, lock, created = rundir.new_run_dir(config, force)
    try:
        started_ray = connect(config.scheduler.address, config.scheduler.local_npus, config.scheduler.local_cpus)
        try:
            where = cluster_address(config.scheduler.address) or "a local Ray instance"
            nodes = pl.alive_nodes()
            placement = pl.choose_placement(config.scheduler.device, nodes)
            if config.train.device in ("npu", "gpu") and placement != config.train.device:
                raise UserError("train.device %s: the folds are placed on %s (scheduler.device %s); set "
                                "train.device auto or %s" % (config.train.device, placement,
                                                             config.scheduler.device, placement))
            request = pl.resource_request(placement, config.scheduler.cpus_per_fold)
            pl.check_feasible(request, nodes, where)
            if dry_run:
                target = resume_dir or config.scheduler.run_dir or os.path.join(
                    config.scheduler.runs_root, "%s-<time>" % config.name)
                console.print(plan_table(config, counts, placement, request, os.path.abspath(target), where))
                return 0
            if not resume_dir:
                try:
                    rundir.write_config(run_dir, dump_config(config))
                except OSError as e:
                    raise UserError("%s: cannot write %s (%s)" % (run_dir, rundir.CONFIG, e.strerror))
            if lock.note:
                console.print("%s: %s" % (run_dir, lock.note), highlight=False, soft_wrap=True)
            started = True
            return _drive(config, console, run_dir, bool(resume_dir), live, placement, request, where, len(nodes),
                          report)
        finally:
            if started_ray:
                ray.shutdown()
    finally:
        if lock is not None:
            lock.release()
            if not started:  # refused before any work: leave no empty run directory behind
                rundir.remove_unused(created)


def resolve_paths(config):
    """Absolute input paths: fold tasks run in the Ray worker's directory, not the driver's."""
    config.data.data_dir = os.path.abspath(config.data.data_dir)
    if config.train.pretrained_checkpoint:
        config.train.pretrained_checkpoint = os.path.abspath(config.train.pretrained_checkpoint)


class StopRequest:
    """A stop asked of the driver: Ctrl-C (SIGINT), SIGTERM (`ray job stop`, systemd, kill)
    or SIGHUP (the SSH session or terminal closed). The first sets a flag the loop reads
    between steps, so no task result is half handled, and every running fold saves a
    checkpoint. A second SIGINT or SIGTERM makes `forced` true and raises
    KeyboardInterrupt where the driver waits; the folds are then killed without waiting.
    SIGHUP never escalates: a closing session can deliver it twice; a driver started
    ignoring it (`nohup`) keeps ignoring it. SIGINT and SIGTERM are always handled, also
    when a shell started the driver in the background with SIGINT ignored."""

    SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")

    def __init__(self):
        self.requested = False
        self.forced = False
        self.signal_name = ""
        self._previous = {}

    def __enter__(self):
        if _main_thread():
            for name in self.SIGNALS:
                signum = getattr(signal, name, None)
                if signum is None or (name == "SIGHUP" and signal.getsignal(signum) is signal.SIG_IGN):
                    continue
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if not self.requested:
            self.requested = True
            self.signal_name = signal.Signals(signum).name
        elif signum != getattr(signal, "SIGHUP", None):
            self.forced = True
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def _drive(config, console, run_dir, resumed, live_mode, placement, request, where, node_count, report):
    from scheduler.channel import start_channel

    run_id = rundir.make_run_id()
    try:
        rundir.record_driver(run_dir, run_id)
    except OSError as e:
        raise UserError("%s: cannot write %s (%s)" % (run_dir, rundir.RUN_RECORD, e.strerror))
    info = {"run_dir": run_dir, "run_id": run_id, "driver_host": socket.gethostname()}
    session = Session(config, run_dir, console, live_mode, resumed, placement, request, info)
    folds = config.scheduler.folds
    session.emit(ev.make(st.RUN_STARTED, name=config.name, run_dir=run_dir, folds=folds,
                         placement="%s %s" % (placement, pl.format_request(request)), where=where,
                         resumed=resumed, data=describe_data(config), run_key=session.info["run_key"]))
    if node_count > 1:
        session.notice("%d nodes: keep the run directory on a filesystem every host mounts at the same path, or "
                       "checkpoints die with their host" % node_count)
    try:
        done = finished_folds(run_dir, folds, session.notice)
    except UserError:
        session.log.close()
        rundir.mark_ended(run_dir, "crashed")  # run.json must not read as a driver still running
        raise
    for fold in folds:
        if fold in done:
            session.emit(ev.make(st.FOLD_SKIPPED, fold=fold, metrics=done[fold]))
    outcome = "crashed"  # until proven otherwise: run.json must not claim "finished"
    # Ray's own warnings (a worker died, memory pressure) print above the live view.
    live = Live(render(session.view, time.time()), console=console, auto_refresh=False,
                redirect_stdout=True, redirect_stderr=True) if live_mode else None
    try:
        with StopRequest() as stop:
            session.channel = start_channel()
            for fold in folds:
                if fold not in done:
                    attempt = session.view.folds[fold].attempt + 1 if fold in session.view.folds else 1
                    session.submit(fold, attempt)
            if live is not None:
                live.start()
            try:
                try:
                    _watch(session, live, stop)
                except KeyboardInterrupt:  # a second signal while the loop was busy: kill, don't wait
                    pass
                if stop.requested:
                    _stop(session, live, stop)
                    outcome = "interrupted"
                else:
                    session.emit(ev.make(st.RUN_FINISHED))
                    outcome = "finished"
            finally:
                if live is not None:
                    session.refresh(live)
                    live.stop()
            session.finish_cleanups()
    finally:
        # Also after an unexpected error: the events so far, the run's end and the table
        # of what finished are on disk before the error is reported.
        session.log.close()
        try:
            rundir.mark_ended(run_dir, outcome)
        except OSError as e:
            console.print("could not record the run's end in %s (%s)" % (rundir.RUN_RECORD, e), highlight=False)
        if outcome == "interrupted":
            st.mark_interrupted(session.view)
        results = build_results(session.view)
        try:
            write_results(run_dir, results)
            written = "results: %s/results.{md,csv,json}" % run_dir
        except OSError as e:
            written = "could not write the results into %s (%s); `python -m scheduler table %s` prints them " \
                      "again once there is room" % (run_dir, e.strerror, run_dir)
    console.print(to_table(results))
    console.print(written, highlight=False, soft_wrap=True)
    if outcome == "interrupted":  # before the report, which a further Ctrl-C may cut short
        console.print("interrupted; resume with: python -m scheduler run --resume %s" % run_dir, highlight=False,
                      soft_wrap=True)
    if report:
        console.print(_write_report(run_dir, session.view), highlight=False, soft_wrap=True)
    if outcome == "interrupted":
        return 130
    return 0 if all(row["state"] == "done" for row in results["folds"]) else 1


def _write_report(run_dir, view):
    """The report of the run that just ended, as one line to print. Never fails the run:
    the report is derived from files already written and `scheduler report` remakes it."""
    from scheduler.report import write_report

    try:
        return "report: %s" % write_report(run_dir, view, alive=False)
    except KeyboardInterrupt:  # Ctrl-C while drawing: everything that matters is written
        return "report skipped; make it with: python -m scheduler report %s" % run_dir
    except Exception as e:  # a figure's bug, a full disk: the results are safe either way
        return "report not written (%s: %s); make it with: python -m scheduler report %s" % (
            type(e).__name__, e, run_dir)


def describe_data(config):
    """What the folds train on, for the results: real Adience or synthetic faces, and each
    fold's test set (its fingerprint; what `scheduler compare` checks)."""
    from lmtcnn.prepare import fold_test_fingerprint, load_manifest

    data_dir = config.data.data_dir
    manifest = load_manifest(data_dir)
    return {"dir": data_dir, "split": manifest["split"]["source"],
            "synthetic": bool(manifest.get("synthetic") or config.data.synthetic_per_fold),
            "test_fingerprints": {k: fold_test_fingerprint(data_dir, int(k), manifest)
                                  for k in sorted(manifest["folds"])}}


def _watch(session, live, stop):
    import ray

    while session.pending and not stop.requested:
        ready, _ = ray.wait(list(session.pending), num_returns=len(session.pending), timeout=POLL_S)
        session.drain()
        for ref in ready:
            session.collect(ref)
        session.check(time.monotonic())
        session.refresh(live)
    session.drain()


def _stop(session, live, stop):
    """Every running fold saves a checkpoint and stops; after a second SIGINT or SIGTERM
    (stop.forced), or scheduler.stop_timeout_s, the rest are killed."""
    import ray

    session.stopping = True
    session.notice("%s: stopping; each running fold saves a checkpoint (Ctrl-C again to kill)" % stop.signal_name)
    for ref in list(session.pending):
        # Not recursive: that would also cancel the fold's own progress calls in flight,
        # among them the report of its stop.
        ray.cancel(ref, recursive=False)
    deadline = time.time() + session.config.scheduler.stop_timeout_s
    try:
        while (session.pending or session.active) and time.time() < deadline and not stop.forced:
            if session.pending:
                ready, _ = ray.wait(list(session.pending), num_returns=len(session.pending), timeout=POLL_S)
            else:
                ready = []
                time.sleep(POLL_S)
            session.drain()
            for ref in ready:
                session.collect(ref)
            session.refresh(live)
    except KeyboardInterrupt:
        pass
    for ref in list(session.pending):
        ray.cancel(ref, force=True, recursive=False)
        session.pending.pop(ref)
    try:
        session.drain(wait_s=1.0)
    except Exception:  # the channel may already be gone with a dying cluster
        pass
    session.emit(ev.make(st.RUN_INTERRUPTED, resume="python -m scheduler run --resume %s" % session.run_dir))
