"""The live view: a pure function of the run's state (built from events), the clock and
the size it is drawn at.

`render(view, now, width=None, height=None)` returns a rich renderable that lays itself out
when drawn: for `width` x `height`, else for the console's size at that moment, so a
`Live` display fits a resized terminal at its next refresh. It calls no Ray, TensorFlow
or disk.

Width: the columns narrow or drop in the fixed order of NARROWING until the table fits
at its natural width (rich never cuts a cell); the progress bar takes the width left
over, up to BAR_WIDTH. A wider window brings them back in reverse order. A shortened
host:device keeps the device label whole and the host's end (`short_host`). A GPU that
several running folds share (scheduler.folds_per_gpu) shows their count: `host:GPU0 ×2`.
Height: when not every fold gets a row, running, retrying and failed folds come first,
then the reason and notice lines, then queued folds, then finished ones; one line counts
what is left out.

`status_table(view, title)` is the same state once, for `scheduler status`.
`format_event(event)` is the same information as one plain line, for output that is not a
terminal (`ray job submit`, CI, a pipe) or `--no-dashboard`.
"""

from collections import Counter
from functools import partial

from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from lmtcnn import events as ev
from scheduler import state as st
from scheduler.widths import Fitted, add_column

STATE_STYLES = {"queued": "dim", "running": "cyan", "retrying": "yellow", "done": "green",
                "failed": "bold red", "stopped": "magenta", "interrupted": "magenta"}
BAR_WIDTH = 16
MIN_BAR_WIDTH = 4  # a narrower bar tells nothing that the step count beside it does not
HOST_ROOM = 8  # cells a shortened host name keeps, its "~" included
# Lines a table takes besides its rows: top rule, header, header rule, bottom rule.
TABLE_FRAME_LINES = 4


def render(view, now, width=None, height=None):
    """The live view of `view` at time `now`, laid out for `width` x `height` cells (by
    default the size it is drawn at)."""
    return LiveView(view, now, width, height)


class LiveView:
    """What `render` returns: it lays itself out when rich draws it."""

    def __init__(self, view, now, width, height, title=None):
        self.view, self.now, self.width, self.height, self.title = view, now, width, height, title

    def __rich_console__(self, console, options):
        options = options.update_width(self.width or options.max_width)
        height = self.height or options.height or options.size.height
        return live_parts(self.view, self.now, console, options, height, self.title)


def live_parts(view, now, console, options, height, title=None):
    """Title, table, the line counting the folds and notes left out, summary, notes: at
    most `height` lines of options.max_width cells."""
    def lines_of(renderable):
        return len(console.render_lines(renderable, options))

    title = title or Text("%s  %s" % (view.name, view.run_dir))
    summary = Text(packed(summary_parts(view, now), options.max_width))
    room = height - lines_of(title) - TABLE_FRAME_LINES - lines_of(summary)
    folds, notes, left_out = within_height(view, room, lines_of)
    parts = [title, fitted_table(folds, console, options)]
    if left_out:
        parts.append(Text(left_out))
    return parts + [summary] + notes


def within_height(view, room, lines_of):
    """(the folds that get a row, in fold order; the notes shown; the line that counts the
    rest, "" when nothing is left out) in `room` lines."""
    folds = sorted(view.folds.values(), key=lambda f: (row_rank(f), f.fold))
    watched = [f for f in folds if row_rank(f) == 0]
    candidates = ([(1, f) for f in watched] + [(lines_of(note), note) for note in note_lines(view)]
                  + [(1, f) for f in folds[len(watched):]])
    if sum(lines for lines, _ in candidates) > room:
        room -= 1  # for the line that counts what is left out
    shown, hidden = [], []
    for lines, item in candidates:
        if lines <= room:
            shown.append(item)
            room -= lines
        else:
            hidden.append(item)
    rows = sorted((item for item in shown if isinstance(item, st.FoldView)), key=lambda f: f.fold)
    return rows, [item for item in shown if isinstance(item, Text)], left_out_line(hidden)


def row_rank(fold):
    """Which folds keep a row when not all fit: those to watch (0), then queued (1), then
    finished (2)."""
    return {"queued": 1, "done": 2}.get(fold.state, 0)


def note_lines(view):
    """Why each failed or retrying fold is so, then the latest notices."""
    reasons = [Text("fold %s: %s" % (fold_cell(f), f.reason), style=STATE_STYLES[f.state])
               for f in sorted(view.folds.values(), key=lambda f: f.fold)
               if f.state in ("failed", "retrying") and f.reason]
    return reasons + [Text(n, style="yellow") for n in view.notices[-3:]]


