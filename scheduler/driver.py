"""The Ray driver: submit one task per fold, stream progress, retry, stop, write results."""

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass

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
# The live view is redrawn at most this often: a human reads no faster, and a redraw of
# twenty folds costs a few tens of milliseconds of the driver's CPU (docs/BENCHMARKS.md).
REFRESH_S = 1.0
REPORT_SKIPPED = "report skipped"
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


@dataclass
class Job:
    """One run directory the driver serves: a run, or one cell of a sweep."""
    config: object
    run_dir: str
    resumed: bool
    label: str = ""  # a sweep cell's name ("c2"); "" for a run


def run(config, console, resume_dir=None, live=False, dry_run=False, force=False, report=True):
    """Run (or resume) the configured folds. Returns the process exit status.

    force: take over the run directory's lock from a driver on another host that is gone.
    Raises UserError for problems found before submission (data, resources, run dir).
    """
    resolve_paths(config)
    counts = ensure_data(config, say=lambda text: console.print(text, highlight=False), generate=not dry_run)
    lock, created, started = None, [], False
    if not dry_run:  # locked before anything else starts: a refused driver starts no Ray
        if resume_dir:
            run_dir, lock = resume_dir, runlock.acquire(resume_dir, force)
        else:
            run_dir, lock, created = rundir.new_run_dir(config, force)

    def plan(placement, request, where):
        target = resume_dir or config.scheduler.run_dir or os.path.join(config.scheduler.runs_root,
                                                                        "%s-<time>" % config.name)
        return plan_table(config, counts, placement, request, os.path.abspath(target), where)

    def start(placement, request, where, node_count):
        nonlocal started
        if not resume_dir:
            try:
                rundir.write_config(run_dir, dump_config(config))
            except OSError as e:
                raise UserError("%s: cannot write %s (%s)" % (run_dir, rundir.CONFIG, e.strerror))
        if lock.note:
            console.print("%s: %s" % (run_dir, lock.note), highlight=False, soft_wrap=True)
        started = True
        return _drive([Job(config, run_dir, bool(resume_dir))], console, live, placement, request, where,
                      node_count, report)

    try:
        return _on_ray([config], console, dry_run, plan, start)
    finally:
        if lock is not None:
            lock.release()
            if not started:  # refused before any work: leave no empty run directory behind
                rundir.remove_unused(created)


def run_sweep(sweep, console, resumed=False, sweep_dir="", live=False, dry_run=False, force=False, report=True):
    """Run (or resume) every cell of a sweep (scheduler/sweep.py) under one driver.
    Returns the exit status: 0 when every fold of every cell finished."""
    from scheduler import sweep as sw

    for cell in sweep.cells:
        resolve_paths(cell.config)
    counts = [ensure_data(cell.config, say=lambda text: console.print(text, highlight=False),
                          generate=not dry_run) for cell in sweep.cells]
    locks, created, started = [], [], False
    try:
        if not dry_run:
            if resumed:
                for cell in sweep.cells:
                    locks.append(runlock.acquire(cell.run_dir, force))
            else:
                created = sw.new_sweep_dir(sweep, sweep_dir)
                for cell in sweep.cells:
                    _, lock, made = rundir.new_run_dir(cell.config, force)
                    locks.append(lock)
                    created = made + created  # cells first: they are removed before the sweep directory

        def plan(placement, request, where):
            return sw.plan_table(sweep, counts, placement, request, where)

        def start(placement, request, where, node_count):
            nonlocal started
            try:
                if not resumed:
                    for cell in sweep.cells:
                        rundir.write_config(cell.run_dir, dump_config(cell.config))
                    sw.write_record(sweep)
            except OSError as e:
                raise UserError("%s: cannot write the sweep's files (%s)" % (sweep.sweep_dir, e.strerror))
            for lock, cell in zip(locks, sweep.cells):
                if lock.note:
                    console.print("%s: %s" % (cell.run_dir, lock.note), highlight=False, soft_wrap=True)
            started = True
            jobs = [Job(cell.config, cell.run_dir, resumed, cell.label) for cell in sweep.cells]
            return _drive(jobs, console, live, placement, request, where, node_count, report, sweep=sweep)

        return _on_ray([cell.config for cell in sweep.cells], console, dry_run, plan, start)
    finally:
        for lock in locks:
            lock.release()
        if not started:
            rundir.remove_unused(created)


def _on_ray(configs, console, dry_run, plan, start):
    """Connect, choose where folds run, check that the cluster can hold one; then print
    the plan (dry run) or `start(placement, request, where, node_count)`."""
    import ray

    s = configs[0].scheduler  # a sweep's cells share the scheduler section
    started_ray = connect(s.address, s.local_npus, s.local_cpus)
    try:
        where = cluster_address(s.address) or "a local Ray instance"
        nodes = pl.alive_nodes()
        placement = pl.choose_placement(s.device, nodes)
        for config in configs:
            if config.train.device in ("npu", "gpu") and placement != config.train.device:
                raise UserError("train.device %s: the folds are placed on %s (scheduler.device %s); set "
                                "train.device auto or %s" % (config.train.device, placement, s.device, placement))
        request = pl.resource_request(placement, s.cpus_per_fold, s.folds_per_gpu)
        pl.check_feasible(request, nodes, where)
        note = pl.placement_note(placement, s.folds_per_gpu)  # auto landed on NPUs or CPUs: said once
        if note:
            console.print(note, highlight=False, soft_wrap=True)
        if dry_run:
            console.print(plan(placement, request, where))
            return 0
        return start(placement, request, where, len(nodes))
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


