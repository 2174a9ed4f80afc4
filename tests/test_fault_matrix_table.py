"""bench/fault_matrix.py: one row per scenario, lanes merged, differences shown per lane."""

import json
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "fault_matrix.py")


def report(path, records):
    with open(str(path), "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def record(test, detect, events_lost=0):
    return dict(test=test, scenario="scenario of " + test, folds_finished="3/3", steps_lost=4,
                events_lost=events_lost, detect_s=detect)


def test_lanes_share_a_row_and_differences_are_labelled(tmp_path):
    one = report(tmp_path / "one.jsonl", [record("t::a", 9.7, events_lost=3), record("t::b", "-")])
    two = report(tmp_path / "two.jsonl", [record("t::a", 9.0, events_lost=3)])
    out = subprocess.run([sys.executable, SCRIPT, "tf1=" + one, "tf2=" + two], stdout=subprocess.PIPE,
                         universal_newlines=True, check=True).stdout.splitlines()
    assert len(out) == 4  # header, rule, two scenarios
    assert out[2] == "| scenario of t::a | `t::a` | 3/3 | 4 | 3 | tf1 9.7 · tf2 9.0 |"
    # A scenario one lane did not run says so rather than passing for agreement.
    assert out[3] == "| scenario of t::b | `t::b` | tf1 3/3 · tf2 not run | tf1 4 · tf2 not run | " \
                     "tf1 0 · tf2 not run | tf1 - · tf2 not run |"


def test_no_report_is_a_usage_error():
    done = subprocess.run([sys.executable, SCRIPT], stderr=subprocess.PIPE, universal_newlines=True)
    assert done.returncode == 2 and "usage" in done.stderr
