"""One driver session of a run directory: the fold attempts in flight and what becomes of them.

Every event passes through `Session.emit` (events.jsonl, the state, plain lines). The
driver loop calls `drain`, `check` and `collect`; they decide retries: a worker or host
that died, a stall, or a runtime error is retried from the fold's checkpoint; the user's
errors and a full disk fail the fold; a fold no node can hold fails after a while.
"""

import collections
import os
import tarfile
import time
from dataclasses import dataclass
from typing import Optional

from lmtcnn import events as ev
from lmtcnn.config import config_to_dict
from scheduler import collect, faults, rundir
from scheduler import placement as pl
from scheduler import state as st
from scheduler.dashboard import format_event
from scheduler.watchdog import Heartbeat

CHECK_EVERY_S = 2.0    # placement and stall checks (events are drained more often)
DRAIN_WAIT_S = 10.0    # how long a final drain waits for a restarting channel
CHANNEL_QUIET_S = 5.0  # a drain unanswered this long: the channel is away, stall checks pause
DRIVER_AWAY_S = 10.0   # a gap this long between two turns of the driver's loop: the driver was away


@dataclass
class Attempt:
    fold: int
    attempt: int
    heartbeat: Heartbeat
    unplaceable_since: Optional[float] = None
    ended_by_driver: str = ""  # "stalled" or "unplaceable": the driver cancelled it
    note: str = ""             # why, in words


