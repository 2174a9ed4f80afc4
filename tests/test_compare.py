"""`python -m scheduler compare`: the statistics against figures worked by hand, the
test-set fingerprints, and the command on real run directories (conftest's cv_runs):
what it prints and every refusal, one line with exit status 2.
"""

import copy
import io
import json
import math
import os
import shutil

import pytest
from rich.console import Console

from lmtcnn.files import read_json
from scheduler.__main__ import main
from scheduler.compare import compare_runs, paired_statistics, print_report, run_labels, verdict

A = [40.0, 41.0, 42.0, 43.0, 44.0]


def t4_two_sided_p(t):
    """Two-sided p of Student's t with 4 degrees of freedom, from the closed form of its
    CDF (no scipy): F(t) = 1/2 + (3/4) s (1 - s^2/3) with s = t / sqrt(4 + t^2)."""
    s = t / math.sqrt(4 + t * t)
    return 2 * (1 - (0.5 + 0.75 * s * (1 - s * s / 3)))


def test_the_closed_form_agrees_with_a_t_table():
    # Printed tables: t = 2.776 is the 97.5% point with 4 degrees of freedom, 4.604 the 99.5%.
    assert t4_two_sided_p(2.776) == pytest.approx(0.05, abs=2e-4)
    assert t4_two_sided_p(4.604) == pytest.approx(0.01, abs=2e-4)


def test_differences_one_to_five_by_hand():
    # d = 1..5: mean 3, sd sqrt(2.5), se sqrt(0.5); t = 3 / sqrt(0.5) = 4.243 on 4 degrees
    # of freedom; 95% interval 3 -+ 2.776 * 0.7071 = [1.037, 4.963]; Wilcoxon: all five of
    # one sign, the exact test's extreme, 2 / 2^5 = 0.0625.
    stat = paired_statistics(A, [a + d for a, d in zip(A, [1, 2, 3, 4, 5])])
    assert stat["differences"] == [1, 2, 3, 4, 5] and stat["n"] == 5
    assert stat["mean_difference"] == pytest.approx(3.0)
    assert stat["ci95"] == pytest.approx([1.037, 4.963], abs=1e-3)
    assert stat["t_test_p"] == pytest.approx(t4_two_sided_p(3 / math.sqrt(0.5)), rel=1e-9)
    assert stat["t_test_p"] == pytest.approx(0.0132, abs=1e-4)
    assert stat["wilcoxon_p"] == pytest.approx(0.0625)
    assert stat["wilcoxon_min_p"] == pytest.approx(0.0625) and stat["wilcoxon_folds"] == 5


def test_mixed_signs_by_hand():
    # d = 2, -1, 3, 0.5, 1.5: mean 1.2, sd sqrt(9.3/4); the ranks of |d| are 4, 2, 5, 1, 3,
    # the negative sum is 2; sign patterns with a negative sum <= 2: {}, {1}, {2} of 32, so
    # the exact two-sided p is 2 * 3/32 = 0.1875.
    stat = paired_statistics(A, [a + d for a, d in zip(A, [2, -1, 3, 0.5, 1.5])])
    se = math.sqrt(9.3 / 4) / math.sqrt(5)
    assert stat["mean_difference"] == pytest.approx(1.2)
    assert stat["t_test_p"] == pytest.approx(t4_two_sided_p(1.2 / se), rel=1e-9)
    assert stat["ci95"] == pytest.approx([1.2 - 2.7764451 * se, 1.2 + 2.7764451 * se], abs=1e-6)
    assert stat["wilcoxon_p"] == pytest.approx(0.1875)


def test_tied_differences_by_hand_the_same_on_every_scipy():
    # d = 1, 1, -2, 2, 3: |d| ranks 1.5, 1.5, 3.5, 3.5, 5 (ties share their average); the
    # positive sum is 11.5, its mean under no difference 7.5. Sign patterns at least 4 from
    # it: the positive sums <= 3.5 ({}, {1.5}, {1.5}, {1.5, 1.5}, {3.5}, {3.5}) and as
    # many >= 11.5: 12 of 32 = 0.375. scipy 1.7 gives 0.4375 here (a normal approximation).
    stat = paired_statistics(A, [a + d for a, d in zip(A, [1, 1, -2, 2, 3])])
    assert stat["wilcoxon_p"] == pytest.approx(0.375)
    # A zero difference drops out; the other four, all of one sign: 2 / 2^4.
    stat = paired_statistics(A, [a + d for a, d in zip(A, [0, 2, 2, 1, 1])])
    assert stat["wilcoxon_p"] == pytest.approx(0.125) and stat["wilcoxon_folds"] == 4


