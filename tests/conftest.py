"""Shared fixtures: one synthetic Adience release and its prepared data per test session."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def raw_adience(tmp_path_factory):
    from lmtcnn.synth import synthesize

    out = str(tmp_path_factory.mktemp("adience"))
    synthesize(out, per_fold=120, seed=1)
    return out


@pytest.fixture(scope="session")
def prepared(raw_adience, tmp_path_factory):
    from lmtcnn.prepare import prepare

    out = str(tmp_path_factory.mktemp("prepared") / "data")
    prepare(raw_adience, out, workers=2)
    return out


def tiny_config(data_dir, **train):
    """A configuration that trains in seconds on 64x64 inputs on the CPU."""
    from lmtcnn.config import build_config, Config

    settings = dict(device="cpu", batch_size=16, max_steps=6, log_every_steps=2, checkpoint_every_steps=4,
                    summary_every_steps=2, eval_every_steps=0, shuffle_buffer=64, preprocess_threads=2,
                    cpu_threads=1)
    settings.update(train)
    return build_config({"name": "tiny", "data": {"data_dir": data_dir},
                         "model": {"image_size": 64, "batch_norm_decay": 0.9}, "train": settings}, Config)
