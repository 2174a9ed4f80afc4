"""Typed configuration: nested dataclasses are the schema, YAML only overrides them.

One loader serves both command lines (`python -m lmtcnn`, `python -m scheduler`): unknown
keys, wrong types and impossible values become one `UserError` line naming the file and
the key, before any work starts. `--set a.b=value` overrides go through the same checks.
"""

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field

import yaml

from lmtcnn.errors import UserError

MODEL_TYPES = ("LMTCNN-1-1", "LMTCNN-2-1")
MIN_IMAGE_SIZE = 47  # conv 7/4 -> pool 3/2 -> depthwise /2 -> pool 3/2 must leave 1x1
# Ascend `precision_mode` values of the TF 1.15 adapter; "" keeps the chip's default.
NPU_PRECISION_MODES = ("", "allow_fp32_to_fp16", "force_fp16", "force_fp32", "must_keep_origin_dtype",
                       "allow_mix_precision", "allow_mix_precision_fp16", "allow_mix_precision_bf16",
                       "allow_fp32_to_bf16", "cube_fp16in_fp32out")
# The Ascend modes that are mixed precision: what `train.precision: mixed` may run as.
NPU_MIXED_MODES = ("allow_mix_precision", "allow_mix_precision_fp16", "allow_mix_precision_bf16")
PRECISIONS = ("fp32", "mixed")
DEVICES = ("auto", "cpu", "gpu", "npu")
AUGMENTATIONS = ("authors", "none")
CACHE_MODES = ("auto", "off", "decoded", "view")  # train.cache; see lmtcnn.input_pipeline
BATCH_NORM_AT_TEST = ("moving", "batch")


@dataclass
class DataConfig:
    # Prepared data (`python -m lmtcnn prepare --out`): TFRecords, split lists, manifest.
    data_dir: str = "data/adience"
    # When > 0, the scheduler generates this many synthetic faces per fold into
    # `<data_dir>/raw` and prepares them on first use (demo and tests; never real data).
    synthetic_per_fold: int = 0
    synthetic_seed: int = 0

    def validate(self):
        if not self.data_dir:
            yield "data_dir", "must name the prepared data directory"
        if self.synthetic_per_fold < 0:
            yield "synthetic_per_fold", "must be >= 0 (0 means real prepared data)"


@dataclass
class ModelConfig:
    type: str = "LMTCNN-1-1"
    # Network input side in pixels; 227 is the paper's. The flatten size follows it.
    image_size: int = 227
    # Probability of dropping an FC activation while training (the seed's `pdrop`).
    dropout_prob: float = 0.0
    # Moving-average decay of the BN statistics that evaluation uses. The reference's
    # 0.999 needs thousands of steps to forget the initial (0, 1); short runs want ~0.9.
    batch_norm_decay: float = 0.999

    def validate(self):
        if self.type not in MODEL_TYPES:
            yield "type", "must be one of %s" % ", ".join(MODEL_TYPES)
        if not MIN_IMAGE_SIZE <= self.image_size <= 256:
            yield "image_size", "must be between %d (smaller leaves nothing for the last pooling) and 256 " \
                                "pixels (stored images are 256x256)" % MIN_IMAGE_SIZE
        if not 0.0 <= self.dropout_prob < 1.0:
            yield "dropout_prob", "must be in [0, 1)"
        if not 0.0 < self.batch_norm_decay < 1.0:
            yield "batch_norm_decay", "must be in (0, 1)"


