"""The result table of a run: per-fold percentages, mean and sample std over finished
folds, a failed fold shown by its state only, and the published rows beside them."""

import csv
import io
import json
import os

import pytest
from rich.cells import cell_len
from rich.console import Console

from lmtcnn import events as ev
from scheduler import results as rs
from scheduler import state as st

METRICS = ("age_top1", "age_top2", "age_one_off", "gender")
# Test images per fold (the authors' counts) and the correctly classified ones per metric;
# fold 3 fails and has none.
COUNTS = {0: 3879, 1: 3005, 2: 3121, 4: 3387}
CORRECT = {0: (1903, 2848, 3391, 3244), 1: (1114, 1823, 2597, 2431), 2: (1398, 2187, 2757, 2476),
           4: (1318, 2216, 2961, 2629)}
# CORRECT / COUNTS in percent, rounded to 0.01, worked out by hand (1903 / 3879 = 49.059%).
PERCENT = {0: (49.06, 73.42, 87.42, 83.63), 1: (37.07, 60.67, 86.42, 80.90), 2: (44.79, 70.07, 88.34, 79.33),
           4: (38.91, 65.43, 87.42, 77.62)}
WALL_S = {0: 1834.2, 1: 1790.0, 2: 2011.7, 4: 1802.4}
# Mean and sample std (n - 1) of the four finished folds' percentages. Age top-1:
# mean (49.06 + 37.07 + 44.79 + 38.91) / 4 = 42.4575; squared deviations 43.593 + 29.025
# + 5.441 + 12.585 = 90.644; std sqrt(90.644 / 3) = 5.497.
MEAN = {"age_top1": 42.46, "age_top2": 67.40, "age_one_off": 87.40, "gender": 80.37}
STD = {"age_top1": 5.50, "age_top2": 5.55, "age_one_off": 0.78, "gender": 2.55}
FAILED_REASON = "NodeDiedError (attempt 3); no retries left (scheduler.max_retries 2)"
# Means of REFERENCE.md's "Published results" table (age top-1, age top-2, gender).
PUBLISHED_MEANS = {"Ascend port, GPU": (42.12, 66.72, 80.44), "Ascend port, NPU": (40.88, 64.65, 79.32),
                   "authors' repo, LMTCNN-2-1": (44.83, 70.56, 85.46), "paper": (40.84, 66.10, 82.04)}
PUBLISHED_FOLDS = {
    "Ascend port, GPU": [(49.06, 73.42, 83.63), (37.08, 60.61, 80.89), (44.81, 70.06, 79.34),
                         (40.73, 65.35, 80.74), (38.92, 64.18, 77.60)],
    "Ascend port, NPU": [(45.11, 68.75, 80.95), (36.43, 58.50, 78.52), (41.09, 66.37, 77.25),
                         (41.68, 64.37, 80.64), (40.10, 65.25, 79.25)],
    "authors' repo, LMTCNN-2-1": [(50.15, 76.61, 87.85), (39.42, 63.67, 83.76), (49.56, 73.12, 85.81),
                                  (42.19, 69.84, 86.38), (42.82, 69.56, 83.48)],
}


def fold_metrics(fold):
    """What lmtcnn.train returns for a fold: compute_metrics's dict plus step and wall_s."""
    n = COUNTS[fold]
    m = {key: c / n for key, c in zip(METRICS, CORRECT[fold])}
    m.update(count=n, age_confusion=[[0] * 8 for _ in range(8)], step=50000, wall_s=WALL_S[fold], device="npu")
    return m


