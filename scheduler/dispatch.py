"""When queued fold attempts go to Ray.

A run hands Ray every fold at once: Ray queues what does not fit and starts each as a
device frees. A sweep has many more folds than devices, and Ray does not promise to start
queued tasks in the order they were submitted, nor would a retry submitted late get
ahead of folds that have not started. So a sweep keeps its queue itself and releases
only as many attempts as the cluster can run at once: the earliest cell's first (its
retries ahead of its queued folds), so cells finish one after another, each table
complete early, rather than all of them near the very end.
"""

import math
import time

from scheduler import placement as pl

RECOUNT_S = 2.0  # how often the cluster's slots are counted again (nodes join and leave)


def slots(request, nodes):
    """How many folds asking `request` the alive `nodes` can run at once."""
    total = 0
    for node in nodes:
        fits = [node["Resources"].get(key, 0) / amount for key, amount in request.items() if amount > 0]
        # 1e-6: Ray keeps fractional resources in units of 1/10000, so 3 x 1/3 GPU fits one GPU.
        total += int(math.floor(min(fits) + 1e-6)) if fits else 0
    return total


class Dispatcher:
    def __init__(self, sessions, request, throttle, nodes=pl.alive_nodes):
        """sessions: in the order their folds should run. throttle: False hands every queued
        attempt to Ray at once (a run), True only as many as there are free slots (a sweep).
        nodes: what returns the alive nodes (Ray's, unless a test gives its own)."""
        self.sessions, self.request, self.throttle, self.nodes = sessions, request, throttle, nodes
        self.slots, self.counted = None, 0.0

    def release(self):
        if not self.throttle:
            for session in self.sessions:
                session.release()
            return
        now = time.monotonic()
        if self.slots is None or now - self.counted >= RECOUNT_S:
            self.slots, self.counted = slots(self.request, self.nodes()), now
        if not self.slots:
            # No alive node can hold a fold: hand them all to Ray, whose queue keeps them for
            # a node that joins, while each fold's own unplaceable timeout runs.
            for session in self.sessions:
                session.release()
            return
        free = self.slots - sum(len(s.pending) for s in self.sessions)
        for session in self.sessions:
            if free <= 0:
                return
            free -= session.release(free)

    def waiting(self):
        return any(s.waiting for s in self.sessions)
