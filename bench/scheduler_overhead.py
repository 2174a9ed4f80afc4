"""What the scheduler itself costs, beside the folds' own work. Four measures, one run:

  (a) startup  from `run` to the first fold's first training step, split into Ray's start,
               the scheduler's part (run directory, channel actor, task submission, the
               task's worker process) and TensorFlow's (import, graph build, session, the
               first step), from the times the fold's own events carry
  (b) channel  progress events/s through the real ProgressChannel and Session.drain: 20
               Ray tasks send step events with the fold tasks' own Reporter (which batches
               them) as fast as they can while the driver drains at its poll interval;
               every sequence number of every task must arrive (goal: above 5,000/s, none
               lost)
  (c) view     CPU share of the live view: the real dashboard on a real rich Live writing
               to a null terminal, 20 running folds whose state comes from events applied
               every POLL_S, redrawn at most every REFRESH_S, as the driver does (goal:
               under 2% of a core)
  (d) makespan 5 real folds on 2 slots (scheduler.cpus_per_fold 1 of 2 CPUs) through the
               real driver, each some 30-40 s long here (--steps): long enough that the
               fixed cost of starting a fold is in proportion, since real folds last hours;
               against the ideal: the best split of the folds' own
               durations (first event of the task to its end, measured in this run) onto
               2 slots, i.e. 3 rounds of one fold when the folds are equal (goal: within 5%);
               and against the same durations run in the driver's order with no time
               between folds (what is left is the scheduler's own cost); also the gap in
               seconds between a fold's end and the next fold's first event, which does
               not grow with the fold: scale it to your folds' length

(a) and (d) come from the same run. All on this machine's CPU, TensorFlow on the lane's
Python; the machine may be shared, so (b) and (c) repeat --rounds times (median).

  python bench/scheduler_overhead.py [--steps 350] [--events 2000] [--view-s 30] [--rounds 3]
"""

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lmtcnn import events as ev  # noqa: E402
from lmtcnn.config import build_config  # noqa: E402
from scheduler import state as st  # noqa: E402
from scheduler.config import RunConfig  # noqa: E402

FOLDS = 5
SLOTS = 2
SYNTHETIC_FOLDS = 20


def run_config(data_dir, run_dir, steps):
    return build_config({
        "name": "overhead", "data": {"data_dir": data_dir},
        "model": {"image_size": 64, "batch_norm_decay": 0.9},
        # log_every_steps 1: the first step's event is the one (a) looks for.
        "train": {"device": "cpu", "batch_size": 16, "max_steps": steps, "log_every_steps": 1,
                  "checkpoint_every_steps": 10 ** 6, "summary_every_steps": 10 ** 6, "eval_every_steps": 0,
                  "shuffle_buffer": 64, "preprocess_threads": 1, "cpu_threads": 1},
        "eval": {"batch_size": 64},
        "scheduler": {"folds": list(range(FOLDS)), "run_dir": run_dir, "device": "cpu", "cpus_per_fold": 1,
                      "local_cpus": SLOTS}}, RunConfig)


def null_console(width=80, height=40):
    from rich.console import Console

    return Console(file=open(os.devnull, "w"), force_terminal=True, width=width, height=height,
                   color_system="truecolor")


def ideal_makespan(durations, slots):
    """The shortest makespan of these fold durations on `slots` slots (exhaustive: the
    assignment of each fold to a slot; order within a slot does not matter)."""
    best = float("inf")
    for assignment in itertools.product(range(slots), repeat=len(durations)):
        loads = [0.0] * slots
        for slot, d in zip(assignment, durations):
            loads[slot] += d
        best = min(best, max(loads))
    return best


def fifo_makespan(durations, slots):
    """The makespan of these durations started in order, each on the first slot to free,
    with no time between folds: the driver's own order (folds in turn) at no cost."""
    free = [0.0] * slots
    for d in durations:
        free[free.index(min(free))] += d
    return max(free)