def run_view():
    """A RunView as the driver builds it: four folds finished, fold 3 failed on its last try."""
    view = st.RunView()
    events = [ev.make(st.RUN_STARTED, name="cv5", run_dir="/runs/cv5-1", folds=[0, 1, 2, 3, 4],
                      placement="npu {CPU: 1, NPU: 1}", where="x")]
    for fold in range(5):
        events.append(ev.make(ev.FOLD_STARTED, fold=fold, attempt=1, host="vm", device_label="NPU%d" % fold,
                              device="npu", start_step=0, total_steps=50000, train_images=11136))
        if fold in COUNTS:
            events.append(ev.make(ev.FOLD_FINISHED, fold=fold, attempt=1, host="vm", device_label="NPU%d" % fold,
                                  step=50000, metrics=fold_metrics(fold), wall_s=WALL_S[fold]))
    for attempt in (2, 3):
        events.append(ev.make(st.FOLD_RETRYING, fold=3, attempt=attempt, reason="NodeDiedError"))
        events.append(ev.make(ev.FOLD_STARTED, fold=3, attempt=attempt, host="w2", device_label="NPU7",
                              device="npu", start_step=4000, total_steps=50000, train_images=12056))
    events.append(ev.make(ev.FOLD_FAILED, fold=3, attempt=3, reason=FAILED_REASON))
    for event in events:
        st.apply(view, event)
    return view


@pytest.fixture
def results():
    return rs.build_results(run_view())


def test_rows_are_percent_per_fold(results):
    rows = {row["fold"]: row for row in results["folds"]}
    assert sorted(rows) == [0, 1, 2, 3, 4]
    for fold, percents in PERCENT.items():
        row = rows[fold]
        assert row["state"] == "done"
        assert tuple(row[key] for key in METRICS) == percents
        assert (row["steps"], row["wall_s"], row["test_images"]) == (50000, WALL_S[fold], COUNTS[fold])
        assert (row["device"], row["attempts"]) == ("vm:NPU%d" % fold, 1)
    failed = rows[3]
    assert (failed["state"], failed["reason"], failed["attempts"], failed["device"]) == (
        "failed", FAILED_REASON, 3, "w2:NPU7")
    assert not set(METRICS) & set(failed), failed
    assert results["finished_folds"] == 4
    assert (results["name"], results["run_dir"]) == ("cv5", "/runs/cv5-1")


def test_mean_and_sample_std_over_finished_folds(results):
    assert results["summary"] == {key: {"mean": MEAN[key], "std": STD[key]} for key in METRICS}


def test_reference_rows_are_the_published_ones(results):
    by_source = {ref["source"]: ref for ref in results["reference"]}
    assert len(by_source) == 4
    for source, mean in PUBLISHED_MEANS.items():
        (match,) = [ref for name, ref in by_source.items() if name.startswith(source)]
        assert tuple(match["mean"]) == mean
        expected_folds = PUBLISHED_FOLDS.get(source)
        assert (None if match["folds"] is None else [tuple(f) for f in match["folds"]]) == expected_folds
        if expected_folds:  # the published means are the means of the published folds
            for i in range(3):
                assert sum(f[i] for f in expected_folds) / 5 == pytest.approx(mean[i], abs=0.006)


def markdown_rows(text):
    """Rows of the markdown tables, as lists of stripped cells."""
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|") and not line.startswith("|---")]


def test_markdown(results):
    text = rs.to_markdown(results)
    rows = markdown_rows(text)
    header = rows[0]
    assert header == ["fold", "age top-1", "age top-2", "age 1-off", "gender", "steps", "device", "wall time"]
    body = {r[0]: r for r in rows[1:8]}
    for fold, percents in PERCENT.items():
        assert body[str(fold)][1:5] == ["%.2f" % p for p in percents]
        assert body[str(fold)][5:] == ["50000", "vm:NPU%d" % fold, "%.0f s" % WALL_S[fold]]
    # The failed fold shows its state and no number.
    assert body["3"][1] == "failed"
    assert body["3"][2:6] == ["", "", "", ""] and body["3"][7] == ""
    assert body["mean"][1:5] == ["%.2f" % MEAN[k] for k in METRICS]
    assert body["std"][1:5] == ["%.2f" % STD[k] for k in METRICS]
    assert "Finished folds: 4 of 5" in text
    published = {r[0]: r for r in rows if r[0] in PUBLISHED_FOLDS or r[0].startswith("paper")}
    assert len(published) == 4
    for source, mean in PUBLISHED_MEANS.items():
        (row,) = [r for name, r in published.items() if name.startswith(source)]
        assert row[-1] == "%.2f/%.2f/%.2f" % mean
        if source in PUBLISHED_FOLDS:
            assert row[1:6] == ["%.2f/%.2f/%.2f" % f for f in PUBLISHED_FOLDS[source]]
    assert "42.12/66.72/80.44" in text
    # Each published row says how it was scored; the port's two rows share their line.
    (port,) = [line for line in text.splitlines() if line.startswith("- Ascend port")]
    assert port.startswith("- Ascend port, GPU and Ascend port, NPU: hits in the first ceil(N/128)-1")
    assert any(line.startswith("- authors' repo, LMTCNN-2-1: ceil(N/128) test batches") for line in text.splitlines())


