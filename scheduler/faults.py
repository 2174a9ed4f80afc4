"""Fault injection for the fault-matrix tests (tests/test_faults_*.py, docs/RELIABILITY.md).

A test puts a JSON list of rules in a file and names it in $LMTCNN_FAULTS where the
driver runs; the driver reads the file once and hands the rules to every fold task, so
they reach workers on every node. Without the variable nothing here runs.

A rule matches one fold attempt and, for step actions, one event it reports:
  {"fold": 1, "attempt": 1, "event": "checkpoint_saved", "step": 10, "action": "hold"}
Actions, taken in the fold's own training thread right after the event is reported:
  hold    block: forever (a hung step), or until the file "until" exists. A cancel
          (Ctrl-C on the driver) still interrupts it, as it would a slow step.
  crash   kill the worker process with SIGKILL (a segfault, the OOM killer).
  raise   raise RuntimeError(text) (a device or runtime error, not the user's fault).
  kill_channel
          kill the progress channel actor's process (Ray restarts it).
  set     before training: override config keys of this fold, e.g.
          {"fold": 2, "action": "set", "keys": {"train.learning_rate": 1.0e12}}.
  stage   before training: act as a host that does not see the run directory (the fold
          is staged and collected); "extra_member": "../x" adds that member to its archive.
"""

import json
import os
import signal
import time

ENV = "LMTCNN_FAULTS"
ACTIONS = ("hold", "crash", "raise", "set", "kill_channel", "stage")
SETUP = ("set", "stage")  # taken before training, not after an event


def load_plan():
    """The rules named by $LMTCNN_FAULTS, or None when it is unset."""
    path = os.environ.get(ENV)
    if not path:
        return None
    with open(path, "r", encoding="utf-8") as f:
        rules = json.load(f)
    for rule in rules:
        if rule.get("action") not in ACTIONS:
            raise ValueError("%s: unknown fault action %r" % (path, rule.get("action")))
    return rules


def _matches(rule, fold, attempt):
    return rule.get("fold", fold) == fold and rule.get("attempt", attempt) == attempt


def staging(plan, fold, attempt):
    """The "stage" rule for this fold attempt, or None."""
    for rule in plan or ():
        if rule["action"] == "stage" and _matches(rule, fold, attempt):
            return rule
    return None


def config_overrides(plan, fold, attempt):
    """{dotted key: value} that "set" rules give this fold attempt."""
    keys = {}
    for rule in plan or ():
        if rule["action"] == "set" and _matches(rule, fold, attempt):
            keys.update(rule["keys"])
    return keys


def after_event(plan, event, channel=None):
    """Carry out the step actions that match `event` (a fold task's tagged event)."""
    for rule in plan or ():
        if rule["action"] in SETUP or not _matches(rule, event["fold"], event["attempt"]):
            continue
        if rule.get("event", event["event"]) != event["event"] or rule.get("step", event.get("step")) != event.get(
                "step"):
            continue
        if rule["action"] == "hold":
            until = rule.get("until")
            while not (until and os.path.exists(until)):
                time.sleep(0.05)
        elif rule["action"] == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        elif rule["action"] == "raise":
            raise RuntimeError(rule.get("text", "injected runtime error"))
        elif rule["action"] == "kill_channel":
            import ray

            ray.kill(channel, no_restart=False)


def tamper(archive, rule):
    """A staged fold's archive with the rule's "extra_member" added (a name such as
    `../x`, which collection must refuse); the archive itself without one."""
    if not (rule or {}).get("extra_member"):
        return archive
    import io
    import tarfile

    copy = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as source, \
            tarfile.open(fileobj=copy, mode="w") as out:
        for member in source.getmembers():
            out.addfile(member, source.extractfile(member) if member.isfile() else None)
        info = tarfile.TarInfo(rule["extra_member"])
        info.size = 1
        out.addfile(info, io.BytesIO(b"x"))
    return copy.getvalue()