def startup_and_makespan(data_dir, work, steps):
    from scheduler.driver import connect, run
    from scheduler.rundir import read_events

    run_dir = os.path.join(work, "run")
    config = run_config(data_dir, run_dir, steps)
    t0 = time.time()
    connect("local", config.scheduler.local_npus, config.scheduler.local_cpus)
    t_ray = time.time()
    status = run(config, null_console(), live=False, report=False)
    t_end = time.time()
    if status != 0:
        raise SystemExit("the run of %d folds failed (status %d); see %s" % (FOLDS, status, run_dir))
    events = list(read_events(run_dir))

    def first(kind, fold=None, where=lambda e: True):
        return min((e for e in events if e["event"] == kind and (fold is None or e.get("fold") == fold)
                    and where(e)), key=lambda e: e["time"])

    step1 = first(ev.STEP_DONE)
    fold = step1["fold"]
    task_start = first(ev.MESSAGE, fold)  # "attempt started on ...": the task's first act
    before_tf = first(ev.MESSAGE, fold, lambda e: "env" in e)  # just before TensorFlow's import
    started = first(ev.FOLD_STARTED, fold)
    startup = {"total_s": step1["time"] - t0, "ray_init_s": t_ray - t0,
               "run_to_task_s": task_start["time"] - t_ray, "task_to_tf_s": before_tf["time"] - task_start["time"],
               "tf_import_graph_s": started["time"] - before_tf["time"], "first_step_s": step1["time"] - started["time"]}
    startup["scheduler_s"] = startup["total_s"] - startup["tf_import_graph_s"] - startup["first_step_s"]

    starts = [first(ev.MESSAGE, k)["time"] for k in range(FOLDS)]
    ends = [first(ev.FOLD_FINISHED, k)["time"] for k in range(FOLDS)]
    durations = [end - start for start, end in zip(starts, ends)]
    # Where time goes between folds: from a slot's fold ending to the next task's first
    # event (the driver sees the end, Ray starts a fresh worker process: max_calls=1).
    gaps = []
    for start in sorted(starts)[SLOTS:]:
        gaps.append(start - max(end for end in ends if end <= start))
    ideal = ideal_makespan(durations, SLOTS)
    in_order = fifo_makespan([durations[k] for k in sorted(range(FOLDS), key=lambda k: starts[k])], SLOTS)
    run_started, run_finished = first(st.RUN_STARTED), first(st.RUN_FINISHED)
    makespan = {"fold_s": durations, "ideal_s": ideal, "in_order_s": in_order, "gaps_s": gaps, "first_task_s": min(starts) - run_started["time"],
                "submit_to_end_s": run_finished["time"] - run_started["time"],
                "run_call_s": t_end - t_ray}
    return startup, makespan


