"""Server-rendered SVG charts for the panel: geometry computed here, drawn by the
``panel/charts.html`` macros with SVG attributes only (no inline style or script, so
the strict CSP holds; no library, no CDN)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 720
HEIGHT = 220
LEFT = 44  # room for the axis labels
BOTTOM = 24
TOP = 8
PALETTE = ("#2b7bb9", "#e08a1e", "#3a9d5d", "#b94a48")


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
    x: float
    y: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    lines: list[Line]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    legend: list[tuple[str, str]]  # (color, name)
    baseline: float


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** len(str(int(value))) / 10
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return float(step * magnitude)
    return float(value)


def _frame(top_value: float) -> tuple[float, list[Tick]]:
    scale_max = _nice_max(top_value)
    plot_h = HEIGHT - TOP - BOTTOM
    ticks = [Tick(LEFT - 6, HEIGHT - BOTTOM - plot_h * f, _fmt(scale_max * f)) for f in (0, 0.5, 1)]
    return scale_max, ticks


def _fmt(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.1f}"


def _x_ticks(labels: Sequence[str], step_w: float) -> list[Tick]:
    every = max(1, len(labels) // 12)
    return [
        Tick(LEFT + step_w * (i + 0.5), HEIGHT - 6, label)
        for i, label in enumerate(labels)
        if i % every == 0
    ]


def _plot(
    labels: Sequence[str], series: Sequence[tuple[str, Sequence[int]]]
) -> tuple[float, list[Tick], float, float]:
    """The scale's top, the y ticks, the plot's height and one label's width."""
    top = max((v for _, values in series for v in values), default=0)
    scale_max, y_ticks = _frame(top)
    plot_w = WIDTH - LEFT - 4
    return scale_max, y_ticks, HEIGHT - TOP - BOTTOM, plot_w / max(1, len(labels))


def bars(labels: Sequence[str], series: Sequence[tuple[str, Sequence[int]]]) -> Chart:
    """Grouped bars: one group per label, one bar per series (name, values)."""
    scale_max, y_ticks, plot_h, step_w = _plot(labels, series)
    bar_w = max(0.5, step_w * 0.8 / max(1, len(series)))
    out: list[Bar] = []
    for s, (name, values) in enumerate(series):
        color = PALETTE[s % len(PALETTE)]
        for i, value in enumerate(values):
            if not value:
                continue
            h = plot_h * value / scale_max
            x = LEFT + step_w * i + step_w * 0.1 + bar_w * s
            out.append(
                Bar(
                    round(x, 2),
                    round(HEIGHT - BOTTOM - h, 2),
                    round(bar_w, 2),
                    round(h, 2),
                    color,
                    f"{labels[i]} · {name}: {value}",
                )
            )
    return Chart(
        WIDTH,
        HEIGHT,
        out,
        [],
        _x_ticks(labels, step_w),
        y_ticks,
        [(PALETTE[s % len(PALETTE)], name) for s, (name, _) in enumerate(series)],
        HEIGHT - BOTTOM,
    )


def lines(labels: Sequence[str], series: Sequence[tuple[str, Sequence[int]]]) -> Chart:
    """One polyline per series over the labels."""
    scale_max, y_ticks, plot_h, step_w = _plot(labels, series)
    out: list[Line] = []
    for s, (name, values) in enumerate(series):
        points = " ".join(
            f"{LEFT + step_w * (i + 0.5):.2f},{HEIGHT - BOTTOM - plot_h * v / scale_max:.2f}"
            for i, v in enumerate(values)
        )
        out.append(Line(points, PALETTE[s % len(PALETTE)], name))
    return Chart(
        WIDTH,
        HEIGHT,
        [],
        out,
        _x_ticks(labels, step_w),
        y_ticks,
        [(line.color, line.name) for line in out],
        HEIGHT - BOTTOM,
    )


@dataclass(frozen=True)
class Cell:
    x: int
    y: int
    opacity: float
    title: str


def heatmap(grid: Sequence[Sequence[int]], row_names: Sequence[str]) -> list[Cell]:
    """Weekday x hour cells (24 columns of 24 px after a 40 px label column), shaded by
    their share of the busiest cell."""
    top = max((v for row in grid for v in row), default=0) or 1
    return [
        Cell(
            40 + 26 * h,
            4 + 22 * w,
            round(0.08 + 0.92 * v / top, 3) if v else 0.03,
            f"{row_names[w]} {h:02d}:00 · {v}",
        )
        for w, row in enumerate(grid)
        for h, v in enumerate(row)
    ]
