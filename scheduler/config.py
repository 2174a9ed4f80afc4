"""The run configuration: lmtcnn's sections plus the `scheduler:` section."""

from dataclasses import dataclass, field
from typing import List

from lmtcnn.config import Config, load_config

PLACEMENTS = ("auto", "npu", "gpu", "cpu")
# 8 folds leave each 1/8 - 5% of the GPU's memory (placement.CUDA_CONTEXT_HEADROOM): 1.2 GB of
# a 16 GB card. A run has 5 folds; a sweep may put more on one host.
MAX_FOLDS_PER_GPU = 8


@dataclass
class SchedulerConfig:
    # What each fold asks Ray for: one NPU (custom resource "NPU"), one GPU, or CPUs.
    # auto takes NPU if any node offers one, then GPU, then CPU.
    device: str = "auto"
    folds: List[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    # CPUs reserved per fold (input pipeline; the TF thread count when training on CPU).
    cpus_per_fold: int = 1
    # GPU placement only: folds sharing one GPU. Each asks Ray for 1/N of a GPU and caps its
    # TensorFlow at a little under 1/N of the GPU's memory (train.gpu_memory_fraction).
    # NPUs are never shared: the Ascend runtime wants one process per chip.
    folds_per_gpu: int = 1
    # Attempts after a worker or host dies; each resumes from the fold's last checkpoint.
    # A Python error in the fold (bad data, diverged loss) is not retried.
    max_retries: int = 2
    # Ray cluster to join ("HOST:6379"); empty starts a local Ray instance.
    address: str = ""
    # Run directory; empty means <runs_root>/<name>-<YYYYmmdd-HHMMSS>.
    run_dir: str = ""
    runs_root: str = "runs"
    # Local instance only: NPUs to declare; -1 counts /dev/davinci<N>.
    local_npus: int = -1
    # Local instance only: CPUs Ray hands out to folds; 0: this host's cores.
    local_cpus: int = 0
    # After Ctrl-C (or SIGTERM, SIGHUP), how long folds get to save a checkpoint before
    # they are killed.
    stop_timeout_s: float = 120.0
    # A fold that reports nothing for this long is cancelled as stalled and retried from
    # its checkpoint. 0: automatic, a few minutes past the slowest gap between its reports.
    stall_timeout_s: float = 0.0
    # The allowance instead, before a fold's first step and during its first evaluation:
    # importing TensorFlow, building and (on an NPU) compiling the graph.
    startup_timeout_s: float = 1800.0
    # A fold (or its retry) that no alive node can hold fails after this long, naming the
    # resource it is missing; a node that joins meanwhile takes it.
    unplaceable_timeout_s: float = 600.0

    def validate(self):
        if self.device not in PLACEMENTS:
            yield "device", "must be one of %s" % ", ".join(PLACEMENTS)
        if not self.folds or any(not 0 <= k <= 4 for k in self.folds) or len(set(self.folds)) != len(self.folds):
            yield "folds", "must list distinct folds from 0 to 4"
        if self.cpus_per_fold < 1:
            yield "cpus_per_fold", "must be >= 1 (a fold's input pipeline needs a CPU, and Ray must count it)"
        if not 1 <= self.folds_per_gpu <= MAX_FOLDS_PER_GPU:
            yield "folds_per_gpu", "must be from 1 (a GPU per fold) to %d (beyond that a fold's share of GPU " \
                                   "memory, less room for its CUDA context, is too small to train in)" % (
                                       MAX_FOLDS_PER_GPU)
        elif self.folds_per_gpu > 1 and self.device == "npu":
            yield "folds_per_gpu", "applies to GPUs only: the Ascend runtime wants one process per NPU; set " \
                                   "scheduler.folds_per_gpu 1 with scheduler.device npu"
        if self.max_retries < 0:
            yield "max_retries", "must be >= 0"
        for key in ("stop_timeout_s", "startup_timeout_s", "unplaceable_timeout_s"):
            if getattr(self, key) <= 0:
                yield key, "must be > 0 seconds"
        if self.stall_timeout_s < 0:
            yield "stall_timeout_s", "must be >= 0 seconds (0: automatic)"
        if self.local_cpus < 0:
            yield "local_cpus", "must be >= 0 (0: this host's cores)"
        if self.local_npus < -1:
            yield "local_npus", "must be -1 (count /dev/davinci<N>) or >= 0"


@dataclass
class RunConfig(Config):
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def validate(self):
        yield from Config.validate(self)
        # Training on an accelerator needs that accelerator placed (it is what keeps two
        # folds off one chip); training on the CPU may sit on any placement.
        if self.train.device in ("npu", "gpu") and self.scheduler.device not in ("auto", self.train.device):
            yield "train.device", "needs scheduler.device %s or auto (got scheduler.device %s)" % (
                self.train.device, self.scheduler.device)
        # An explicit memory cap must leave the other folds on the GPU theirs; 0 lets the
        # scheduler choose (scheduler.placement.gpu_memory_fraction).
        share = 1.0 / self.scheduler.folds_per_gpu if self.scheduler.folds_per_gpu >= 1 else 1.0
        if self.train.gpu_memory_fraction > share:
            yield "train.gpu_memory_fraction", "is more than 1/%d of the GPU that scheduler.folds_per_gpu %d " \
                                               "shares; set it to 0 (the scheduler picks a little under 1/%d)" % (
                                                   self.scheduler.folds_per_gpu, self.scheduler.folds_per_gpu,
                                                   self.scheduler.folds_per_gpu)


def load_run_config(path, overrides=()):
    return load_config(path, RunConfig, overrides)
