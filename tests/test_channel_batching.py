"""Progress events in batches through the real progress channel and Session.drain.

The fold tasks' Reporter sends step events in batches (one actor call for many); these
check, on a real local Ray instance, that batches arrive complete and in each attempt's
order, that a step event never waits in a task for its next report, and that a batch the
channel receives twice (Ray replays calls in flight when the channel restarts) is
recorded once.
"""

import os
import time

import pytest
import ray

from conftest import quiet_console, ray_init_local, run_config
from lmtcnn import events as ev
from scheduler import rundir
from scheduler.channel import start_channel
from scheduler.session import Session

TASKS = 4
STEPS = 1500          # step events a task sends in one burst: many batches' worth
CHECKPOINT_EVERY = 400  # a checkpoint event among them, sent at once with what waits before it
WAIT_S = 60.0         # how long the driver waits for events before calling them lost (never in a pass)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray_init_local()
    yield
    ray.shutdown()


@pytest.fixture
def session(tmp_path):
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    s = Session(run_config(str(tmp_path), run_dir, [0]), run_dir, quiet_console(), True, False, "cpu", {"CPU": 0},
                {"run_dir": run_dir, "run_id": "test", "driver_host": "here"})
    s.channel = start_channel()
    yield s
    s.log.close()
    ray.kill(s.channel)


@ray.remote(num_cpus=0)
def burst(fold, channel, steps, release=None):
    """Send `steps` step events as fast as a loop can, a checkpoint event every
    CHECKPOINT_EVERY; with `release` (a file), stay quiet without closing until it exists,
    as a fold does through a long evaluation."""
    from scheduler.fold_task import Reporter

    report = Reporter(fold, 1, channel, None)
    for step in range(1, steps + 1):
        report(ev.make(ev.STEP_DONE, step=step, total_steps=steps, loss=1.0, learning_rate=0.01,
                       images_per_s=1.0))
        if step % CHECKPOINT_EVERY == 0:
            report(ev.make(ev.CHECKPOINT_SAVED, step=step, path="ckpt-%d" % step))
    while release is not None and not os.path.exists(release):
        time.sleep(0.05)
    report.close(timeout=60)
    return report.sequence


def received(session, fold):
    return len(session.seen[(fold, 1)])


def drain_until(session, done):
    """The driver's loop: drain until done() or WAIT_S passes."""
    deadline = time.time() + WAIT_S
    while not done() and time.time() < deadline:
        session.drain(wait_s=0.25)


def test_batches_arrive_complete_and_in_order(session):
    expected = STEPS + STEPS // CHECKPOINT_EVERY
    tasks = [burst.remote(k, session.channel, STEPS) for k in range(TASKS)]
    assert ray.get(tasks, timeout=120) == [expected] * TASKS
    session.drain_all()  # the tasks waited for the channel to hold everything
    recorded = [e for e in rundir.read_events(session.run_dir) if "seq" in e]
    for k in range(TASKS):
        mine = [e for e in recorded if e["fold"] == k]
        # Every number once, in the order the task numbered them: nothing lost or reordered.
        assert [e["seq"] for e in mine] == list(range(1, expected + 1))
        assert [e["step"] for e in mine if e["event"] == ev.STEP_DONE] == list(range(1, STEPS + 1))
        checkpoints = [i for i, e in enumerate(mine) if e["event"] == ev.CHECKPOINT_SAVED]
        assert [mine[i - 1]["step"] for i in checkpoints] == list(range(CHECKPOINT_EVERY, STEPS + 1,
                                                                         CHECKPOINT_EVERY))


def test_a_quiet_task_leaves_no_event_waiting(session, tmp_path):
    """After a burst the task goes quiet without closing its Reporter: its last step
    events must reach the driver all the same (the Reporter's thread sends them)."""
    release = str(tmp_path / "release")
    task = burst.remote(0, session.channel, STEPS, release)
    expected = STEPS + STEPS // CHECKPOINT_EVERY
    try:
        drain_until(session, lambda: received(session, 0) == expected)
        assert received(session, 0) == expected, "step events stayed in a quiet task"
    finally:
        open(release, "w").close()
    assert ray.get(task, timeout=60) == expected


def test_a_batch_received_twice_is_recorded_once(session):
    """What Ray does when the channel restarts with a call in flight: the call, a whole
    batch, runs again."""
    batch = [dict(ev.make(ev.STEP_DONE, step=s, total_steps=3, loss=1.0, learning_rate=0.01, images_per_s=1.0),
                  fold=0, attempt=1, seq=s) for s in (1, 2, 3)]
    ray.get(session.channel.push_many.remote(batch))
    ray.get(session.channel.push_many.remote(batch[1:] + [dict(batch[2], seq=4, step=4)]))
    session.drain_all()
    recorded = [e["seq"] for e in rundir.read_events(session.run_dir) if "seq" in e]
    assert recorded == [1, 2, 3, 4]