def channel_rate(work, per_fold, round_no):
    """(events/s from the tasks' start to the last event drained, events lost, the driver's
    CPU seconds per event in drain)."""
    import ray

    from scheduler.channel import start_channel
    from scheduler.driver import POLL_S
    from scheduler.session import Session

    @ray.remote(num_cpus=0)
    def synthetic_fold(fold, channel, count, start_at):
        from scheduler.fold_task import Reporter

        report = Reporter(fold, 1, channel, None)
        time.sleep(max(start_at - time.time(), 0))
        for step in range(1, count + 1):
            report(ev.make(ev.STEP_DONE, step=step, total_steps=count, loss=1.0 / step, learning_rate=0.01,
                           images_per_s=100.0))
        # As a fold task ends: send what waits, then wait until the channel holds it all.
        report.close(timeout=60)
        return count

    run_dir = os.path.join(work, "channel-%d" % round_no)
    os.makedirs(run_dir)
    config = run_config(os.path.join(work, "data"), run_dir, 1)
    session = Session(config, run_dir, null_console(), True, False, "cpu", {"CPU": 0},
                      {"run_dir": run_dir, "run_id": "bench", "driver_host": "here"})
    session.channel = start_channel()
    # Worker processes started and the channel up before the clock starts: this measures
    # the channel, not Ray starting 20 Python processes.
    ray.get([synthetic_fold.remote(k, session.channel, 0, 0) for k in range(SYNTHETIC_FOLDS)])
    ray.get(session.channel.drain.remote())
    start_at = time.time() + 0.5
    pending = [synthetic_fold.remote(k, session.channel, per_fold, start_at) for k in range(SYNTHETIC_FOLDS)]
    expected = SYNTHETIC_FOLDS * per_fold
    received = lambda: sum(len(session.seen[(k, 1)]) for k in range(SYNTHETIC_FOLDS))  # noqa: E731
    drain_cpu = 0.0  # the driver's own CPU time in drain (emit: events.jsonl, the state)
    while pending or received() < expected:  # the driver's loop: wait on tasks, drain
        if pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
            cpu = time.process_time()
            session.drain()
            drain_cpu += time.process_time() - cpu
        else:
            cpu = time.process_time()
            session.drain_all()
            drain_cpu += time.process_time() - cpu
            if received() < expected:
                break  # everything was flushed: what is missing now is lost
    elapsed = time.time() - start_at
    lost = sum(per_fold - len(session.seen[(k, 1)] & set(range(1, per_fold + 1))) for k in range(SYNTHETIC_FOLDS))
    session.log.close()
    ray.kill(session.channel)
    return received() / elapsed, lost, drain_cpu / max(received(), 1)