def test_csv(results):
    rows = list(csv.reader(io.StringIO(rs.to_csv(results))))
    assert rows[0] == ["fold", "state", "age_top1", "age_top2", "age_one_off", "gender", "steps", "device",
                       "wall_s", "reason"]
    body = {r[0]: r for r in rows[1:]}
    assert len(rows) == 1 + 5 + 2
    for fold, percents in PERCENT.items():
        row = body[str(fold)]
        assert row[1] == "done"
        assert tuple(float(v) for v in row[2:6]) == percents
        assert (int(row[6]), row[7], float(row[8]), row[9]) == (50000, "vm:NPU%d" % fold, WALL_S[fold], "")
    assert body["3"] == ["3", "failed", "", "", "", "", "", "w2:NPU7", "", FAILED_REASON]
    assert tuple(float(v) for v in body["mean"][2:6]) == tuple(MEAN[k] for k in METRICS)
    assert tuple(float(v) for v in body["std"][2:6]) == tuple(STD[k] for k in METRICS)


def draw(renderable, width=140):
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(renderable)
    return console.file.getvalue()


def table_rows(text):
    return [[c.strip() for c in line.strip().strip("│").split("│")] for line in text.splitlines()
            if line.startswith("│")]


def test_rich_table(results):
    text = draw(rs.to_table(results))
    rows = table_rows(text)
    body = {r[0]: r for r in rows if len(r) == 8}
    for fold, percents in PERCENT.items():
        assert body[str(fold)][1:5] == ["%.2f" % p for p in percents]
        assert body[str(fold)][5:] == ["50000", "vm:NPU%d" % fold, "%.0f s" % WALL_S[fold]]
    assert body["3"] == ["3", "failed", "", "", "", "", "w2:NPU7", ""]
    assert body["mean"][1:5] == ["%.2f" % MEAN[k] for k in METRICS]
    assert body["std"][1:5] == ["%.2f" % STD[k] for k in METRICS]
    # Fold by fold beside the published runs: this run, then the sources of REFERENCE.md.
    beside = {r[0]: r[1:] for r in rows if len(r) == 6}
    assert sorted(beside) == ["0", "1", "2", "3", "4", "mean"]
    assert beside["0"][0] == "%.2f/%.2f/%.2f" % (PERCENT[0][0], PERCENT[0][1], PERCENT[0][3])
    assert beside["3"][0] == "failed"
    assert beside["0"][1] == "49.06/73.42/83.63"  # Ascend port, GPU, fold 0
    assert beside["mean"][0] == "%.2f/%.2f/%.2f" % (MEAN["age_top1"], MEAN["age_top2"], MEAN["gender"])
    assert beside["mean"][1:] == ["%.2f/%.2f/%.2f" % mean for mean in PUBLISHED_MEANS.values()]
    assert "cv5: accuracy per test fold (%)" in text


def assert_fits(text, width):
    assert max(cell_len(line) for line in text.splitlines()) <= width, text
    assert "…" not in text, text


def stacked_blocks(text):
    """{source: [cells of folds 0-4 and of the mean]} from the published results laid out
    with folds as columns: each source a block of lines between rules, each cell's numbers
    stacked."""
    blocks, lines = {}, []
    published = text[text.index("beside the published results"):]
    for line in published.splitlines():
        if line.startswith("│"):
            lines.append([c.strip() for c in line.strip().strip("│").split("│")])
        elif line.startswith(("├", "└")) and lines:
            source = " ".join(cells[0] for cells in lines if cells[0])
            blocks[source] = [[cells[i] for cells in lines if cells[i]] for i in range(1, 7)]
            lines = []
    return blocks


