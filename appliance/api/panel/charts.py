"""Server-rendered SVG charts for the panel: geometry computed here, drawn by the
``panel/report_charts.html`` macros with SVG attributes only (no inline style or script,
so the strict CSP holds; no library, no CDN).

A chart is a small CSS grid (``screens.css``, ``.chart-grid``): the y axis's labels as
HTML beside the plot, the plot an SVG stretched to the column's width
(``preserveAspectRatio="none"``: bars and lines scale, their strokes do not) and the x
axis's labels an SVG of its own without a viewBox, placed in percent. No text is inside
the stretched plot, so labels stay 13 CSS px on a phone and on a wide screen alike,
where a single scaled SVG made them tiny or huge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.api.panel.i18n import fmt_number

PLOT_W = 720  # the plot's own units (its viewBox); CSS sets its size on the page
PLOT_H = 180
PALETTE = ("#2b7bb9", "#e08a1e", "#3a9d5d", "#b94a48")
# How many x labels at most: on a wide screen, and at phone width (600 px and less,
# where the others carry ``thin`` and screens.css hides them).
WIDE_LABELS = 12
PHONE_LABELS = 6
# The weekday x hour heatmap's cells (viewBox units; the plot is stretched to the width).
HEAT_CELL_W = 26
HEAT_CELL_H = 22
HEAT_LABEL_EVERY_H = 3


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    color: str
    title: str


@dataclass(frozen=True)
class Line:
    points: str  # "x,y x,y ..." for <polyline points>
    color: str
    name: str


@dataclass(frozen=True)
class Tick:
    """A label of an axis. ``at``: percent along the x axis from the left, or for a y
    tick the plot's y (viewBox units, for its grid line); ``thin``: hidden on phones."""

    at: float
    label: str
    thin: bool = False


@dataclass(frozen=True)
class Chart:
    width: int  # the plot's viewBox
    height: int
    bars: list[Bar]
    lines: list[Line]
    x_ticks: list[Tick]
    y_ticks: list[Tick]  # from the bottom (0) up, evenly spaced
    legend: list[tuple[str, str]]  # (color, name)


@dataclass(frozen=True)
class Cell:
    x: int
    y: int
    width: int
    height: int
    opacity: float
    title: str


@dataclass(frozen=True)
class Heatmap:
    width: int  # the plot's viewBox
    height: int
    cells: list[Cell]
    x_ticks: list[Tick]
    rows: list[str]  # the row names, top to bottom


def nice_max(value: float) -> int:
    """The scale's top: 1, 2 or 5 times a power of ten, at least ``value`` (whole, so
    its ticks are whole numbers)."""
    if value <= 1:
        return 1
    magnitude: int = 10 ** (len(str(math.ceil(value))) - 1)
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude  # not reached: value <= 10 * magnitude


def y_ticks(scale_max: int) -> list[Tick]:
    """0, the half when it is a whole number, and the top, in the locale's digits."""
    values = [0, scale_max // 2, scale_max] if scale_max % 2 == 0 else [0, scale_max]
    return [Tick(PLOT_H - PLOT_H * v / scale_max, fmt_number(v)) for v in values]


def x_ticks(labels: Sequence[str]) -> list[Tick]:
    """At most WIDE_LABELS of the labels, evenly; those beyond PHONE_LABELS ``thin``.
    The phone's step is a multiple of the wide one, so a phone shows a subset."""
    n = len(labels)
    every = max(1, math.ceil(n / WIDE_LABELS))
    phone_every = every * max(1, math.ceil(n / (PHONE_LABELS * every)))
    return [
        Tick(round(100 * (i + 0.5) / n, 3), label, thin=i % phone_every != 0)
        for i, label in enumerate(labels)
        if i % every == 0
    ]


def _plot(labels: Sequence[str], series: Sequence[tuple[str, Sequence[int]]]) -> tuple[int, float]:
    """The scale's top and one label's width."""
    top = max((v for _, values in series for v in values), default=0)
    return nice_max(top), PLOT_W / max(1, len(labels))


def bars(labels: Sequence[str], series: Sequence[tuple[str, Sequence[int]]]) -> Chart:
    """Grouped bars: one group per label, one bar per series (name, values)."""
    scale_max, step_w = _plot(labels, series)
    bar_w = max(0.5, step_w * 0.8 / max(1, len(series)))
    out: list[Bar] = []
    for s, (name, values) in enumerate(series):
        color = PALETTE[s % len(PALETTE)]
        for i, value in enumerate(values):
            if not value:
                continue
            h = PLOT_H * value / scale_max
            x = step_w * i + step_w * 0.1 + bar_w * s
            out.append(
                Bar(
                    round(x, 2),
                    round(PLOT_H - h, 2),
                    round(bar_w, 2),
                    round(h, 2),
                    color,
                    f"{labels[i]} · {name}: {fmt_number(value)}",
                )
            )
    return Chart(
        PLOT_W,
        PLOT_H,
        out,
        [],
        x_ticks(labels),
        y_ticks(scale_max),
        [(PALETTE[s % len(PALETTE)], name) for s, (name, _) in enumerate(series)],
    )


def lines(labels: Sequence[str], series: Sequence[tuple[str, Sequence[int]]]) -> Chart:
    """One polyline per series over the labels."""
    scale_max, step_w = _plot(labels, series)
    out: list[Line] = []
    for s, (name, values) in enumerate(series):
        points = " ".join(
            f"{step_w * (i + 0.5):.2f},{PLOT_H - PLOT_H * v / scale_max:.2f}"
            for i, v in enumerate(values)
        )
        out.append(Line(points, PALETTE[s % len(PALETTE)], name))
    return Chart(
        PLOT_W,
        PLOT_H,
        [],
        out,
        x_ticks(labels),
        y_ticks(scale_max),
        [(line.color, line.name) for line in out],
    )


def heatmap(grid: Sequence[Sequence[int]], row_names: Sequence[str]) -> Heatmap:
    """Weekday x hour cells shaded by their share of the busiest cell; the hours
    labelled every three."""
    top = max((v for row in grid for v in row), default=0) or 1
    cells = [
        Cell(
            HEAT_CELL_W * h + 1,
            HEAT_CELL_H * w + 1,
            HEAT_CELL_W - 2,
            HEAT_CELL_H - 2,
            round(0.08 + 0.92 * v / top, 3) if v else 0.03,
            f"{row_names[w]} {h:02d}:00 · {fmt_number(v)}",
        )
        for w, row in enumerate(grid)
        for h, v in enumerate(row)
    ]
    hours = [
        Tick(round(100 * (h + 0.5) / 24, 3), f"{h:02d}") for h in range(0, 24, HEAT_LABEL_EVERY_H)
    ]
    return Heatmap(24 * HEAT_CELL_W, len(grid) * HEAT_CELL_H, cells, hours, list(row_names))