def _drive(jobs, console, live_mode, placement, request, where, node_count, report, sweep=None):
    """Serve `jobs` (one run, or a sweep's cells in order) in one loop until every fold
    ended or a stop signal. Returns the exit status."""
    from scheduler.channel import start_channel
    from scheduler.dispatch import Dispatcher

    run_id = rundir.make_run_id()
    sessions = []
    try:
        for job in jobs:
            sessions.append(_open(job, console, live_mode, placement, request, where, node_count, run_id, sweep))
    except UserError:
        for session in sessions:
            session.log.close()
            rundir.mark_ended(session.run_dir, "crashed")  # run.json must not read as a driver still running
        raise
    dispatcher = Dispatcher(sessions, request, throttle=sweep is not None)
    draw = _drawing(sessions, sweep)
    outcome = "crashed"  # until proven otherwise: run.json must not claim "finished"
    # Ray's own warnings (a worker died, memory pressure) print above the live view.
    live = Live(draw(time.time()), console=console, auto_refresh=False, redirect_stdout=True,
                redirect_stderr=True) if live_mode else None
    try:
        with StopRequest() as stop:
            for session in sessions:
                session.channel = start_channel()
                for fold in session.config.scheduler.folds:
                    if fold not in session.done:
                        f = session.view.folds.get(fold)
                        session.queue(fold, f.attempt + 1 if f is not None else 1)
            if live is not None:
                live.start()
            try:
                try:
                    _watch(sessions, dispatcher, Screen(live, draw), stop)
                except KeyboardInterrupt:  # a second signal while the loop was busy: kill, don't wait
                    pass
                if stop.requested:
                    _stop(sessions, Screen(live, draw), stop, sweep)
                    outcome = "interrupted"
                else:
                    for session in sessions:
                        session.emit(ev.make(st.RUN_FINISHED))
                    outcome = "finished"
            finally:
                if live is not None:
                    Screen(live, draw).refresh(force=True)
                    live.stop()
            for session in sessions:
                session.finish_cleanups()
    finally:
        # Also after an unexpected error: the events so far, the run's end and the table
        # of what finished are on disk before the error is reported.
        written = [_close(session, outcome, console) for session in sessions]
    if sweep is None:
        results, line = written[0]
        console.print(to_table(results))
        console.print(line, highlight=False, soft_wrap=True)
    else:
        console.print(_sweep_table(sweep, sessions), soft_wrap=True)
    if outcome == "interrupted":  # before the report, which a further Ctrl-C may cut short
        console.print("interrupted; resume with: %s" % _resume_command(sessions[0].run_dir, sweep), highlight=False,
                      soft_wrap=True)
    if report:
        for session in sessions:
            line = _write_report(session.run_dir, session.view)
            console.print(line, highlight=False, soft_wrap=True)
            if line.startswith(REPORT_SKIPPED):  # a Ctrl-C while drawing skips the other cells' reports too
                break
    if outcome == "interrupted":
        return 130
    return 0 if all(row["state"] == "done" for results, _ in written for row in results["folds"]) else 1


def _open(job, console, live_mode, placement, request, where, node_count, run_id, sweep):
    """The session of one run directory, its run_started event recorded and the folds an
    earlier session finished skipped (session.done)."""
    try:
        rundir.record_driver(job.run_dir, run_id)
    except OSError as e:
        raise UserError("%s: cannot write %s (%s)" % (job.run_dir, rundir.RUN_RECORD, e.strerror))
    info = {"run_dir": job.run_dir, "run_id": run_id, "driver_host": socket.gethostname()}
    session = Session(job.config, job.run_dir, console, live_mode, job.resumed, placement, request, info, job.label)
    folds = job.config.scheduler.folds
    extra = {"sweep": {"dir": sweep.sweep_dir, "cell": job.label}} if sweep is not None else {}
    session.emit(ev.make(st.RUN_STARTED, name=job.config.name, run_dir=job.run_dir, folds=folds,
                         placement="%s %s" % (placement, pl.format_request(request)), where=where,
                         resumed=job.resumed, data=describe_data(job.config), run_key=session.info["run_key"],
                         **extra))
    if node_count > 1:
        session.notice("%d nodes: keep the run directory on a filesystem every host mounts at the same path, or "
                       "checkpoints die with their host" % node_count)
    try:
        session.done = finished_folds(job.run_dir, folds, session.notice)
    except UserError:
        session.log.close()
        rundir.mark_ended(job.run_dir, "crashed")
        raise
    for fold in folds:
        if fold in session.done:
            session.emit(ev.make(st.FOLD_SKIPPED, fold=fold, metrics=session.done[fold]))
    return session