@dataclass
class TrainConfig:
    device: str = "auto"
    batch_size: int = 32
    learning_rate: float = 0.01
    # Staircase decay: lr * decay_rate ** (step // steps_per_decay).
    decay_rate: float = 0.1
    steps_per_decay: int = 10000
    max_steps: int = 50000
    # > 0 trains this many passes over the training split instead of max_steps (as the seed).
    epochs: int = -1
    momentum: float = 0.9
    clip_norm: float = 4.0
    # Loss = CE(age) + CE(gender) + regularization_scale * sum(weight_decay * l2(w)).
    weight_decay: float = 0.0005
    regularization_scale: float = 0.01
    # Warm start (the seed's `pre_checkpoint_path`): restored before the first step.
    pretrained_checkpoint: str = ""
    # Where `python -m lmtcnn train` writes `fold_<k>/` (the seed's `model_dir`).
    # The scheduler ignores it and writes into its run directory.
    model_dir: str = "models"
    checkpoint_every_steps: int = 1000
    keep_checkpoints: int = 3
    summary_every_steps: int = 100
    log_every_steps: int = 100
    # Validation-split evaluation during training; 0 turns it off.
    eval_every_steps: int = 5000
    seed: int = 0
    shuffle_buffer: int = 2000
    # Training view of an image: "authors" = their random crop 227 of 256, flip,
    # brightness and contrast, standardise; "none" = the test view (resize to the input
    # size, standardise), as the Ascend port trains (its distortions are commented out).
    augment: str = "authors"
    # Keep the training images in memory after the first epoch instead of decoding every
    # JPEG every epoch: "decoded" pixels (uint8 at the stored 256x256, 196 KB an image;
    # the authors' distortions still run each epoch), the finished test "view" (augment
    # none only; float32 at the input size, 618 KB an image at 227), "off", or "auto": on
    # an NPU or GPU the view when it fits in cache_memory_mb, else the decoded pixels when
    # they fit, else off; on a CPU off (the network, not the input, bounds a CPU fold). Each image's training view is unchanged; only later epochs keep the first
    # epoch's record-file order (lmtcnn.input_pipeline.train_batches says why that is fine).
    cache: str = "auto"
    # Memory per fold that cache "auto" may take. The default holds Adience's largest
    # training split decoded (12,056 images: 2.2 GiB), not its test view (6.9 GiB).
    cache_memory_mb: int = 4096
    # Parallel image decoding/augmentation calls (the seed's num_preprocess_threads);
    # 0: the fold's CPUs (scheduler.cpus_per_fold), or this host's cores standalone.
    preprocess_threads: int = 0
    # TensorFlow intra/inter-op threads on CPU; 0 lets TensorFlow choose.
    cpu_threads: int = 0
    # Ascend `precision_mode`; empty keeps the chip's default
    # (910: allow_fp32_to_fp16, 910B: must_keep_origin_dtype).
    npu_precision_mode: str = ""
    # "mixed": float16 where it is safe, float32 elsewhere, per device (lmtcnn.device.
    # precision_plan): NPU precision_mode allow_mix_precision unless npu_precision_mode
    # names a mixed mode itself; GPU TF's automatic mixed precision with dynamic loss
    # scaling; CPU float32 (bfloat16 measured slower, docs/BENCHMARKS.md). "fp32" leaves
    # the NPU at npu_precision_mode (empty: the chip's default).
    precision: str = "fp32"
    # GPU only: the share of the GPU's memory TensorFlow may take (per_process_gpu_memory_fraction),
    # for folds sharing one GPU; 0 grows as needed (allow_growth), right for a GPU of one's own.
    # The scheduler fills it from scheduler.folds_per_gpu when left 0.
    gpu_memory_fraction: float = 0.0

    def validate(self):
        if self.device not in DEVICES:
            yield "device", "must be one of %s" % ", ".join(DEVICES)
        for key in ("batch_size", "steps_per_decay", "max_steps", "checkpoint_every_steps",
                    "summary_every_steps", "log_every_steps", "keep_checkpoints", "shuffle_buffer"):
            if getattr(self, key) <= 0:
                yield key, "must be > 0"
        if self.preprocess_threads < 0:
            yield "preprocess_threads", "must be >= 0 (0: one per CPU of the fold)"
        if self.augment not in AUGMENTATIONS:
            yield "augment", "must be one of %s" % ", ".join(AUGMENTATIONS)
        if self.cache not in CACHE_MODES:
            yield "cache", "must be one of %s" % ", ".join(CACHE_MODES)
        elif self.cache == "view" and self.augment != "none":
            yield "cache", "view needs train.augment none (the random crop needs the whole stored image); use " \
                           "decoded or auto"
        if self.cache_memory_mb < 0:
            yield "cache_memory_mb", "must be >= 0"
        if self.learning_rate <= 0:
            yield "learning_rate", "must be > 0"
        if not 0 < self.decay_rate <= 1:
            yield "decay_rate", "must be in (0, 1]"
        if not 0 <= self.momentum < 1:
            yield "momentum", "must be in [0, 1)"
        for key in ("clip_norm", "weight_decay", "regularization_scale", "eval_every_steps",
                    "cpu_threads"):
            if getattr(self, key) < 0:
                yield key, "must be >= 0"
        if self.epochs == 0 or self.epochs < -1:
            yield "epochs", "must be -1 (use max_steps) or > 0"
        if not 0 <= self.gpu_memory_fraction <= 1:
            yield "gpu_memory_fraction", "must be in [0, 1] (0: grow as needed)"
        if self.npu_precision_mode not in NPU_PRECISION_MODES:
            yield "npu_precision_mode", "must be empty (the chip's default) or one of %s" % ", ".join(
                NPU_PRECISION_MODES[1:])
        if self.precision not in PRECISIONS:
            yield "precision", "must be one of %s" % ", ".join(PRECISIONS)
        elif self.precision == "mixed" and self.npu_precision_mode not in ("",) + NPU_MIXED_MODES:
            yield "precision", "mixed contradicts train.npu_precision_mode %s; leave npu_precision_mode empty " \
                               "(mixed then runs as allow_mix_precision), set it to one of %s, or set precision " \
                               "fp32" % (self.npu_precision_mode, ", ".join(NPU_MIXED_MODES))