def view_cpu_share(seconds):
    """Process CPU time over wall time while the live view redraws 20 running folds."""
    from rich.live import Live

    from scheduler.dashboard import render
    from scheduler.driver import POLL_S, REFRESH_S

    view = st.RunView()
    now = time.time()
    st.apply(view, ev.make(st.RUN_STARTED, name="cv5-overhead", run_dir="runs/cv5-overhead-20260101-000000",
                           folds=list(range(SYNTHETIC_FOLDS)), placement="npu {NPU: 1, CPU: 12}", where="here",
                           resumed=False, data={}, run_key="k", time=now))
    for k in range(SYNTHETIC_FOLDS):
        for event in (ev.make(st.FOLD_QUEUED, fold=k, attempt=1),
                      ev.make(ev.FOLD_STARTED, fold=k, attempt=1, device="npu", device_label="NPU%d" % (k % 8),
                              host="node-%d" % (k // 8), start_step=0, total_steps=50000, train_images=11000)):
            st.apply(view, event)
    console = null_console()
    live = Live(render(view, time.time()), console=console, auto_refresh=False)
    live.start()
    step, draws, drawn = 0, 0, None
    wall0, cpu0 = time.time(), time.process_time()
    try:
        while time.time() - wall0 < seconds:
            turn = time.time()
            step += 100  # every fold reports once a turn: more often than real folds do
            for k in range(SYNTHETIC_FOLDS):
                st.apply(view, ev.make(ev.STEP_DONE, fold=k, attempt=1, step=step, total_steps=50000,
                                       loss=2.0 - step / 1e5, learning_rate=0.01, images_per_s=3200.0))
            # The driver's loop turns every POLL_S and redraws at most every REFRESH_S.
            if drawn is None or time.monotonic() - drawn >= REFRESH_S:
                live.update(render(view, time.time()), refresh=True)
                drawn = time.monotonic()
                draws += 1
            time.sleep(max(POLL_S - (time.time() - turn), 0))
    finally:
        live.stop()
    cpu = time.process_time() - cpu0
    return cpu / (time.time() - wall0), draws, cpu / max(draws, 1)


def main():
    parser = argparse.ArgumentParser()
    # 350 steps: folds of 30-40 s on this 2-core machine, the whole bench about 3-4 minutes.
    parser.add_argument("--steps", type=int, default=350, help="training steps of each fold in (a) and (d)")
    # 2,000 each: 40,000 events, so the rate is not just the driver's poll interval.
    parser.add_argument("--events", type=int, default=2000, help="events each of the 20 tasks sends in (b)")
    parser.add_argument("--view-s", type=float, default=30.0, help="seconds the live view is drawn in (c)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import ray

    from lmtcnn.prepare import prepare
    from lmtcnn.synth import synthesize
    from scheduler.driver import POLL_S, REFRESH_S

    work = tempfile.mkdtemp(prefix="lmtcnn-bench-sched-")
    synthesize(os.path.join(work, "raw"), per_fold=30, seed=0)
    prepare(os.path.join(work, "raw"), os.path.join(work, "data"), workers=2)
    try:
        startup, makespan = startup_and_makespan(os.path.join(work, "data"), work, args.steps)
        channel = [channel_rate(work, args.events, r) for r in range(args.rounds)]
    finally:
        ray.shutdown()
    views = [view_cpu_share(args.view_s / args.rounds) for _ in range(args.rounds)]

    print("Python %s, Ray %s, %d cores here" % (sys.version.split()[0], ray.__version__, os.cpu_count()))
    print("(a) run -> first fold's first step: %.2f s = Ray start %.2f + scheduler to task %.2f + task to TF "
          "import %.2f | TF import, graph, session %.2f + first step %.2f; the scheduler's own: %.2f s "
          "(%.2f without Ray's start)" % (
              startup["total_s"], startup["ray_init_s"], startup["run_to_task_s"], startup["task_to_tf_s"],
              startup["tf_import_graph_s"], startup["first_step_s"], startup["scheduler_s"],
              startup["scheduler_s"] - startup["ray_init_s"]))
    rates = [r for r, _, _ in channel]
    print("(b) channel: %d tasks x %d step events: %s events/s (median %.0f), lost %s; goal > 5000/s, none lost"
          % (SYNTHETIC_FOLDS, args.events, ", ".join("%.0f" % r for r in rates), statistics.median(rates),
             ", ".join(str(lost) for _, lost, _ in channel)))
    print("    the driver's CPU in drain: %.0f us an event (%.0f events/s if it were the limit)" % (
        1e6 * statistics.median(c for _, _, c in channel), 1 / max(statistics.median(c for _, _, c in channel), 1e-9)))
    shares = [s for s, _, _ in views]
    print("(c) live view, %d running folds, events every %.2f s, redrawn at most every %.2f s (%d draws a round): "
          "%s%% of a core (median %.2f%%); goal < 2%%" % (SYNTHETIC_FOLDS, POLL_S, REFRESH_S, views[0][1], ", ".join("%.2f" % (100 * s) for s in shares),
                          100 * statistics.median(shares)))
    print("    %.1f ms of CPU a draw" % (1000 * statistics.median(d for _, _, d in views)))
    print("(d) %d folds of %d steps on %d slots: fold durations %s s; ideal %.1f s; submission to end %.1f s "
          "(%.3f x ideal); the run call (results written) %.1f s (%.3f x ideal); goal within 5%%" % (
              FOLDS, args.steps, SLOTS, " ".join("%.1f" % d for d in makespan["fold_s"]), makespan["ideal_s"],
              makespan["submit_to_end_s"], makespan["submit_to_end_s"] / makespan["ideal_s"],
              makespan["run_call_s"], makespan["run_call_s"] / makespan["ideal_s"]))
    print("    the same durations in the driver's order with nothing between folds: %.1f s; submission to end is "
          "%.3f x that" % (makespan["in_order_s"], makespan["submit_to_end_s"] / makespan["in_order_s"]))
    print("    run start to the first task's first event %.1f s; a slot's fold end to the next task's first event: %s s"
          " (median %.2f s, %.1f%% of the median fold)" % (
              makespan["first_task_s"], " ".join("%.2f" % g for g in makespan["gaps_s"]),
              statistics.median(makespan["gaps_s"]),
              100 * statistics.median(makespan["gaps_s"]) / statistics.median(makespan["fold_s"])))
    print(json.dumps({"startup": startup, "channel": channel, "view": views, "makespan": makespan}))


if __name__ == "__main__":
    main()