def _close(session, outcome, console):
    """(results, the line saying where they were written) of a session that ended."""
    session.log.close()
    try:
        rundir.mark_ended(session.run_dir, outcome)
    except OSError as e:
        console.print("could not record the run's end in %s (%s)" % (rundir.RUN_RECORD, e), highlight=False)
    if outcome == "interrupted":
        st.mark_interrupted(session.view)
    results = build_results(session.view)
    try:
        write_results(session.run_dir, results)
        return results, "results: %s/results.{md,csv,json}" % session.run_dir
    except OSError as e:
        return results, ("could not write the results into %s (%s); `python -m scheduler table %s` prints them "
                         "again once there is room" % (session.run_dir, e.strerror, session.run_dir))


def _drawing(sessions, sweep):
    """draw(now): the live view of a run, or of a sweep's cells."""
    if sweep is None:
        return lambda now: render(sessions[0].view, now)
    from scheduler.sweep_view import render_sweep

    return lambda now: render_sweep(sweep, [s.view for s in sessions], now)


class Screen:
    """The live view (or nothing, without one), redrawn at most every REFRESH_S."""

    def __init__(self, live, draw):
        self.live, self.draw, self.drawn = live, draw, None

    def refresh(self, force=False):
        if self.live is None:
            return
        now = time.monotonic()
        if force or self.drawn is None or now - self.drawn >= REFRESH_S:
            self.live.update(self.draw(time.time()), refresh=True)
            self.drawn = now


def _resume_command(run_dir, sweep):
    if sweep is not None:
        return "python -m scheduler sweep --resume %s" % sweep.sweep_dir
    return "python -m scheduler run --resume %s" % run_dir


def _sweep_table(sweep, sessions):
    """The sweep's table, also written to the sweep directory; a line says where (or why
    not) under it."""
    from rich.console import Group
    from rich.text import Text

    from scheduler.sweep_results import build_sweep_results, to_table, write_sweep_results

    results = build_sweep_results(sweep, {cell.index: s.view for cell, s in zip(sweep.cells, sessions)})
    try:
        write_sweep_results(sweep.sweep_dir, results)
        line = "sweep results: %s/results.{md,csv,json}; each cell's own in its directory" % sweep.sweep_dir
    except OSError as e:
        line = "could not write the sweep's results into %s (%s); `python -m scheduler table %s` prints them " \
               "again" % (sweep.sweep_dir, e.strerror, sweep.sweep_dir)
    return Group(to_table(results), Text(line))


def _write_report(run_dir, view):
    """The report of the run that just ended, as one line to print. Never fails the run:
    the report is derived from files already written and `scheduler report` remakes it."""
    from scheduler.report import write_report

    try:
        return "report: %s" % write_report(run_dir, view, alive=False)
    except KeyboardInterrupt:  # Ctrl-C while drawing: everything that matters is written
        return REPORT_SKIPPED + "; make it with: python -m scheduler report %s" % run_dir
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


def _watch(sessions, dispatcher, screen, stop):
    import ray

    while any(s.pending or s.waiting for s in sessions) and not stop.requested:
        dispatcher.release()
        owner = {ref: s for s in sessions for ref in s.pending}
        if owner:
            ready, _ = ray.wait(list(owner), num_returns=len(owner), timeout=POLL_S)
        else:  # everything waits for a slot that frees at the next count
            ready = []
            time.sleep(POLL_S)
        for session in sessions:
            session.drain()
        for ref in ready:
            owner[ref].collect(ref)
        now = time.monotonic()
        for session in sessions:
            session.check(now)
        screen.refresh()
    for session in sessions:
        session.drain()


def _stop(sessions, screen, stop, sweep):
    """Every running fold saves a checkpoint and stops; after a second SIGINT or SIGTERM
    (stop.forced), or scheduler.stop_timeout_s, the rest are killed. Folds still queued
    stay so, for the resume."""
    import ray

    for session in sessions:
        session.stopping = True
        session.notice("%s: stopping; each running fold saves a checkpoint (Ctrl-C again to kill)"
                       % stop.signal_name)
        for ref in list(session.pending):
            # Not recursive: that would also cancel the fold's own progress calls in flight,
            # among them the report of its stop.
            ray.cancel(ref, recursive=False)
    deadline = time.time() + sessions[0].config.scheduler.stop_timeout_s
    try:
        while any(s.pending or s.active for s in sessions) and time.time() < deadline and not stop.forced:
            owner = {ref: s for s in sessions for ref in s.pending}
            if owner:
                ready, _ = ray.wait(list(owner), num_returns=len(owner), timeout=POLL_S)
            else:
                ready = []
                time.sleep(POLL_S)
            for session in sessions:
                session.drain()
            for ref in ready:
                owner[ref].collect(ref)
            screen.refresh()
    except KeyboardInterrupt:
        pass
    for session in sessions:
        for ref in list(session.pending):
            ray.cancel(ref, force=True, recursive=False)
            session.pending.pop(ref)
        try:
            session.drain(wait_s=1.0)
        except Exception:  # the channel may already be gone with a dying cluster
            pass
        session.emit(ev.make(st.RUN_INTERRUPTED, resume=_resume_command(session.run_dir, sweep)))