@dataclass
class EvalConfig:
    # Test-time batch norm: "moving" uses the moving averages learnt in training (correct);
    # "batch" normalises each test batch with its own statistics, as the reference's
    # evaluation does (it never passes is_training), to reproduce its published numbers.
    batch_norm: str = "moving"
    # Images per evaluation batch; the reference's 128. With batch_norm "batch" it sets
    # which images share statistics; either way every image counts exactly once.
    batch_size: int = 128

    def validate(self):
        if self.batch_norm not in BATCH_NORM_AT_TEST:
            yield "batch_norm", "must be one of %s" % ", ".join(BATCH_NORM_AT_TEST)
        if self.batch_size <= 0:
            yield "batch_size", "must be > 0"


@dataclass
class Config:
    """Everything one fold's training needs."""

    name: str = "lmtcnn"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self):
        if not self.name or "/" in self.name:
            yield "name", "must be a non-empty name without '/'"


def load_config(path, schema=Config, overrides=(), ignore_keys=()):
    """Read `path` (YAML) into `schema`, apply `key=value` overrides, validate.

    Args:
      path: YAML file; an empty file gives the defaults.
      schema: a dataclass such as `Config` or the scheduler's `RunConfig`.
      overrides: strings "a.b=value"; the value is read as YAML ("100" -> int).
      ignore_keys: top-level keys accepted and skipped (another schema's sections).
    Returns: an instance of `schema`.
    Raises: UserError naming the file (or --set) and the key.
    """
    try:
        with open(path, "r", encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise UserError("%s: no such configuration file; pass a YAML file such as configs/cv5.yaml" % path)
    except IsADirectoryError:
        raise UserError("%s: a directory, not a configuration file; pass a YAML file such as configs/cv5.yaml" % path)
    except UnicodeDecodeError:
        raise UserError("%s: not a UTF-8 text file (binary?); pass a YAML file such as configs/cv5.yaml" % path)
    except OSError as e:
        raise UserError("%s: cannot read it (%s)" % (path, e.strerror or e))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = ": line %d" % (mark.line + 1) if mark else ""
        # ReaderError (a control character) has no `problem` and a multi-line text.
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise UserError("%s%s: not valid YAML (%s)" % (path, where, problem))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError("%s: the top level must be a mapping of sections (data:, model:, train:)" % path)
    for key in ignore_keys:
        raw.pop(key, None)
    config = build_config(raw, schema, origin=path)
    # Each override is checked on its own, so an error names `--set key=value`, not the file.
    for item in overrides:
        apply_override(raw, item)
        config = build_config(raw, schema, origin="--set %s" % item)
    return config


def apply_override(raw, item):
    """Set "a.b=value" into the nested dict `raw`; the value is parsed as YAML."""
    if "=" not in item:
        raise UserError("--set %s: expected key=value, e.g. --set train.max_steps=100" % item)
    dotted, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    parts = dotted.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError("--set %s: '%s' is not a section" % (item, part))
        node = child
    node[parts[-1]] = value


def build_config(raw, schema, origin="<config>"):
    """Turn a plain nested dict into `schema`, checking keys, types and values."""
    config = _build(schema, raw, origin, prefix="")
    _validate(config, origin, prefix="")
    return config


def config_to_dict(config):
    return dataclasses.asdict(config)


def dump_config(config):
    """YAML text that `load_config` reads back into an equal configuration."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=False)


def _build(cls, raw, origin, prefix):
    if not isinstance(raw, dict):
        raise UserError("%s: key '%s' must be a mapping of keys" % (origin, prefix.rstrip(".") or "<top>"))
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in hints:
            raise UserError("%s: unknown key '%s%s'; known keys here: %s"
                            % (origin, prefix, key, ", ".join(names)))
        kwargs[key] = _coerce(hints[key], value, origin, prefix + str(key))
    return cls(**kwargs)


def _coerce(kind, value, origin, key):
    if dataclasses.is_dataclass(kind):
        return _build(kind, value if value is not None else {}, origin, key + ".")
    if getattr(kind, "__origin__", None) in (list, typing.List):
        (item_kind,) = kind.__args__
        if not isinstance(value, list):
            raise UserError("%s: key '%s' must be a list, got %r" % (origin, key, value))
        return [_coerce(item_kind, v, origin, "%s[%d]" % (key, i)) for i, v in enumerate(value)]
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise UserError("%s: key '%s' must be a finite number, got %r" % (origin, key, value))
            return float(value)
        if isinstance(value, str):
            raise UserError("%s: key '%s' must be a number, got the string %r (YAML reads 1e-4 as "
                            "text: write 1.0e-4)" % (origin, key, value))
    elif kind is str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
    else:
        raise TypeError("unsupported config field type %r" % (kind,))
    raise UserError("%s: key '%s' must be %s, got %r" % (origin, key, _kind_name(kind), value))


def _kind_name(kind):
    return {bool: "true or false", int: "an integer", float: "a number", str: "text"}[kind]


def _validate(config, origin, prefix):
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            _validate(value, origin, prefix + f.name + ".")
    for key, problem in config.validate() if hasattr(config, "validate") else ():
        value = functools.reduce(getattr, key.split("."), config)  # cross-section rules use dotted keys
        raise UserError("%s: key '%s%s' %s (got %r)" % (origin, prefix, key, problem, value))
