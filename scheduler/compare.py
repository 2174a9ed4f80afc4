"""`python -m scheduler compare RUN_A RUN_B [RUN_C ...]`: is a difference between runs real?

Each run's finished folds are read as `table` reads them (its events.jsonl, replayed).
Per metric, two runs are compared on the folds both finished: fold by fold, the
differences B-A, their mean with a 95% t interval, a paired t-test (which decides
"significant", at 0.05) and a Wilcoxon signed-rank test (scipy.stats). With three runs or
more, each is compared against the first, the baseline.

Runs compare only on the same test sets: each finished fold records the fingerprint of
its test list (lmtcnn.prepare.list_fingerprint) in metrics.json; a fold that lacks it
falls back on the fingerprint its run's last session recorded for its data. A fold
scored on another test set is refused; a fold without any fingerprint (a run from before
they were recorded) is refused unless --unchecked, and the output then says which folds
went unchecked.
"""

import csv
import io
import itertools
import json
import math
import os

from lmtcnn.errors import UserError
from scheduler.results import METRIC_COLUMNS, build_results, recipe_line
from scheduler.rundir import replay

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SIGNIFICANCE = 0.05
METRIC_KEYS = tuple(key for key, _ in METRIC_COLUMNS)
INDEPENDENCE_NOTE = ("The folds share most of their training images, so fold differences are not fully "
                     "independent: read the p-values as a guide, not an exact error rate.")


def compare_command(args, console):
    report = compare_runs(args.run_dirs, metrics=args.metric or METRIC_KEYS, unchecked=args.unchecked)
    if args.format:
        console.file.write(RENDERERS[args.format](report))
    else:
        print_report(report, console)
    return 0


# --- reading and checking the runs -------------------------------------------------------

def compare_runs(paths, metrics=METRIC_KEYS, unchecked=False):
    """The comparison of each run in `paths[1:]` against `paths[0]`, as a JSON-ready dict.
    UserError for fewer than two runs, a path named twice or that is no run directory,
    test sets that differ (or cannot be checked, unless `unchecked`), no folds in common."""
    if len(paths) < 2:
        raise UserError("compare: name two run directories or more, e.g. `python -m scheduler compare runs/a "
                        "runs/b`")
    if len(paths) > len(LETTERS):
        raise UserError("compare: %d runs named; compare at most %d at a time" % (len(paths), len(LETTERS)))
    seen = {}
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:
            raise UserError("compare: %s is named twice (also as %s); name each run once" % (path, seen[real]))
        seen[real] = path
    runs = [_load_run(path, label, letter) for path, label, letter in zip(paths, run_labels(paths), LETTERS)]
    baseline = runs[0]
    comparisons = [_compare_pair(baseline, other, metrics, unchecked) for other in runs[1:]]
    notes = [INDEPENDENCE_NOTE]
    recipes = {run["recipe"] for run in runs}
    if len(recipes) > 1:
        notes.append("The runs were not trained or scored alike: %s."
                     % "; ".join("%s: %s" % (run["label"], run["recipe"] or "not recorded") for run in runs))
    return {"baseline": baseline["label"], "runs": [_public(run) for run in runs], "comparisons": comparisons,
            "notes": notes}


def run_labels(paths):
    """Each run's directory name; where names repeat, as many parent directories as tell
    them apart (runs/a/cv5 and runs/b/cv5 are a/cv5 and b/cv5)."""
    parts = [os.path.abspath(path).split(os.sep) for path in paths]
    depth = [1] * len(paths)
    while True:
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        repeated = [i for i, label in enumerate(labels) if labels.count(label) > 1]
        if not repeated:
            return labels
        for i in repeated:
            depth[i] += 1