def left_out_line(hidden):
    """E.g. "+ 12 more: 9 done, 3 queued; 2 notes not shown"."""
    folds = [item for item in hidden if isinstance(item, st.FoldView)]
    notes = len(hidden) - len(folds)
    parts = []
    if folds:
        states = Counter(f.state for f in folds).most_common()
        parts.append("%d more: %s" % (len(folds), ", ".join("%d %s" % (n, state) for state, n in states)))
    if notes:
        parts.append("%d note%s not shown" % (notes, "s" if notes > 1 else ""))
    return "+ " + "; ".join(parts) if parts else ""


def fold_cell(f):
    return f.label or str(f.fold)


def state_cell(f):
    return Text(f.state, style=STATE_STYLES.get(f.state, ""))


def where_cell(f, shared=None):
    return "%s:%s%s" % (f.host, f.device, shared_mark(f, shared)) if f.host else "-"


def short_where_cell(f, shared=None):
    return "%s:%s%s" % (short_host(f.host), f.device, shared_mark(f, shared)) if f.host else "-"


def shared_gpus(folds):
    """{(host, device label): running folds} of each GPU that more than one of `folds` runs
    on now. Only GPUs: the scheduler never shares an NPU, and test clusters of several Ray
    nodes on one host would show one host's NPU0 as shared."""
    running = Counter((f.host, f.device) for f in folds if f.state == "running" and f.device.startswith("GPU"))
    return {where: n for where, n in running.items() if n > 1}


def shared_mark(f, shared):
    n = (shared or {}).get((f.host, f.device)) if f.state == "running" else None
    return " ×%d" % n if n else ""


def short_host(host):
    """`host` in at most HOST_ROOM cells: a name loses its domain, then keeps its end after
    a "~" (a cluster's nodes differ at the end: worker-12, worker-13)."""
    if not host.replace(".", "").isdigit():  # an IPv4 address keeps its dots
        host = host.split(".")[0]
    return host if len(host) <= HOST_ROOM else "~" + host[-(HOST_ROOM - 1):]


def progress_cell(f, bar_width=BAR_WIDTH):
    if not f.total_steps:
        return "-"
    count = "%d/%d" % (f.step, f.total_steps)
    if not bar_width:
        return count
    filled = int(bar_width * min(f.step, f.total_steps) / f.total_steps)
    return "%s %s" % ("█" * filled + "░" * (bar_width - filled), count)


def loss_cell(f):
    return "%.4f" % f.loss if f.loss is not None and f.state != "done" else "-"


def lr_cell(f):
    return "%.2g" % f.learning_rate if f.learning_rate is not None and f.state != "done" else "-"


def rate_cell(f):
    return "%.0f" % f.images_per_s if f.images_per_s and f.state in ("running", "retrying") else "-"


def eta_cell(f):
    return format_duration(st.fold_eta_s(f))


def eval_result(f):
    """(what was scored: "test" or e.g. "val@200", "top-1/top-2/gender" in %) of a finished
    fold's test or of the last evaluation; None before any."""
    if f.state == "done" and f.metrics:
        scored, m = "test", f.metrics
    elif f.last_eval:
        scored, m = "%s@%d" % (f.last_eval["split"], f.last_eval["step"]), f.last_eval
    else:
        return None
    return scored, "%.1f/%.1f/%.1f" % (100 * m["age_top1"], 100 * m["age_top2"], 100 * m["gender"])


def eval_cell(f):
    result = eval_result(f)
    return "%s %s" % result if result else "-"


def eval_numbers_cell(f):
    result = eval_result(f)
    return result[1] if result else "-"


def try_cell(f):
    return str(f.attempt or "-")


FULL, SHORT = "full", "short"
# The live table's columns, left to right, each in its forms: {form: (header, justify, cell)}.
COLUMNS = {
    "fold": {FULL: ("fold", "right", fold_cell)},
    "state": {FULL: ("state", "left", state_cell)},
    "host:device": {FULL: ("host:device", "left", where_cell), SHORT: ("host:device", "left", short_where_cell)},
    "progress": {FULL: ("progress", "left", progress_cell)},
    "loss": {FULL: ("loss", "right", loss_cell)},
    "lr": {FULL: ("lr", "right", lr_cell)},
    "img/s": {FULL: ("img/s", "right", rate_cell)},
    "ETA": {FULL: ("ETA", "right", eta_cell)},
    "eval": {FULL: ("eval % (top-1/top-2/gender)", "left", eval_cell), SHORT: ("eval %", "left", eval_numbers_cell)},
    "try": {FULL: ("try", "right", try_cell)},
}
# How the table narrows until it fits, one step at a time, each on top of the ones before
# (None drops the column). The progress bar is no step: it takes the width left over.
NARROWING = (
    {"lr": None, "try": None},
    {"img/s": None},
    {"eval": SHORT},
    {"eval": None},
    {"host:device": SHORT},
    {"loss": None},
)