def sentence(a, b):
    stat = paired_statistics(a, b)
    stat.update(label="age top-1", folds=list(range(len(a))))
    return verdict(stat, "new", "old")


def test_verdicts_say_better_worse_or_no_significant_difference():
    better = sentence(A, [a + d for a, d in zip(A, [1, 2, 3, 4, 5])])
    assert better.startswith("new is better than old on age top-1 by 3.00 points (95% CI +1.04 to +4.96), "
                             "p = 0.0132 (paired t-test over 5 folds; Wilcoxon p = 0.0625, the smallest possible "
                             "over 5 folds)"), better
    assert sentence(A, [a - d for a, d in zip(A, [1, 2, 3, 4, 5])]).startswith(
        "new is worse than old on age top-1 by 3.00 points")
    unclear = sentence(A, [a + d for a, d in zip(A, [2, -1, 3, 0.5, 1.5])])
    assert unclear.startswith("No significant difference on age top-1: new - old = +1.20 points"), unclear
    assert "p = 0.153 (paired t-test" in unclear and "Wilcoxon p = 0.188" in unclear


def test_too_few_folds_and_no_difference_are_said_not_computed():
    one = paired_statistics([40.0], [42.5])
    assert one["t_test_p"] is None and one["wilcoxon_p"] is None and one["ci95"] is None
    assert one["t_test_note"] == "needs 2 folds or more"
    assert "a test needs 2 folds or more" in sentence([40.0], [42.5])
    same = paired_statistics(A, list(A))
    assert same["t_test_p"] is None and same["wilcoxon_p"] is None
    assert same["wilcoxon_note"] == "every difference is zero"
    assert sentence(A, list(A)) == "new and old score the same on age top-1 on all 5 folds."
    # Two folds without a difference leave the Wilcoxon test three to rank: p >= 2/2^3.
    assert "Wilcoxon p = 0.25, the smallest possible with 3 folds that differ" in sentence(
        A, [a + d for a, d in zip(A, [0, 2, 0, 1, 3])])
    steady = sentence(A, [a + 1 for a in A])
    assert "better than old on age top-1 by 1.00 points on every one of the 5 folds" in steady
    assert "t-test is undefined" in steady


def test_labels_are_directory_names_told_apart_by_their_parents():
    assert run_labels(["runs/x/cv5", "runs/y/cv5/", "other/b"]) == ["x/cv5", "y/cv5", "b"]


# --- fingerprints ------------------------------------------------------------------------

def test_the_manifest_records_each_folds_test_list_fingerprint(prepared, tmp_path):
    from lmtcnn.adience import split_list_path
    from lmtcnn.prepare import fold_test_fingerprint, list_fingerprint, load_manifest

    manifest = load_manifest(prepared)
    recorded = [manifest["folds"][str(k)]["test"]["fingerprint"] for k in range(5)]
    assert len(set(recorded)) == 5 and all(fp.startswith("sha256:") for fp in recorded)
    test_list = split_list_path(os.path.join(prepared, "lists"), 2, "test")
    assert list_fingerprint(test_list) == recorded[2]
    # Data prepared before fingerprints: the same value, computed from the list.
    old = copy.deepcopy(manifest)
    for entry in old["folds"].values():
        del entry["test"]["fingerprint"]
    assert [fold_test_fingerprint(prepared, k, old) for k in range(5)] == recorded

    lines = open(test_list).read().splitlines(True)
    reordered = tmp_path / "reordered.txt"
    reordered.write_text("".join(reversed(lines)))
    assert list_fingerprint(str(reordered)) == recorded[2]
    relabelled = tmp_path / "relabelled.txt"
    name, age, gender = lines[0].split()
    relabelled.write_text("%s %s %d\n" % (name, age, 1 - int(gender)) + "".join(lines[1:]))
    assert list_fingerprint(str(relabelled)) != recorded[2]
    repeated = tmp_path / "repeated.txt"
    repeated.write_text("".join(lines + lines[:1]))  # one sample scored twice
    assert list_fingerprint(str(repeated)) != recorded[2]
    assert list_fingerprint(str(tmp_path / "absent.txt")) is None