def _load_run(path, label, letter):
    view, _ = replay(path)
    results = build_results(view)
    done = {row["fold"]: row for row in results["folds"] if row["state"] == "done"}
    recorded = view.data.get("test_fingerprints", {})
    fingerprints = {k: view.folds[k].metrics.get("test_fingerprint") or recorded.get(str(k)) for k in done}
    return {"label": label, "letter": letter, "path": path, "done": done, "fingerprints": fingerprints,
            "folds": len(results["folds"]), "recipe": recipe_line(results)}


def _public(run):
    return {"label": run["label"], "letter": run["letter"], "path": os.path.abspath(run["path"]),
            "finished_folds": sorted(run["done"]), "folds": run["folds"], "recipe": run["recipe"]}


def _compare_pair(baseline, other, metrics, unchecked):
    folds = sorted(set(baseline["done"]) & set(other["done"]))
    if not folds:
        raise UserError("%s and %s have no finished fold in common (%s: %s; %s: %s); resume the runs "
                        "(`python -m scheduler run --resume RUN_DIR`) or compare runs that finished the same folds"
                        % (baseline["path"], other["path"], baseline["label"], _fold_list(baseline["done"]),
                           other["label"], _fold_list(other["done"])))
    unchecked_folds = _check_test_sets(baseline, other, folds, unchecked)
    compared = {}
    for key in metrics:
        a = [baseline["done"][k][key] for k in folds]
        b = [other["done"][k][key] for k in folds]
        stat = paired_statistics(a, b)
        stat.update(label=dict(METRIC_COLUMNS)[key], folds=folds, baseline_values=a, run_values=b)
        stat["sentence"] = verdict(stat, other["label"], baseline["label"])
        compared[key] = stat
    notes = []
    tested = [s for s in compared.values() if s["wilcoxon_p"] is not None]
    widest = max(tested, key=lambda s: s["wilcoxon_folds"]) if tested else None
    if widest and widest["wilcoxon_min_p"] >= SIGNIFICANCE:
        notes.append("With %s the Wilcoxon signed-rank test cannot give a p-value below %s (two-sided, exact), so "
                     "it never reaches %s here: it cannot confirm a difference, only fail to contradict one."
                     % (_folds_words(widest["wilcoxon_folds"]), _p(widest["wilcoxon_min_p"]), SIGNIFICANCE))
    if unchecked_folds:
        notes.append("Test sets not checked on %s (no fingerprint recorded; --unchecked): the comparison assumes "
                     "they are the same." % _fold_words(unchecked_folds))
    else:
        notes.append("Test sets: the same on %s compared (fingerprints of the test lists)."
                     % ("the fold" if len(folds) == 1 else "all %d folds" % len(folds)))
    return {"run": other["label"], "baseline": baseline["label"], "folds": folds, "unchecked_folds": unchecked_folds,
            "metrics": compared, "notes": notes}


def _check_test_sets(baseline, other, folds, unchecked):
    """The folds whose test sets could not be checked; UserError for a fold scored on
    different test sets, or one that cannot be checked unless `unchecked`."""
    missing = []
    for k in folds:
        a, b = baseline["fingerprints"][k], other["fingerprints"][k]
        if a and b and a != b:
            raise UserError("fold %d: %s and %s were scored on different test sets (test list fingerprints %s and "
                            "%s); compare runs trained on the same prepared data"
                            % (k, baseline["path"], other["path"], a[:19], b[:19]))
        if not (a and b):
            missing.append(k)
    if missing and not unchecked:
        lacking = baseline if not baseline["fingerprints"][missing[0]] else other
        raise UserError("fold %d: %s records no test-set fingerprint (a run from before they were recorded), so "
                        "its test set cannot be checked against %s; pass --unchecked to compare anyway"
                        % (missing[0], lacking["path"], (other if lacking is baseline else baseline)["path"]))
    return missing


# --- statistics --------------------------------------------------------------------------

