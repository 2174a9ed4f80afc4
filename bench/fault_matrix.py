"""The fault matrix as a markdown table, from what `make test-faults` recorded.

  make test-faults VENV=.venv-tf1 FAULT_REPORT=/tmp/tf1.jsonl
  make test-faults VENV=.venv-tf2 FAULT_REPORT=/tmp/tf2.jsonl
  python bench/fault_matrix.py tf1=/tmp/tf1.jsonl tf2=/tmp/tf2.jsonl

Each line of a report is one scenario's measured figures (tests/conftest.py
`fault_record`). Reports are lanes: a scenario gets one row, and a figure that differs
between lanes is shown per lane ("tf1 14 · tf2 12"). A report given without `label=`
is labelled by its file name.
"""

import json
import os
import sys

FIGURES = (("folds_finished", "folds finished"), ("steps_lost", "steps lost"),
           ("events_lost", "events lost"), ("detect_s", "detected after (s)"))


def read_report(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def parse_args(args):
    lanes = []
    for arg in args:
        label, sep, path = arg.partition("=")
        if not sep:
            label, path = os.path.splitext(os.path.basename(arg))[0], arg
        lanes.append((label, read_report(path)))
    return lanes


def cell(values):
    """One figure across lanes: the value once when all lanes agree, else each lane's."""
    present = [(label, v) for label, v in values if v is not None]
    if not present:
        return "not run"
    distinct = {str(v) for _, v in present}
    if len(distinct) == 1 and len(present) == len(values):
        return str(present[0][1])
    return " · ".join("%s %s" % (label, "not run" if v is None else v) for label, v in values)


def table(lanes):
    order, by_test = [], {}
    for label, records in lanes:
        for r in records:
            if r["test"] not in by_test:
                order.append(r["test"])
                by_test[r["test"]] = {}
            by_test[r["test"]][label] = r
    lines = ["| scenario | test | " + " | ".join(title for _, title in FIGURES) + " |",
             "|" + "---|" * (2 + len(FIGURES))]
    for test in order:
        runs = by_test[test]
        first = next(iter(runs.values()))
        scenario = first["scenario"] + (" (%s)" % first["note"] if first.get("note") else "")
        cells = [cell([(label, runs[label][key] if label in runs else None) for label, _ in lanes])
                 for key, _ in FIGURES]
        lines.append("| %s | `%s` | %s |" % (scenario, test, " | ".join(cells)))
    return "\n".join(lines)


def main(args):
    if not args:
        print("usage: python bench/fault_matrix.py [label=]report.jsonl ...", file=sys.stderr)
        return 2
    print(table(parse_args(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