@pytest.fixture(scope="module")
def other_data(tmp_path_factory):
    """Another small synthetic release (another seed), prepared: other test sets."""
    from lmtcnn.prepare import prepare
    from lmtcnn.synth import synthesize

    raw = str(tmp_path_factory.mktemp("other-adience"))
    synthesize(raw, per_fold=30, seed=7)
    out = str(tmp_path_factory.mktemp("other-prepared") / "data")
    prepare(raw, out, workers=2)
    return out


def test_a_run_records_the_fingerprints_of_its_data(cv_runs, prepared):
    from lmtcnn.prepare import load_manifest
    from scheduler.rundir import read_events

    manifest = load_manifest(prepared)
    expected = {k: manifest["folds"][k]["test"]["fingerprint"] for k in manifest["folds"]}
    for k in range(5):
        metrics = read_json(os.path.join(cv_runs["finished"], "fold_%d" % k, "metrics.json"))
        assert metrics["test_fingerprint"] == expected[str(k)]
    started = [e for e in read_events(cv_runs["finished"]) if e["event"] == "run_started"]
    assert started and started[0]["data"]["test_fingerprints"] == expected


# --- the command on real runs ------------------------------------------------------------

def compare(capsys, *args):
    """(exit status, stdout, stderr) of `python -m scheduler compare ARGS`, in process."""
    status = main(["compare"] + [str(a) for a in args])
    out = capsys.readouterr()
    return status, out.out, out.err


