"""The progress channel: a small actor that fold tasks send events to, drained by the driver.

Tasks call `push_many.remote(events)` without waiting, so a slow driver never slows
training; each call carries the events a task gathered while its previous call was in
flight (scheduler.fold_task.Reporter), as one actor call costs far more than one event.
The actor keeps every event in order until the driver collects it. It lives on the
driver's node, so losing a worker host loses no history.

If its process dies, Ray restarts it and replays the calls in flight, whole batches
included; only events it held undrained are gone. Every event carries a sequence number
per fold attempt, so the driver drops the duplicates a replay brings and counts what was
lost; a fold's end travels in its task's return value and is never lost.
"""

import os

import ray


@ray.remote(num_cpus=0)
class ProgressChannel:
    def __init__(self):
        self._events = []

    def push(self, event):
        self._events.append(event)

    def push_many(self, events):
        """A batch in the order the task numbered it. A replayed batch is appended again:
        the driver drops its repeats by sequence number, as it does single events."""
        self._events.extend(events)

    def flush(self):
        """A no-op a task waits for: calls from one caller run in order, so once it returns
        every event the task pushed before it has arrived."""

    def drain(self):
        """(this incarnation's process id, the events held): a new id tells the driver that
        the channel was restarted, and lost what it held."""
        events, self._events = self._events, []
        return os.getpid(), events


def start_channel():
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return ProgressChannel.options(
        max_restarts=-1, max_task_retries=-1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)).remote()
