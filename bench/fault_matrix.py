"""The fault matrix as a markdown table, from what `make test-faults` recorded.

  make test-faults FAULT_REPORT=/tmp/faults.jsonl
  python bench/fault_matrix.py /tmp/faults.jsonl [more.jsonl ...]

Each line of a report is one scenario's measured figures (tests/conftest.py
`fault_record`); a scenario recorded in several reports (lanes) gets a row per report.
"""

import json
import sys

COLUMNS = ("scenario", "command", "folds finished", "steps lost", "events lost", "detected after (s)")


def rows(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def main(paths):
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for path in paths:
        for r in rows(path):
            scenario = r["scenario"] + (" (%s)" % r["note"] if r.get("note") else "")
            print("| %s | `python -m pytest -q \"%s\"` | %s | %s | %s | %s |" % (
                scenario, r["test"], r["folds_finished"], r["steps_lost"], r["events_lost"], r["detect_s"]))


if __name__ == "__main__":
    main(sys.argv[1:])