def paired_statistics(a, b):
    """Statistics of the per-fold differences b - a (percentage points) of one metric.

    Returns a dict: differences, n, mean_difference, ci95 ([low, high]: the 95% t interval
    of the mean difference), t_test_p (paired t-test), wilcoxon_p (signed-rank test),
    wilcoxon_folds (the folds it ranks: those with a difference), wilcoxon_min_p (the
    smallest p the exact test can give with them), and t_test_note / wilcoxon_note saying
    why a test has no p-value (None then).
    """
    from scipy import stats

    differences = [round(y - x, 2) for x, y in zip(a, b)]  # the metrics carry 2 decimals
    n = len(differences)
    mean = sum(differences) / n
    out = {"differences": differences, "n": n, "mean_difference": mean, "ci95": None, "t_test_p": None,
           "t_test_note": "", "wilcoxon_p": None, "wilcoxon_folds": 0, "wilcoxon_min_p": None, "wilcoxon_note": ""}
    if n < 2:
        out["t_test_note"] = out["wilcoxon_note"] = "needs 2 folds or more"
        return out
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    out["ci95"] = [mean - half, mean + half]
    if len(set(differences)) == 1:  # exactly: rounded, they are equal or differ by 0.01
        out["t_test_note"] = "undefined: the difference is the same on every fold"
    else:
        out["t_test_p"] = float(stats.ttest_1samp(differences, 0.0).pvalue)  # the paired t-test
    # Folds with no difference drop out of the ranks (Wilcoxon's own rule); all the rest of
    # one sign is the test's extreme: 2 of the 2^n equally likely sign patterns.
    nonzero = [d for d in differences if d != 0]
    if not nonzero:
        out["wilcoxon_note"] = "every difference is zero"
        return out
    out["wilcoxon_p"] = signed_rank_p(nonzero)
    out["wilcoxon_folds"], out["wilcoxon_min_p"] = len(nonzero), 2.0 ** (1 - len(nonzero))
    return out


def signed_rank_p(differences):
    """The exact two-sided p-value of Wilcoxon's signed-rank test of non-zero `differences`,
    ties given their average rank: the share of the 2^n sign patterns, equally likely when
    neither run is better, whose rank sum lies at least as far from its mean as the one
    observed. Exact with ties too, where scipy's versions differ (1.7 falls back on a
    normal approximation); 2^n stays small for the folds of a cross-validation."""
    ranks = average_ranks([abs(d) for d in differences])
    observed = sum(r for r, d in zip(ranks, differences) if d > 0)
    centre = sum(ranks) / 2.0
    extreme = abs(observed - centre) - 1e-9  # rank sums are multiples of 0.5; keep ties in
    count = sum(1 for signs in itertools.product((0, 1), repeat=len(ranks))
                if abs(sum(r for r, s in zip(ranks, signs) if s) - centre) >= extreme)
    return count / 2.0 ** len(ranks)


