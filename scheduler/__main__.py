"""`python -m scheduler {run,table,status}`: LMTCNN's five folds on Ray."""

import argparse
import os
import sys

from lmtcnn.errors import UserError


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m scheduler", description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    p = commands.add_parser("run", help="run (or resume) the folds of a configuration")
    p.add_argument("config", nargs="?", help="YAML configuration, e.g. configs/cv5.yaml")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run: finished folds are kept, "
                                                       "the others resume from their checkpoints")
    p.add_argument("--address", help="Ray cluster to join (HOST:6379); default: scheduler.address, "
                                     "else a local Ray instance")
    p.add_argument("--folds", help="comma-separated subset, e.g. 0,3")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, e.g. --set train.max_steps=100 (repeatable)")
    p.add_argument("--run-dir", help="run directory (default runs/<name>-<time>)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--no-dashboard", action="store_true", help="plain progress lines instead of the live view")
    p.add_argument("--force", action="store_true", help="take over the run directory from a driver on another "
                                                        "host that is gone (its driver.lock)")

    for name, text in (("table", "print a run's per-fold accuracy table"),
                       ("status", "tell each fold's state in a finished, running or interrupted run")):
        p = commands.add_parser(name, help=text)
        p.add_argument("run_dir", metavar="RUN_DIR")

    args = parser.parse_args(argv)
    from rich.console import Console

    output = GuardedStream(sys.stdout)
    console = Console(file=output)
    if not console.is_terminal:
        console = Console(file=output, width=120)  # logs and pipes: room for the table, no wrapping of lines
    try:
        return COMMANDS[args.command](args, console)
    except UserError as e:
        print("error: %s" % e, file=sys.stderr)
        return e.exit_status


class GuardedStream:
    """stdout that survives its reader: after SIGHUP (a closed SSH session) or a closed pipe
    a write fails with EIO or EPIPE, which must not stop the driver from saving the folds
    and writing the results; the output is dropped from then on."""

    def __init__(self, stream):
        self.stream, self.broken = stream, False

    def write(self, text):
        if not self.broken:
            try:
                self.stream.write(text)
            except OSError:
                self.broken = True
        return len(text)

    def flush(self):
        if not self.broken:
            try:
                self.stream.flush()
            except OSError:
                self.broken = True

    def __getattr__(self, name):  # isatty, fileno, encoding: what rich asks of its file
        return getattr(self.stream, name)


def run_command(args, console):
    from scheduler.config import load_run_config
    from scheduler.rundir import CONFIG

    overrides = list(args.set)
    if args.resume:
        if args.config:
            raise UserError("run: give a configuration or --resume RUN_DIR, not both (the run keeps its own "
                            "%s)" % CONFIG)
        changed = [o for o in overrides if not o.startswith("scheduler.")]
        if changed:
            raise UserError("--set %s: a resumed run keeps its training configuration; only scheduler.* "
                            "keys may change" % changed[0])
        path = os.path.join(args.resume, CONFIG)
        if not os.path.isfile(path):
            raise UserError("%s: not a run directory (no %s)" % (args.resume, CONFIG))
    elif args.config:
        path = args.config
    else:
        raise UserError("run: name a configuration, e.g. `python -m scheduler run configs/cv5.yaml`")
    if args.address:
        overrides.append("scheduler.address=%s" % args.address)
    if args.run_dir:
        if args.resume:
            raise UserError("--run-dir: a resumed run stays in %s" % args.resume)
        overrides.append("scheduler.run_dir=%s" % args.run_dir)
    if args.folds:
        try:
            folds = [int(k) for k in args.folds.split(",")]
        except ValueError:
            raise UserError("--folds %s: expected comma-separated fold numbers, e.g. 0,3" % args.folds)
        overrides.append("scheduler.folds=%s" % folds)
    config = load_run_config(path, overrides)

    from scheduler.driver import run

    live = console.is_terminal and not args.no_dashboard
    return run(config, console, resume_dir=os.path.abspath(args.resume) if args.resume else None,
               live=live, dry_run=args.dry_run, force=args.force)


def replay(run_dir):
    """(view of the run from its events.jsonl, whether its driver still runs: True, False,
    or None when it runs on another host as far as its lock tells)."""
    from scheduler import state as st
    from scheduler.rundir import driver_alive, read_events

    view = st.RunView()
    for event in read_events(run_dir):
        st.apply(view, event)
    alive = driver_alive(run_dir)
    if alive is False:
        st.mark_interrupted(view)
    return view, alive


def table_command(args, console):
    from scheduler.results import build_results, to_table

    view, _ = replay(args.run_dir)
    console.print(to_table(build_results(view)))
    return 0


def status_command(args, console):
    from rich.table import Table

    from scheduler.dashboard import format_duration

    from scheduler import runlock

    view, alive = replay(args.run_dir)
    if alive is None:
        run_state = "running? the %s holds it; this host cannot check" % runlock.describe(
            runlock.read_holder(args.run_dir))
    else:
        run_state = "running" if alive else (view.ended or "interrupted (driver gone)")
    table = Table(title="%s: %s" % (args.run_dir, run_state), title_justify="left")
    for column in ("fold", "state", "attempts", "host:device", "step", "note"):
        table.add_column(column, no_wrap=True)
    for k in sorted(view.folds):
        f = view.folds[k]
        note = f.reason
        if f.state == "done" and f.metrics:
            note = "age top-1 %.2f%%, gender %.2f%%, %s" % (100 * f.metrics["age_top1"], 100 * f.metrics["gender"],
                                                          format_duration(f.wall_s))
        table.add_row(str(k), f.state, str(f.attempt), "%s:%s" % (f.host, f.device) if f.host else "-",
                      "%d/%d" % (f.step, f.total_steps) if f.total_steps else str(f.step), note)
    console.print(table)
    if alive is False and any(f.state not in ("done",) for f in view.folds.values()):
        console.print("resume with: python -m scheduler run --resume %s" % args.run_dir, highlight=False)
    return 0


COMMANDS = {"run": run_command, "table": table_command, "status": status_command}

if __name__ == "__main__":
    sys.exit(main())
