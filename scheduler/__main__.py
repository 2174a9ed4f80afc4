"""`python -m scheduler {run,sweep,table,status,report,compare,list}`: LMTCNN's five folds on Ray."""

import argparse
import os
import sys

from lmtcnn.errors import UserError
from scheduler.rundir import replay


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
    p.add_argument("--no-report", action="store_true", help="skip RUN_DIR/report/ at the end (figures and "
                                                            "report.html; `scheduler report` makes it later)")
    p.add_argument("--force", action="store_true", help="take over the run directory from a driver on another "
                                                        "host that is gone (its driver.lock)")

    p = commands.add_parser("sweep", help="run every cell of a grid of overrides, each a whole cross-validation, "
                                          "under one driver; then one row per cell")
    p.add_argument("sweep_file", nargs="?", metavar="SWEEP", help="YAML sweep file, e.g. configs/sweep-demo.yaml")
    p.add_argument("--resume", metavar="SWEEP_DIR", help="continue a sweep: finished folds are kept, the others "
                                                         "resume from their checkpoints")
    p.add_argument("--address", help="Ray cluster to join (HOST:6379); default: scheduler.address, else a local "
                                     "Ray instance")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of every cell, e.g. --set train.max_steps=100 (repeatable; on --resume "
                        "scheduler.* only)")
    p.add_argument("--sweep-dir", help="sweep directory (default <runs_root>/<name>-<time>)")
    p.add_argument("--dry-run", action="store_true", help="print the cells and the plan and exit")
    p.add_argument("--no-dashboard", action="store_true", help="plain progress lines instead of the live view")
    p.add_argument("--no-report", action="store_true", help="skip each cell's report/ at the end")
    p.add_argument("--force", action="store_true", help="take over cells from a driver on another host that is gone")

    for name, text in (("table", "print a run's per-fold accuracy table (a sweep's: one row per cell)"),
                       ("report", "write RUN_DIR/report/: training curves, accuracy, age confusion and timeline "
                                  "figures and one self-contained report.html (also for unfinished runs)"),
                       ("status", "tell each fold's state in a finished, running or interrupted run")):
        p = commands.add_parser(name, help=text)
        p.add_argument("run_dir", metavar="RUN_DIR")

    from scheduler.results import METRIC_COLUMNS

    p = commands.add_parser("compare", help="compare runs fold by fold: differences, 95%% interval, paired t-test "
                                            "and Wilcoxon; three runs or more: each against the first")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--metric", action="append", choices=[key for key, _ in METRIC_COLUMNS],
                   help="compare only this metric (repeatable; default all)")
    p.add_argument("--format", choices=("md", "csv", "json"), help="write this format to stdout instead of tables")
    p.add_argument("--unchecked", action="store_true", help="compare also folds whose test set cannot be checked "
                                                            "(runs from before test-set fingerprints)")
    p = commands.add_parser("list", help="the runs below a directory, newest first: state, folds done, mean "
                                         "accuracy, model")
    p.add_argument("runs_dir", nargs="?", default="runs", metavar="RUNS_DIR", help="default: runs")
    p.add_argument("--format", choices=("md", "csv", "json"), help="write this format to stdout instead of a table")
    p = commands.add_parser("cluster-check", help="before a long run: can every Ray node run it? versions, "
                                                  "devices, npu_bridge, NPU ids, data and run directory paths")
    p.add_argument("config", nargs="?", metavar="CONFIG", help="YAML configuration whose paths to check (without: "
                                                               "versions and devices only)")
    p.add_argument("--address", help="Ray cluster (HOST:6379); default: scheduler.address, $RAY_ADDRESS, else a "
                                     "local Ray instance")

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
               live=live, dry_run=args.dry_run, force=args.force, report=not args.no_report)


def sweep_command(args, console):
    from scheduler.driver import run_sweep
    from scheduler.sweep import load_sweep, load_sweep_dir

    overrides = list(args.set)
    if args.address:
        overrides.append("scheduler.address=%s" % args.address)
    if args.resume:
        if args.sweep_file:
            raise UserError("sweep: give a sweep file or --resume SWEEP_DIR, not both (the sweep keeps its cells)")
        if args.sweep_dir:
            raise UserError("--sweep-dir: a resumed sweep stays in %s" % args.resume)
        sweep = load_sweep_dir(args.resume, overrides)
    elif args.sweep_file:
        sweep = load_sweep(args.sweep_file, overrides)
    else:
        raise UserError("sweep: name a sweep file, e.g. `python -m scheduler sweep configs/sweep-demo.yaml`")
    live = console.is_terminal and not args.no_dashboard
    return run_sweep(sweep, console, resumed=bool(args.resume), sweep_dir=args.sweep_dir or "", live=live,
                     dry_run=args.dry_run, force=args.force, report=not args.no_report)


def table_command(args, console):
    from scheduler.results import build_results, to_table
    from scheduler.sweep import SWEEP_RECORD

    if os.path.isfile(os.path.join(args.run_dir, SWEEP_RECORD)):
        return sweep_table_command(args, console)
    view, _ = replay(args.run_dir)
    console.print(to_table(build_results(view)))
    return 0


def sweep_table_command(args, console):
    from scheduler.sweep import load_sweep_dir
    from scheduler.sweep_results import build_sweep_results, to_table

    sweep = load_sweep_dir(args.run_dir)
    views = {cell.index: replay(cell.run_dir)[0] for cell in sweep.cells}
    console.print(to_table(build_sweep_results(sweep, views)))
    return 0


def status_command(args, console):
    from scheduler import runlock
    from scheduler.dashboard import status_table
    from scheduler.runs import run_state as describe_state

    view, alive = replay(args.run_dir)
    if alive is None:
        run_state = "running? the %s holds it; this host cannot check" % runlock.describe(
            runlock.read_holder(args.run_dir))
    else:  # as `list` tells it: finished, failed (some folds), interrupted, running
        run_state = describe_state([f.state for f in view.folds.values()], alive)
        if run_state == "interrupted" and view.ended != "interrupted":
            run_state += " (driver gone)"
    console.print(status_table(view, "%s: %s" % (args.run_dir, run_state)))
    if alive is False and any(f.state not in ("done",) for f in view.folds.values()):
        console.print("resume with: python -m scheduler run --resume %s" % args.run_dir, highlight=False)
    return 0


def compare_command(args, console):
    from scheduler.compare import compare_command as compare

    return compare(args, console)


def cluster_check_command(args, console):
    from scheduler.cluster_check import cluster_check_command as check

    return check(args, console)


def list_command(args, console):
    from scheduler.runs import list_command as list_runs

    return list_runs(args, console)


def report_command(args, console):
    from scheduler.report import write_report

    view, alive = replay(args.run_dir)
    try:
        path = write_report(args.run_dir, view, alive)
    except OSError as e:
        raise UserError("%s: cannot write the report there (%s); free space or fix the permissions of %s" % (
            e.filename or args.run_dir, e.strerror or e, args.run_dir))
    console.print("report: %s" % path, highlight=False, soft_wrap=True)
    return 0


COMMANDS = {"run": run_command, "sweep": sweep_command, "report": report_command, "table": table_command, "status": status_command,
            "compare": compare_command, "list": list_command, "cluster-check": cluster_check_command}

if __name__ == "__main__":
    sys.exit(main())