def test_rich_table_at_80_columns_keeps_every_number_whole(results):
    results["folds"][0].update(age_top2=99.34, gender=100.0)  # the widest numbers there are
    text = draw(rs.to_table(results), width=80)
    assert_fits(text, 80)
    body = {r[0]: r for r in table_rows(text) if r[0] in ("0", "1", "2", "3", "4", "mean", "std")}
    percents = dict(PERCENT)
    percents[0] = (49.06, 99.34, 87.42, 100.0)
    for fold, values in percents.items():
        assert body[str(fold)][1:6] == ["%.2f" % p for p in values] + ["50000"], text
        # Device and wall time: in the row, or on a line of their own under a narrow table.
        assert "vm:NPU%d" % fold in text and "%.0f s" % WALL_S[fold] in text
    assert body["3"][1] == "failed" and "w2:NPU7" in text
    assert body["mean"][1:5] == ["%.2f" % MEAN[k] for k in METRICS]
    assert body["std"][1:5] == ["%.2f" % STD[k] for k in METRICS]
    # Beside the published results: each source's folds and mean, every number whole.
    blocks = stacked_blocks(text)
    ours = [["%.2f" % percents[k][i] for i in (0, 1, 3)] if k != 3 else ["failed"] for k in range(5)]
    assert blocks["this run"] == ours + [["%.2f" % MEAN[k] for k in ("age_top1", "age_top2", "gender")]]
    for source, mean in PUBLISHED_MEANS.items():
        (name,) = [name for name in blocks if name.startswith(source)]
        folds = [["%.2f" % v for v in fold] for fold in PUBLISHED_FOLDS[source]] if source in PUBLISHED_FOLDS else []
        assert [cells for cells in blocks[name][:5] if cells] == folds, (source, text)
        assert blocks[name][5] == ["%.2f" % v for v in mean], (source, text)
    assert "authors' repo, LMTCNN-2-1: ceil(N/128) test batches" in " ".join(text.split())


def test_rich_table_of_synthetic_data_at_80_columns():
    view = run_view()
    view.data = {"dir": "/data/demo", "split": "own", "synthetic": True}
    text = draw(rs.to_table(rs.build_results(view)), width=80)
    assert_fits(text, 80)
    body = {r[0]: r for r in table_rows(text)}
    for fold, percents in PERCENT.items():
        assert body[str(fold)][1:5] == ["%.2f" % p for p in percents]
    assert "Synthetic data, not Adience" in text


def test_write_results_files_parse_back(results, tmp_path):
    rs.write_results(str(tmp_path), results)
    assert sorted(os.listdir(str(tmp_path))) == ["results.csv", "results.json", "results.md"]
    with open(str(tmp_path / "results.json"), encoding="utf-8") as f:
        loaded = json.load(f)
    assert loaded == json.loads(json.dumps(results))
    assert loaded["summary"]["age_top1"] == {"mean": 42.46, "std": 5.5}
    assert [r["state"] for r in loaded["folds"]] == ["done", "done", "done", "failed", "done"]
    assert loaded["folds"][0]["age_top2"] == 73.42
    with open(str(tmp_path / "results.csv"), encoding="utf-8", newline="") as f:
        assert list(csv.reader(f)) == list(csv.reader(io.StringIO(rs.to_csv(results))))
    with open(str(tmp_path / "results.md"), encoding="utf-8") as f:
        markdown = f.read()
    assert markdown == rs.to_markdown(results)
    assert "| 0 | 49.06 | 73.42 | 87.42 | 83.63 | 50000 | vm:NPU0 | 1834 s |" in markdown


def test_no_finished_fold_gives_no_numbers():
    view = st.RunView(name="x", run_dir="/r")
    for fold in (0, 1):
        st.apply(view, ev.make(ev.FOLD_FAILED, fold=fold, attempt=1, reason="ValueError: bad"))
    results = rs.build_results(view)
    assert results["summary"] == {} and results["finished_folds"] == 0
    rows = markdown_rows(rs.to_markdown(results))
    body = {r[0]: r for r in rows[1:5]}
    assert body["mean"][1:5] == ["-"] * 4 and body["std"][1:5] == ["-"] * 4
    assert body["0"][1] == body["1"][1] == "failed"
    csv_rows = {r[0]: r for r in csv.reader(io.StringIO(rs.to_csv(results)))}
    assert csv_rows["mean"][2:6] == ["", "", "", ""]
    assert "failed" in draw(rs.to_table(results))


