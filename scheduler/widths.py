"""Tables that fit the width they are drawn at, their cells whole.

rich squeezes a table wider than the console by cutting its cells (`49.06/7…`). Here the
table is chosen instead: `Fitted` draws the fullest of several layouts whose tables fit at
their natural width, decided when it is drawn, so a console of any width gets numbers
in full. Should even the narrowest layout not fit, its cells fold onto more lines
(`add_column`) rather than end in an ellipsis.
"""

from rich.table import Table

# The width to measure at: rich clamps a measurement to the width it is given, which
# would hide how much a table overflows.
UNLIMITED = 1 << 20


def natural_width(console, options, renderable):
    """How many cells wide `renderable` draws when nothing squeezes it."""
    return console.measure(renderable, options=options.update_width(UNLIMITED)).maximum


def fits(console, options, layout):
    """Whether each table of `layout` fits options.max_width at its natural width (its
    lines of text wrap, so they always fit)."""
    return all(natural_width(console, options, part) <= options.max_width
               for part in layout if isinstance(part, Table))


def add_column(table, header, justify="left", **settings):
    """A column that, if its table is squeezed after all, folds its cells onto more lines
    instead of cutting them with an ellipsis."""
    table.add_column(header, justify=justify, overflow="fold", **settings)


class Fitted:
    """The first of `layouts` (fullest first; each a list of renderables) that fits the
    width it is drawn at, else the last one."""

    def __init__(self, *layouts):
        self.layouts = layouts

    def __rich_console__(self, console, options):
        for layout in self.layouts:
            if fits(console, options, layout):
                return layout
        return self.layouts[-1]