def cumulative(steps):
    """[{}, steps[0], steps[0] + steps[1], ...]: the layouts, fullest first."""
    layouts = [{}]
    for step in steps:
        layout = dict(layouts[-1])
        layout.update(step)
        layouts.append(layout)
    return layouts


LAYOUTS = cumulative(NARROWING)


def fitted_table(folds, console, options):
    """The table of `folds` in the fullest layout that fits options.max_width without a
    bar; the bar then takes the width left over."""
    for layout in LAYOUTS:
        columns, rows = table_cells(folds, layout, 0)
        spare = options.max_width - table_width(columns, rows)
        if spare >= 0:
            columns, rows = table_cells(folds, layout, bar_width_for(folds, spare))
            return live_table(columns, rows, fixed=True)
    return live_table(*table_cells(folds, LAYOUTS[-1], 0))  # narrower than any layout: cells fold


def bar_width_for(folds, spare):
    """The widest bar, up to BAR_WIDTH, that `spare` cells allow: a bar and its space
    widen the progress column only by what they add beyond its header."""
    header = COLUMNS["progress"][FULL][0]
    counts = max([cell_len(progress_cell(f, 0)) for f in folds] or [0])
    bar = min(BAR_WIDTH, max(cell_len(header), counts) + spare - counts - 1)
    return bar if bar >= MIN_BAR_WIDTH else 0


def table_cells(folds, layout, bar_width):
    """([(header, justify)] of the columns `layout` keeps, each fold's row of cells)."""
    columns = []
    for name, forms in COLUMNS.items():
        form = layout.get(name, FULL)
        if form is not None:
            header, justify, cell = forms[form]
            if cell is progress_cell:  # the one cell that depends on the layout: its bar's width
                cell = partial(progress_cell, bar_width=bar_width)
            elif cell in (where_cell, short_where_cell):  # and the one that depends on the other rows
                cell = partial(cell, shared=shared_gpus(folds))
            columns.append((header, justify, cell))
    return [column[:2] for column in columns], [[cell(f) for _, _, cell in columns] for f in folds]


def widest_cells(rows):
    """One row of the widest cell of each column: a table of it is as wide as one of
    `rows`, and much quicker for rich to measure."""
    return [[max(column, key=cells_wide) for column in zip(*rows)]] if rows else []


def cells_wide(cell):
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell)


def table_width(columns, rows):
    """How wide live_table(columns, rows) draws when nothing squeezes it, counted rather
    than measured by rich (a measure of each layout tried was most of a redraw): each
    column its widest cell or header plus a space either side, and a rule between and
    around the columns."""
    widest = widest_cells(rows)[0] if rows else [""] * len(columns)
    return sum(max(cell_len(header), cells_wide(cell)) + 2 for (header, _), cell in zip(columns, widest)) \
        + len(columns) + 1


def live_table(columns, rows, fixed=False):
    """fixed: each column as wide as its widest cell, told to rich, which then measures no
    cell again; drawing 20 folds a second costs about half as much."""
    table = Table()
    widest = widest_cells(rows)[0] if fixed and rows else None
    for i, (header, justify) in enumerate(columns):
        width = max(cell_len(header), cells_wide(widest[i])) if widest else None
        add_column(table, header, justify, width=width)
    for cells in rows:
        # Text, not str: a str cell is parsed for console markup at every redraw.
        table.add_row(*[cell if isinstance(cell, Text) else Text(cell) for cell in cells])
    return table


def summary_parts(view, now):
    folds = list(view.folds.values())
    done = sum(f.state == "done" for f in folds)
    failed = sum(f.state == "failed" for f in folds)
    rate = sum(f.images_per_s or 0 for f in folds if f.state in ("running", "retrying"))
    elapsed = now - view.started_at if view.started_at else None
    return ["folds done %d/%d" % (done, len(folds)) + (", failed %d" % failed if failed else ""),
            "%.0f images/s" % rate, "elapsed %s" % format_duration(elapsed),
            "ETA %s" % format_duration(st.run_eta_s(view))]