def test_one_finished_fold_has_a_mean_and_no_spread():
    view = st.RunView(name="x", run_dir="/r")
    st.apply(view, ev.make(ev.FOLD_FAILED, fold=0, attempt=1, reason="ValueError: bad"))
    st.apply(view, ev.make(ev.FOLD_FINISHED, fold=1, attempt=1, step=10, wall_s=5.0,
                           metrics=dict(count=10, age_top1=0.5, age_top2=0.7, age_one_off=0.9, gender=0.8)))
    results = rs.build_results(view)
    assert results["summary"]["age_top1"] == {"mean": 50.0, "std": None}
    body = {r[0]: r for r in markdown_rows(rs.to_markdown(results))[1:5]}
    assert body["mean"][1:5] == ["50.00", "70.00", "90.00", "80.00"] and body["std"][1:5] == ["-"] * 4
    csv_rows = {r[0]: r for r in csv.reader(io.StringIO(rs.to_csv(results)))}
    assert csv_rows["std"][2:6] == ["", "", "", ""]
    table = {r[0]: r for r in table_rows(draw(rs.to_table(results))) if len(r) == 8}  # the per-fold table
    assert table["mean"][1:5] == ["50.00", "70.00", "90.00", "80.00"] and table["std"][1:5] == ["-"] * 4


def test_synthetic_data_is_not_laid_beside_the_published_results():
    view = run_view()
    view.data = {"dir": "/data/demo", "split": "own", "synthetic": True}
    results = rs.build_results(view)
    assert results["reference"] == []
    text = draw(rs.to_table(results))
    assert "49.06/73.42/83.63" not in text and "Synthetic data, not Adience" in text
    markdown = rs.to_markdown(results)
    assert "Ascend port" not in markdown and "docs/REFERENCE.md" in markdown


def test_the_recipe_of_the_folds_is_stated():
    view = run_view()
    for fold in COUNTS:
        view.folds[fold].metrics.update(batch_norm="test-batch statistics (batches of 128, as the reference)",
                                        augment="none")
    results = rs.build_results(view)
    assert results["augment"] == "none"
    assert results["batch_norm_at_test"] == "test-batch statistics (batches of 128, as the reference)"
    for text in (rs.to_markdown(results), draw(rs.to_table(results))):
        squeezed = " ".join(text.split())
        assert "training augmentation: none" in squeezed.lower()
        assert "test-time batch norm: test-batch statistics (batches of 128" in squeezed.lower()


# Test lines of the authors' lists per fold (tests/test_split_lists.py builds them).
TEST_IMAGES = (3879, 3005, 3121, 2866, 3387)


def rescaled(row):
    """A published port row on the images its evaluation scored: hits over
    (ceil(N/128)-1)x128 images rather than ceil(N/128)x128; per fold, then the mean."""
    import math

    folds = []
    for n, triple in zip(TEST_IMAGES, row):
        batches = math.ceil(n / 128)
        folds.append(tuple(round(v * batches / (batches - 1), 2) for v in triple))
    mean = tuple(round(sum(f[i] for f in folds) / 5, 2) for i in range(3))
    return folds, mean


def test_the_rescaled_port_rows_in_the_docs_follow_from_the_published_ones():
    from conftest import ROOT

    docs = {name: open(os.path.join(ROOT, name), encoding="utf-8").read()
            for name in ("docs/REFERENCE.md", "README.md", "configs/cv5.yaml")}
    for source in ("Ascend port, GPU", "Ascend port, NPU"):
        folds, mean = rescaled(PUBLISHED_FOLDS[source])
        line = "| %s, on the images scored | %s | %s |" % (
            source, " | ".join("%.2f/%.2f/%.2f" % f for f in folds), "%.2f/%.2f/%.2f" % mean)
        assert line in docs["docs/REFERENCE.md"], line
        assert "%.2f/%.2f/%.2f" % mean in docs["README.md"] and "%.2f/%.2f/%.2f" % mean in docs["configs/cv5.yaml"]