def refused(capsys, *args):
    status, out, err = compare(capsys, *args)
    assert status == 2 and out == "", (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def fold_percent(run_dir, fold, key):
    return round(100 * read_json(os.path.join(run_dir, "fold_%d" % fold, "metrics.json"))[key], 2)


def test_json_holds_the_folds_both_finished_and_their_differences(cv_runs, capsys):
    status, out, _ = compare(capsys, cv_runs["finished"], cv_runs["failed"], "--format", "json")
    assert status == 0
    report = json.loads(out)
    assert report["baseline"] == "finished" and [r["label"] for r in report["runs"]] == ["finished", "failed"]
    (pair,) = report["comparisons"]
    assert pair["folds"] == [0, 1, 2, 4]  # fold 3 failed in the second run
    assert pair["unchecked_folds"] == []
    assert sorted(pair["metrics"]) == ["age_one_off", "age_top1", "age_top2", "gender"]
    for key, stat in pair["metrics"].items():
        a = [fold_percent(cv_runs["finished"], k, key) for k in pair["folds"]]
        b = [fold_percent(cv_runs["failed"], k, key) for k in pair["folds"]]
        assert stat["baseline_values"] == a and stat["run_values"] == b
        assert stat["differences"] == [round(y - x, 2) for x, y in zip(a, b)]
        assert stat["n"] == 4 and stat["sentence"]
    assert any("Wilcoxon signed-rank test cannot give a p-value below 0.125" in n for n in pair["notes"]), pair


def test_console_tables_fit_80_columns_and_keep_every_number(cv_runs):
    report = compare_runs([cv_runs["finished"], cv_runs["failed"]])
    out = io.StringIO()
    print_report(report, Console(file=out, width=80, color_system=None))
    text = out.getvalue()
    table_lines = [line for line in text.splitlines() if line[:1] in "┏┃┡│├└┗┌"]
    assert table_lines and max(len(line) for line in table_lines) <= 80, text
    assert "…" not in text
    for stat in report["comparisons"][0]["metrics"].values():
        for value in stat["baseline_values"] + stat["run_values"]:
            assert "%.2f" % value in text
        for d in stat["differences"]:
            assert "%+.2f" % d in text
        assert stat["sentence"][:40] in text.replace("\n", " ")
    assert "A = finished (baseline)" in text and "B = failed" in text


def test_three_runs_are_each_compared_with_the_first(cv_runs, capsys):
    status, out, _ = compare(capsys, cv_runs["finished"], cv_runs["failed"], cv_runs["interrupted"],
                             "--metric", "age_top1", "--format", "md")
    assert status == 0, out
    assert "2 runs, each against the first, the baseline finished" in out
    assert "## failed against finished" in out and "## interrupted against finished" in out
    # The interrupted run finished fold 0 alone: a difference, and no test.
    assert "on the one fold both finished (fold 0); a test needs 2 folds or more" in out
    assert "age top-2" not in out


def test_csv_has_a_row_per_fold_and_a_mean_row(cv_runs, capsys):
    status, out, _ = compare(capsys, cv_runs["finished"], cv_runs["failed"], "--format", "csv",
                             "--metric", "gender")
    assert status == 0
    rows = out.splitlines()
    assert rows[0].startswith("baseline,run,metric,fold,baseline_value,run_value,difference")
    assert [r.split(",")[3] for r in rows[1:]] == ["0", "1", "2", "4", "mean"]


def test_a_path_that_is_no_run_directory_is_refused(cv_runs, capsys, tmp_path):
    line = refused(capsys, cv_runs["finished"], tmp_path)
    assert str(tmp_path) in line and "not a run directory" in line


@pytest.mark.parametrize("twice", [False, True])
def test_fewer_than_two_runs_are_refused(cv_runs, capsys, twice):
    line = refused(capsys, *([cv_runs["finished"]] * (2 if twice else 1)))
    assert ("named twice" if twice else "two run directories or more") in line


def copy_run(source, target):
    shutil.copytree(source, str(target), ignore=shutil.ignore_patterns("driver.lock"))
    return str(target)


def rewrite(path, old, new):
    with open(path) as f:
        text = f.read()
    assert old in text
    with open(path, "w") as f:
        f.write(text.replace(old, new))


def test_runs_with_no_finished_fold_in_common_are_refused(cv_runs, capsys, tmp_path):
    # The interrupted run as its events.jsonl stood before its first fold finished.
    early = copy_run(cv_runs["interrupted"], tmp_path / "early")
    events = os.path.join(early, "events.jsonl")
    lines = open(events).read().splitlines(True)
    first_end = next(i for i, line in enumerate(lines) if json.loads(line)["event"] == "fold_finished")
    open(events, "w").write("".join(lines[:first_end]))
    line = refused(capsys, cv_runs["finished"], early)
    assert "no finished fold in common" in line and early in line and "early: none" in line


def test_runs_scored_on_different_test_sets_are_refused(cv_runs, other_data, capsys, tmp_path):
    """The finished run copied, with fold 2 recorded as scored on the other data's fold 2
    test set, as a run on that data would record it."""
    from lmtcnn.prepare import load_manifest

    ours = read_json(os.path.join(cv_runs["finished"], "fold_2", "metrics.json"))["test_fingerprint"]
    theirs = load_manifest(other_data)["folds"]["2"]["test"]["fingerprint"]
    assert theirs != ours
    moved = copy_run(cv_runs["finished"], tmp_path / "other-data")
    for path in ("events.jsonl", "fold_2/metrics.json"):
        rewrite(os.path.join(moved, path), ours, theirs)
    line = refused(capsys, cv_runs["failed"], moved)
    assert line.startswith("error: fold 2: ") and "different test sets" in line
    assert cv_runs["failed"] in line and moved in line and ours[:19] in line and theirs[:19] in line
    assert "--unchecked" not in line  # no flag overrides a known difference
    refused(capsys, cv_runs["failed"], moved, "--unchecked")


def test_a_run_without_fingerprints_is_refused_unless_unchecked(cv_runs, capsys, tmp_path):
    """The finished run as the scheduler recorded it before fingerprints: no
    test_fingerprint in fold 1's metrics, no test_fingerprints in run_started."""
    old = copy_run(cv_runs["finished"], tmp_path / "old")
    events = os.path.join(old, "events.jsonl")
    rewritten, removed = [], []
    for line in open(events):
        event = json.loads(line)
        removed.append(event.get("data", {}).pop("test_fingerprints", None))
        if event.get("fold") == 1 and event["event"] == "fold_finished":
            removed.append(event["metrics"].pop("test_fingerprint"))
        rewritten.append(json.dumps(event, sort_keys=True) + "\n")
    assert len([r for r in removed if r]) == 2  # one run_started, one fold_finished
    open(events, "w").write("".join(rewritten))
    line = refused(capsys, cv_runs["failed"], old)
    assert line.startswith("error: fold 1: %s records no test-set fingerprint" % old), line
    assert "--unchecked" in line and cv_runs["failed"] in line
    status, out, _ = compare(capsys, cv_runs["failed"], old, "--unchecked", "--format", "md")
    assert status == 0
    assert "Test sets not checked on fold 1 (no fingerprint recorded; --unchecked)" in out