def packed(parts, width, separator="  |  "):
    """`parts` joined by `separator` on as few lines of at most `width` cells as hold them,
    no part split across lines."""
    lines = [parts[0]]
    for part in parts[1:]:
        if cell_len(lines[-1] + separator + part) <= width:
            lines[-1] += separator + part
        else:
            lines.append(part)
    return "\n".join(lines)


def status_table(view, title):
    """`scheduler status`: each fold's state, attempts, host:device, step and a note (its
    test result, or why it failed) in the width it is printed at: the notes move under the
    table, then host names shorten."""
    folds = [view.folds[k] for k in sorted(view.folds)]
    notes = [Text("fold %d: %s" % (f.fold, status_note(f))) for f in folds if status_note(f)]
    return Fitted([status_grid(title, folds, where_cell, with_note=True)],
                  [status_grid(title, folds, where_cell, with_note=False)] + notes,
                  [status_grid(title, folds, short_where_cell, with_note=False)] + notes)


def status_grid(title, folds, where, with_note):
    table = Table(title=title, title_justify="left")
    for header in ("fold", "state", "attempts", "host:device", "step") + (("note",) if with_note else ()):
        add_column(table, header)
    for f in folds:
        cells = [str(f.fold), f.state, str(f.attempt), where(f),
                 "%d/%d" % (f.step, f.total_steps) if f.total_steps else str(f.step)]
        table.add_row(*cells + ([status_note(f)] if with_note else []))
    return table


def status_note(f):
    if f.state == "done" and f.metrics:
        return "age top-1 %.2f%%, gender %.2f%%, %s" % (100 * f.metrics["age_top1"], 100 * f.metrics["gender"],
                                                      format_duration(f.wall_s))
    return f.reason


def format_duration(seconds):
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return "%d:%02d:%02d" % (h, m, s) if h else "%d:%02d" % (m, s)


def format_event(event):
    """One plain line per event, e.g. 'fold 2 try 1 vm:NPU1  step 100/150 loss 0.5321 ...'."""
    kind = event["event"]
    if "fold" not in event:
        if kind == st.RUN_STARTED:
            return "run %s: folds %s on %s -> %s" % (event["name"], ",".join(map(str, event["folds"])),
                                                   event["placement"], event["run_dir"])
        if kind == st.NOTICE:
            return "note: %s" % event["text"]
        if kind == st.RUN_INTERRUPTED:
            return "interrupted; resume with: %s" % event["resume"]
        return kind.replace("_", " ")
    where = "fold %d try %d" % (event["fold"], event.get("attempt", 0))
    if event.get("host"):
        where += " %s" % event["host"] + (":%s" % event["device_label"] if event.get("device_label") else "")
    if kind == ev.STEP_DONE:
        what = "step %d/%s loss %.4f lr %.2g %.0f images/s" % (event["step"], event.get("total_steps", "?"),
                                                               event["loss"], event["learning_rate"],
                                                               event["images_per_s"])
    elif kind == ev.FOLD_STARTED:
        what = "started on %s at step %d of %d" % (event["device"], event["start_step"], event["total_steps"])
    elif kind in (ev.EVAL_DONE, ev.FOLD_FINISHED, st.FOLD_SKIPPED):
        m = event["metrics"]
        label = {ev.EVAL_DONE: "%s eval" % event.get("split"), ev.FOLD_FINISHED: "finished, test",
                 st.FOLD_SKIPPED: "already finished, test"}[kind]
        what = "%s: age top-1 %.2f%% top-2 %.2f%% gender %.2f%% (%d images)" % (
            label, 100 * m["age_top1"], 100 * m["age_top2"], 100 * m["gender"], m["count"])
    elif kind == ev.CHECKPOINT_SAVED:
        what = "checkpoint at step %d" % event["step"]
    elif kind == ev.EVAL_STARTED:
        what = "evaluating the %s split at step %d" % (event["split"], event["step"])
    elif kind == st.FOLD_STALLED:
        what = "stalled at step %s: no report for %.0f s; cancelled" % (event.get("step"), event["quiet_s"])
    elif kind in (ev.FOLD_FAILED, st.FOLD_RETRYING):
        what = "%s: %s" % ("failed" if kind == ev.FOLD_FAILED else "retrying", event["reason"])
    elif kind == ev.FOLD_STOPPED:
        what = ("stopped at step %d (checkpoint saved)" % event["step"] if event["step"] is not None
                else "stopped before training started")
    elif kind == ev.MESSAGE:
        what = event["text"]
    else:
        what = kind.replace("_", " ")
    return "%s  %s" % (where, what)