def average_ranks(values):
    """Ranks 1..n of `values`, equal values sharing the average of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0 + 1
        i = j + 1
    return ranks


def verdict(stat, run, baseline):
    """One plain sentence on a metric: which run is better, by how much, and how sure."""
    metric, m, n = stat["label"], stat["mean_difference"], stat["n"]
    if n == 1:
        return ("%s - %s on %s: %+.2f points on the one fold both finished (fold %d); a test needs 2 folds or more."
                % (run, baseline, metric, m, stat["folds"][0]))
    if stat["t_test_p"] is None:
        if m == 0:
            return "%s and %s score the same on %s on all %d folds." % (run, baseline, metric, n)
        return ("%s is %s than %s on %s by %.2f points on every one of the %d folds; with no spread the t-test is "
                "undefined (%s)." % (run, _better(m), baseline, metric, abs(m), n, _wilcoxon_words(stat)))
    evidence = "%s (paired t-test over %d folds; %s)" % (_p_is(stat["t_test_p"]), n, _wilcoxon_words(stat))
    interval = "95%% CI %+.2f to %+.2f" % tuple(stat["ci95"])
    if stat["t_test_p"] < SIGNIFICANCE:
        return "%s is %s than %s on %s by %.2f points (%s), %s." % (run, _better(m), baseline, metric, abs(m),
                                                                   interval, evidence)
    return ("No significant difference on %s: %s - %s = %+.2f points (%s), %s."
            % (metric, run, baseline, m, interval, evidence))


def _better(difference):
    return "better" if difference > 0 else "worse"


def _wilcoxon_words(stat):
    if stat["wilcoxon_p"] is None:
        return "Wilcoxon: %s" % stat["wilcoxon_note"]
    if abs(stat["wilcoxon_p"] - stat["wilcoxon_min_p"]) < 1e-9:
        ranked = stat["wilcoxon_folds"]
        return "Wilcoxon p = %s, the smallest possible %s" % (
            _p(stat["wilcoxon_p"]), "over %d folds" % ranked if ranked == stat["n"] else
            "with %s that differ" % _folds_words(ranked))
    return "Wilcoxon %s" % _p_is(stat["wilcoxon_p"])


def _p_is(p):
    """"p = 0.0132", or "p < 0.001" in a sentence."""
    text = _p(p)
    return "p " + text if text.startswith("<") else "p = " + text


def _p(p):
    return "< 0.001" if p < 0.001 else "%.3g" % p


def _fold_list(folds):
    return ", ".join(str(k) for k in sorted(folds)) or "none"


def _fold_words(folds):
    return ("fold " if len(folds) == 1 else "folds ") + _fold_list(folds)


def _folds_words(n):
    return "1 fold" if n == 1 else "%d folds" % n


# --- output ------------------------------------------------------------------------------

def _headline(report):
    others = len(report["runs"]) - 1
    if others == 1:
        return "%s against %s, per test fold (%%)" % (report["runs"][1]["label"], report["baseline"])
    return "%d runs, each against the first, the baseline %s, per test fold (%%)" % (others, report["baseline"])


def _run_line(run, report, quote=""):
    return "%s = %s%s%s%s: %s; %d of %d folds finished" % (
        run["letter"], quote, run["label"], quote, " (baseline)" if run["label"] == report["baseline"] else "",
        run["path"], len(run["finished_folds"]), run["folds"])


def _stat_cells(stat):
    ci = "%+.2f to %+.2f" % tuple(stat["ci95"]) if stat["ci95"] else "-"
    t = _p(stat["t_test_p"]) if stat["t_test_p"] is not None else "-"
    w = _p(stat["wilcoxon_p"]) if stat["wilcoxon_p"] is not None else "-"
    return ["%+.2f" % stat["mean_difference"], ci, t, w]


STAT_HEADER = ["metric", "mean B-A", "95% CI", "t-test p", "Wilcoxon p"]


def _fold_rows(comparison, a, b, difference):
    """Per metric three rows (metric label or "", row name, cells of each fold and the
    mean): the baseline named `a`, the run named `b`, their difference named `difference`."""
    for stat in comparison["metrics"].values():
        n = stat["n"]
        yield stat["label"], a, ["%.2f" % v for v in stat["baseline_values"]] + [
            "%.2f" % (sum(stat["baseline_values"]) / n)]
        yield "", b, ["%.2f" % v for v in stat["run_values"]] + ["%.2f" % (sum(stat["run_values"]) / n)]
        yield "", difference, ["%+.2f" % d for d in stat["differences"]] + ["%+.2f" % stat["mean_difference"]]


def print_report(report, console):
    """Rich tables that fit 80 columns: runs are letters (A, B, ...) named above them."""
    from rich.table import Table

    letters = {run["label"]: run["letter"] for run in report["runs"]}
    console.print(_headline(report), highlight=False, soft_wrap=True)
    for run in report["runs"]:
        console.print("  " + _run_line(run, report), highlight=False, soft_wrap=True)
    for comparison in report["comparisons"]:
        a, b = letters[comparison["baseline"]], letters[comparison["run"]]
        folds = Table(title="%s (%s) against %s (%s): accuracy (%%) on the %s both finished"
                            % (b, comparison["run"], a, comparison["baseline"],
                               _folds_words(len(comparison["folds"]))), title_justify="left")
        folds.add_column("metric")
        folds.add_column("run", no_wrap=True)
        for k in comparison["folds"]:
            folds.add_column("fold %d" % k, justify="right", no_wrap=True)
        folds.add_column("mean", justify="right", no_wrap=True)
        difference = "%s-%s" % (b, a)
        for number, (metric, name, cells) in enumerate(_fold_rows(comparison, a, b, difference)):
            if number and metric:
                folds.add_section()
            folds.add_row(metric, name, *cells, style="bold" if name == difference else "")
        console.print(folds)
        tests = Table(title="%s: mean difference (points) and tests" % difference, title_justify="left")
        for i, name in enumerate(STAT_HEADER):
            tests.add_column(name.replace("B-A", difference), justify="right" if i else "left", no_wrap=bool(i))
        for stat in comparison["metrics"].values():
            tests.add_row(stat["label"], *_stat_cells(stat))
        console.print(tests)
        # Sentences are not broken into lines: a terminal wraps them, a log keeps them whole.
        for stat in comparison["metrics"].values():
            console.print("- " + stat["sentence"], highlight=False, soft_wrap=True)
        for note in comparison["notes"]:
            console.print(note, highlight=False, soft_wrap=True)
        console.print()
    for note in report["notes"]:
        console.print(note, highlight=False, soft_wrap=True)


def to_markdown(report):
    lines = ["# Comparison: %s" % _headline(report), ""]
    lines += ["- " + _run_line(run, report, quote="`") for run in report["runs"]]
    for comparison in report["comparisons"]:
        a, b = comparison["baseline"], comparison["run"]
        header = ["metric", "run"] + ["fold %d" % k for k in comparison["folds"]] + ["mean"]
        lines += ["", "## %s against %s" % (b, a), "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| %s | %s | %s |" % (metric, name, " | ".join(cells)) for metric, name, cells in
                  _fold_rows(comparison, a, b, "%s - %s" % (b, a))]
        header = [name.replace("B-A", "%s - %s" % (b, a)) for name in STAT_HEADER]
        lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| %s | %s |" % (stat["label"], " | ".join(_stat_cells(stat)))
                  for stat in comparison["metrics"].values()]
        lines += [""] + ["- " + stat["sentence"] for stat in comparison["metrics"].values()]
        for note in comparison["notes"]:
            lines += ["", note]
    for note in report["notes"]:
        lines += ["", note]
    return "\n".join(lines) + "\n"


CSV_HEADER = ["baseline", "run", "metric", "fold", "baseline_value", "run_value", "difference", "ci95_low",
              "ci95_high", "t_test_p", "wilcoxon_p"]


def to_csv(report):
    """One row per run, metric and fold; then a row with fold `mean` carrying the interval
    and the p-values (empty where a test could not run)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_HEADER)
    for comparison in report["comparisons"]:
        for key, stat in comparison["metrics"].items():
            start = [comparison["baseline"], comparison["run"], key]
            for k, x, y, d in zip(stat["folds"], stat["baseline_values"], stat["run_values"], stat["differences"]):
                writer.writerow(start + [k, x, y, d, "", "", "", ""])
            n = stat["n"]
            low, high = stat["ci95"] or ("", "")
            writer.writerow(start + ["mean", round(sum(stat["baseline_values"]) / n, 4),
                                     round(sum(stat["run_values"]) / n, 4), round(stat["mean_difference"], 4),
                                     _rounded(low), _rounded(high), _rounded(stat["t_test_p"]),
                                     _rounded(stat["wilcoxon_p"])])
    return out.getvalue()


def _rounded(value):
    return "" if value in ("", None) else round(value, 6)


def to_json(report):
    return json.dumps(report, indent=2, sort_keys=True) + "\n"


RENDERERS = {"md": to_markdown, "csv": to_csv, "json": to_json}