class Session:
    def __init__(self, config, run_dir, console, live_mode, resumed, placement, request, info, label=""):
        """info: {"run_dir", "run_id", "driver_host"}, handed to every fold task with the
        run's identity added as "run_key": the one its first session gave, or a new one.
        label: a sweep cell's name ("c2"), which starts its plain lines."""
        self.config, self.run_dir, self.console, self.live_mode = config, run_dir, console, live_mode
        self.label = label
        self.placement, self.request, self.info = placement, request, info
        self.view = st.RunView()
        if resumed:
            for event in rundir.read_events(run_dir):
                st.apply(self.view, event)
        key = self.view.run_key if self.view.run_key is not None else rundir.new_run_key()
        self.info = dict(info, run_key=key)
        self.log = rundir.EventLog(run_dir, on_trouble=self._trouble)
        self.channel = None
        self.pending = {}  # ObjectRef -> Attempt
        # Fold attempts queued and not yet handed to Ray, (fold, attempt) in the order they
        # go: the driver releases them (all at once for a run, as slots free for a sweep).
        self.waiting = []
        self.done = {}  # fold -> metrics of the folds an earlier session finished (the driver fills it)
        self.stopping = False  # after a stop signal: nothing is retried or resubmitted
        # Fold attempts that have reported and not yet ended: after a stop the driver waits
        # for these to save, since Ray reports a cancelled task before its handler has run.
        self.active = set()
        self.seen = collections.defaultdict(set)  # (fold, attempt) -> sequence numbers received
        self.said = set()  # one-time notices already given
        # One drain call in flight at a time, since when, and the channel process answering.
        self.drain_ref, self.drain_since, self.channel_pid, self.channel_trouble = None, 0.0, None, ""
        self.retries = collections.Counter()  # fold -> retries in this session
        self.cleanups = []  # tasks deleting collected folds' staged copies; cancelled tasks
        self.fault_plan = faults.load_plan()  # None outside the fault-matrix tests
        self.last_check = 0.0
        self.last_turn = None  # when check() last ran (every turn of the driver's loop)

    # -- recording ---------------------------------------------------------------------

    def emit(self, event):
        """Record an event: events.jsonl, the state, and a plain line when not live.
        Events a fold task sent twice (the channel replayed them) are dropped here."""
        event.setdefault("time", time.time())
        if "seq" in event:
            key = (event["fold"], event["attempt"])
            if event["seq"] in self.seen[key]:
                return
            self.seen[key].add(event["seq"])
            attempt = self._attempt(key)
            if attempt is not None:
                attempt.heartbeat.heard(event, time.monotonic())
            if event["event"] in (ev.FOLD_STOPPED, ev.FOLD_FINISHED):
                self.active.discard(key)
            elif attempt is not None:  # a late event of an ended attempt keeps no stop waiting
                self.active.add(key)
        if event["event"] == ev.MESSAGE and event.get("not_shared"):
            self.notice_once("not_shared", event["text"])
        self.log.append(event)
        st.apply(self.view, event)
        self.say(format_event(event))

    def notice(self, text):
        self.emit(ev.make(st.NOTICE, text=text))

    def notice_once(self, key, text):
        if key not in self.said:
            self.said.add(key)
            self.notice(text)

    def say(self, line):
        if not self.live_mode:
            self.console.print("%s: %s" % (self.label, line) if self.label else line, highlight=False, markup=False,
                               soft_wrap=True)

    def _trouble(self, text):
        # The event log itself is failing: tell the screen, not the log.
        self.view.notices.append(text)
        self.say("note: " + text)

    def _attempt(self, key):
        for attempt in self.pending.values():
            if (attempt.fold, attempt.attempt) == key:
                return attempt
        return None

    # -- the progress channel ----------------------------------------------------------

    def drain(self, wait_s=0.0):
        """Take what the channel holds. One drain call is in flight at a time: a call made
        while the channel restarts is answered after the restart, and its events are
        taken then, never dropped with an abandoned call. Returns False if none answered."""
        import ray
        from ray.exceptions import RayError

        if self.drain_ref is None:
            self.drain_ref, self.drain_since = self.channel.drain.remote(), time.monotonic()
        ready, _ = ray.wait([self.drain_ref], timeout=wait_s)
        if not ready:
            return False
        ref, self.drain_ref = self.drain_ref, None
        try:
            pid, events = ray.get(ref)
        except RayError as e:
            self._channel_trouble("the progress channel failed (%s); Ray restarts it, folds train on"
                                  % type(e).__name__)
            return False
        if self.channel_pid is not None and pid != self.channel_pid:
            self.notice("the progress channel was restarted; events it held are lost (counted per fold when it "
                        "ends), no fold's end or checkpoint is")
        self.channel_pid = pid
        if self.channel_trouble:
            self.channel_trouble = ""
            self.notice("the progress channel answers again")
            # Quiet time while the channel was away is not the folds' own.
            now = time.monotonic()
            for attempt in self.pending.values():
                if attempt.heartbeat.last is not None:
                    attempt.heartbeat.last = now
        for event in events:
            self.emit(event)
        return True

    def drain_all(self):
        """Everything a task sent before it ended (it waited for the channel to have it).
        A drain call made before the task ended may have run before its last events
        arrived, so after it one more is made, and waited for."""
        deadline = time.time() + DRAIN_WAIT_S
        for _ in range(2 if self.drain_ref is not None else 1):
            while not self.drain(wait_s=max(deadline - time.time(), 0.1)) and time.time() < deadline:
                pass

    def _channel_trouble(self, text):
        if not self.channel_trouble:
            self.channel_trouble = text
            self.notice(text)

    # -- attempts ----------------------------------------------------------------------

    def queue(self, fold, attempt, first=False):
        """Queue a fold attempt for the driver to release; `first`: ahead of the others (a
        retry should not wait behind folds that have not started)."""
        self.waiting.insert(0 if first else len(self.waiting), (fold, attempt))
        self.emit(ev.make(st.FOLD_QUEUED, fold=fold, attempt=attempt))

    def release(self, count=None):
        """Hand up to `count` queued attempts (all when None) to Ray. Returns how many."""
        from scheduler.fold_task import run_fold

        s = self.config.scheduler
        released = self.waiting[:count] if count is not None else self.waiting
        self.waiting = self.waiting[len(released):]
        for fold, attempt in released:
            ref = run_fold.options(**pl.task_options(self.request)).remote(
                config_to_dict(self.config), fold, attempt, self.info, self.placement, self.channel, self.fault_plan)
            self.pending[ref] = Attempt(fold, attempt, Heartbeat(s.startup_timeout_s, s.stall_timeout_s))
        return len(released)

    def check(self, now, force=False):
        """Every CHECK_EVERY_S: cancel stalled attempts; fail those no alive node can hold
        after scheduler.unplaceable_timeout_s. `now`: time.monotonic(), once per turn of the
        driver's loop."""
        import ray

        self._forgive_driver_away(now)
        if not force and now - self.last_check < CHECK_EVERY_S:
            return
        self.last_check = now
        s = self.config.scheduler
        if self.drain_ref is not None and now - self.drain_since > CHANNEL_QUIET_S:
            self._channel_trouble("the progress channel does not answer; Ray restarts it, folds train on")
        nodes = None
        for ref, a in list(self.pending.items()):
            if a.ended_by_driver:
                continue
            if a.heartbeat.last is None:  # not started: can any alive node take it?
                nodes = pl.alive_nodes() if nodes is None else nodes
                if pl.feasible(self.request, nodes):
                    a.unplaceable_since = None
                elif a.unplaceable_since is None:
                    a.unplaceable_since = now
                    self.notice("fold %d waits for a node that can hold %s; none of the alive nodes can (%s); it "
                                "fails after %.0f s (scheduler.unplaceable_timeout_s)" % (
                                    a.fold, pl.format_request(self.request), pl.describe_offers(nodes),
                                    s.unplaceable_timeout_s))
                elif now - a.unplaceable_since > s.unplaceable_timeout_s:
                    # Cancelled and forgotten: a cancel of a task that never started need
                    # not be waited for, and must not keep the run going.
                    ray.cancel(ref, force=True, recursive=False)
                    self.pending.pop(ref)
                    self.cleanups.append(ref)
                    self._ended(a)
                    self.emit(ev.make(ev.FOLD_FAILED, fold=a.fold, attempt=a.attempt, reason=(
                        "no alive node could hold %s for %.0f s (nodes offer %s); start a host with that resource "
                        "and resume the run" % (pl.format_request(self.request), now - a.unplaceable_since,
                                                pl.describe_offers(nodes)))))
                continue
            if self.channel_trouble:
                continue  # no reports reach the driver: silence says nothing about the fold
            quiet = a.heartbeat.stalled(now)
            if quiet is not None:
                step = self.view.folds[a.fold].step
                a.ended_by_driver = "stalled"
                a.note = "stalled at step %d: no report for %.0f s (allowed %.0f s)" % (
                    step, quiet, a.heartbeat.quiet_allowed())
                self.emit(ev.make(st.FOLD_STALLED, fold=a.fold, attempt=a.attempt, step=step, quiet_s=round(quiet, 1)))
                ray.cancel(ref, force=True, recursive=False)  # a hung step does not answer a polite cancel

    def _forgive_driver_away(self, now):
        """Quiet time while the driver itself was away (suspended with Ctrl-Z or by a batch
        system, swapped out, its host asleep) is not the folds': what they sent meanwhile
        waits undrained in the channel. Their clocks move on by the time it was gone."""
        away = 0.0 if self.last_turn is None else now - self.last_turn
        self.last_turn = now
        if away < DRIVER_AWAY_S:
            return
        for a in self.pending.values():
            if a.heartbeat.last is not None:
                a.heartbeat.last += away
            if a.unplaceable_since is not None:
                a.unplaceable_since += away
        if self.drain_ref is not None:
            self.drain_since += away

    def collect(self, ref):
        """Handle one ended task: record success, retry what may succeed, or fail the fold."""
        import ray
        from ray.exceptions import RayError, RayTaskError, TaskCancelledError

        from scheduler.fold_task import FoldError

        a = self.pending.pop(ref)
        try:
            result = ray.get(ref)
        except (TaskCancelledError, RayError) as e:
            if a.ended_by_driver == "stalled":
                self._end_attempt(a, a.note, retryable=True)
            elif isinstance(e, TaskCancelledError):
                pass  # a stop: the fold reports its own FOLD_STOPPED (it stays active until then)
            elif isinstance(e, RayTaskError):
                cause = getattr(e, "cause", None)
                if isinstance(cause, FoldError):
                    self._end_attempt(a, cause.reason, cause.retryable)
                else:
                    self._end_attempt(a, task_error_reason(e), retryable=True)
            else:  # the worker process or its node died
                self._end_attempt(a, "%s (attempt %d)" % (type(e).__name__, a.attempt), retryable=True)
            return
        if result["archive"] is not None and not self._install(a, result):
            return
        self.drain_all()
        self.emit(result["finished"])
        self._ended(a)

    def _install(self, a, result):
        """Extract a staged fold into the run directory, then delete the host's copy."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from scheduler.fold_task import remove_staged

        where = "%s:%s" % (result["finished"].get("host", "?"), result["staged"])
        try:
            collect.unpack(result["archive"], rundir.fold_dir(self.run_dir, a.fold))
        except (collect.UnsafeArchive, tarfile.TarError, OSError) as e:
            self.drain_all()
            self._ended(a)
            self.emit(ev.make(ev.FOLD_FAILED, fold=a.fold, attempt=a.attempt, reason=(
                "collecting the finished fold failed (%s); nothing was installed, the fold's copy stays at %s"
                % (e, where))))
            return False
        self.cleanups.append(remove_staged.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node_id=result["node_id"], soft=False)).remote(result["staged"]))
        return True

    def _end_attempt(self, a, reason, retryable):
        self.drain_all()
        self._ended(a)
        s = self.config.scheduler
        if self.stopping and retryable:
            return  # the run is stopping: a resume carries on from the checkpoint
        # Retries count in this session: a resumed run gets its retries back.
        if retryable and self.retries[a.fold] < s.max_retries:
            self.retries[a.fold] += 1
            self.emit(ev.make(st.FOLD_RETRYING, fold=a.fold, attempt=a.attempt + 1, reason=reason))
            self.queue(a.fold, a.attempt + 1, first=True)
            return
        if retryable:
            reason += "; no retries left (scheduler.max_retries %d in this session)" % s.max_retries
        self.emit(ev.make(ev.FOLD_FAILED, fold=a.fold, attempt=a.attempt, reason=reason))

    def _ended(self, a):
        """The attempt is over: say if the channel lost any of its events on the way."""
        key = (a.fold, a.attempt)
        self.active.discard(key)
        seen = self.seen.get(key, set())
        missing = max(seen) - len(seen) if seen else 0
        if missing:
            self.notice("fold %d try %d: %d progress events were lost with the progress channel (its end and "
                        "checkpoints are not affected)" % (a.fold, a.attempt, missing))

    def finish_cleanups(self):
        """Wait briefly for staged copies to be deleted (a host that is gone keeps its copy)
        and for cancelled tasks, whose errors nobody needs to hear about."""
        import ray

        if not self.cleanups:
            return
        try:
            ready, _ = ray.wait(self.cleanups, num_returns=len(self.cleanups), timeout=10)
            for ref in ready:
                try:
                    ray.get(ref)
                except Exception:
                    pass
        except KeyboardInterrupt:  # a second Ctrl-C: the run is over anyway
            pass


def task_error_reason(error):
    cause = getattr(error, "cause", None)
    if cause is not None:
        return "%s: %s" % (type(cause).__name__, str(cause).strip().splitlines()[-1] if str(cause).strip() else "")
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def finished_folds(run_dir, folds, notice):
    """Folds whose metrics.json exists: done in an earlier session, never run again. A
    damaged metrics.json (torn, not JSON) is moved aside (the fold then resumes from its
    checkpoint and is evaluated again), and `notice` says so. One that cannot be read at
    all (permissions, a filesystem error) is left alone: UserError."""
    from lmtcnn.errors import UserError
    from lmtcnn.files import read_json
    from lmtcnn.workdir import metrics_file

    done = {}
    for fold in folds:
        path = metrics_file(rundir.fold_dir(run_dir, fold))
        if not os.path.isfile(path):
            continue
        try:
            done[fold] = read_json(path)
        except OSError as e:  # the file may be fine: never move a finished fold's result for this
            raise UserError("%s: cannot read it (%s); fix its permissions or the filesystem, then resume"
                            % (path, e.strerror or e))
        except ValueError as e:
            aside = "%s.damaged-%d" % (path, int(time.time()))
            try:
                os.replace(path, aside)
            except OSError as moving:
                raise UserError("%s is damaged (%s) and cannot be moved aside (%s); move it away, then resume"
                                % (path, e, moving.strerror))
            notice("fold %d: %s is damaged (%s); moved to %s, the fold resumes from its last checkpoint"
                   % (fold, path, e, os.path.basename(aside)))
    return done
