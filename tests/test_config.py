import os
import subprocess
import sys

import pytest

from conftest import ROOT
from lmtcnn.config import Config, dump_config, load_config
from lmtcnn.errors import UserError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_empty_file_gives_the_seed_recipe(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert config.train.batch_size == 32 and config.train.learning_rate == 0.01
    assert config.train.steps_per_decay == 10000 and config.train.max_steps == 50000
    assert config.train.momentum == 0.9 and config.train.clip_norm == 4.0
    assert config.model.image_size == 227 and config.model.type == "LMTCNN-1-1"


def test_cv5_holds_the_seed_defaults():
    config = load_config(os.path.join(ROOT, "configs", "cv5.yaml"), ignore_keys=("scheduler",))
    # The seed's defaults, except what its Ascend port ran differently: no augmentation.
    assert config.train == Config().train.__class__(**{**Config().train.__dict__, "device": config.train.device,
                                                       "model_dir": config.train.model_dir, "augment": "none"})
    assert config.model == Config().model


RECIPES = {  # config file -> (published row it names, key -> value of that recipe)
    "cv5.yaml": (("Ascend port, GPU", "Ascend port, NPU"), {
        "model.type": "LMTCNN-1-1", "train.batch_size": 32, "train.learning_rate": 0.01, "train.max_steps": 50000,
        "train.steps_per_decay": 10000, "train.decay_rate": 0.1, "train.augment": "none",
        "eval.batch_norm": "batch", "eval.batch_size": 128}),
    "cv5-authors.yaml": (("authors' repo, LMTCNN-2-1",), {
        "model.type": "LMTCNN-2-1", "train.batch_size": 128, "train.learning_rate": 0.01, "train.max_steps": 50000,
        "train.steps_per_decay": 10000, "train.decay_rate": 0.1, "train.augment": "authors",
        "eval.batch_norm": "batch", "eval.batch_size": 128}),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_published_row_has_its_config(name):
    from functools import reduce

    from scheduler.config import load_run_config
    from scheduler.results import REFERENCE_ROWS

    path = os.path.join(ROOT, "configs", name)
    config = load_run_config(path)
    rows, recipe = RECIPES[name]
    for key, value in recipe.items():
        assert reduce(getattr, key.split("."), config) == value, key
    header = open(path).read().split("\nname:")[0]  # the comment above the keys
    means = {source: mean for source, _, mean, _ in REFERENCE_ROWS}
    for row in rows:
        assert '"%s"' % row in header
        assert "%.2f/%.2f/%.2f" % means[row] in header
    assert "docs/REFERENCE.md" in header and "python -m scheduler run configs/%s" % name in header


@pytest.mark.parametrize("text, words", [
    ("train: {batch_sise: 4}", ["c.yaml", "train.batch_sise", "batch_size"]),
    ("train: {learning_rate: 1e-4}", ["c.yaml", "train.learning_rate", "1.0e-4"]),
    ("train: {max_steps: ten}", ["train.max_steps", "integer"]),
    ("train: {batch_size: true}", ["train.batch_size", "integer"]),
    ("train: {batch_size: 0}", ["train.batch_size", "must be > 0"]),
    ("model: {type: LMTCNN-3-1}", ["model.type", "LMTCNN-1-1"]),
    ("train: [1, 2]", ["'train'", "mapping"]),
    ("train: {batch_size: 4", ["c.yaml", "not valid YAML"]),
])
def test_bad_values_name_file_and_key(tmp_path, text, words):
    with pytest.raises(UserError) as e:
        load_config(write(tmp_path, text))
    message = str(e.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_set_overrides_are_typed_and_checked(tmp_path):
    path = write(tmp_path, "train: {max_steps: 10}")
    config = load_config(path, overrides=["train.max_steps=20", "train.learning_rate=0.5", "model.type=LMTCNN-2-1"])
    assert config.train.max_steps == 20 and config.train.learning_rate == 0.5
    assert config.model.type == "LMTCNN-2-1"
    with pytest.raises(UserError, match="train.max_step'"):
        load_config(path, overrides=["train.max_step=3"])
    with pytest.raises(UserError, match="train.batch_size"):
        load_config(path, overrides=["train.batch_size=-1"])


def test_dump_reads_back_equal(tmp_path):
    config = load_config(write(tmp_path, "model: {image_size: 64}\ntrain: {learning_rate: 0.001}"))
    again = load_config(write(tmp_path, dump_config(config)))
    assert again == config


def test_cli_reports_one_line_and_status_2(tmp_path):
    path = write(tmp_path, "train: {learning_rate: 1e-4}")
    done = subprocess.run([sys.executable, "-m", "lmtcnn", "train", "--config", path, "--fold", "0"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.learning_rate" in lines[0] and path in lines[0]


def test_cli_train_refuses_to_resume_with_another_model(tmp_path):
    workdir = tmp_path / "fold_0"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(dump_config(Config()))  # an earlier LMTCNN-1-1 run
    path = write(tmp_path, "data: {data_dir: %s}" % (tmp_path / "nodata"))
    done = subprocess.run([sys.executable, "-m", "lmtcnn", "train", "--config", path, "--fold", "0",
                           "--workdir", str(workdir), "--set", "model.type=LMTCNN-2-1"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(workdir) in lines[0] and "LMTCNN-1-1" in lines[0]
    assert (workdir / "config.yaml").read_text() == dump_config(Config())  # left as it was
