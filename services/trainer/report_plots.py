"""The training-curve plots of `agentrl report`: one PNG per quantity over optimizer steps.

    plotted = write_plots(records, out_dir)   # {"reward.png": out_dir / "reward.png", ...}

`PLOTS` lists the figures and the metrics.jsonl keys each draws (names from
`driver.step_metrics` and the loss metrics). A figure none of whose keys has a value in any
record is not drawn. Null values leave a gap in a line and count as 0 in a stacked area.
Figures are `matplotlib.figure.Figure`s saved through the Agg canvas: no display, no pyplot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIGURE_SIZE_IN = (8.0, 4.2)
# 8 x 4.2 in at 120 dpi: 960 x 504 px, sharp in the HTML page without a heavy file.
FIGURE_DPI = 120
# Noisy RL curves get a moving average over about 1/15 of the run once they have this many
# points; the raw values stay visible behind it.
SMOOTH_MIN_POINTS = 30
SMOOTH_RUN_FRACTION = 1 / 15
# Up to this many steps each point gets a marker (a run of one step still shows it) and the
# stacked step time is one bar per step; beyond it, lines and a stacked area.
MARKER_MAX_POINTS = 40

# Up to this many steps every step gets its tick (the integer locator would show 0.6, 0.8, ...
# around a single step).
LABEL_EVERY_STEP_MAX = 12


@dataclass(frozen=True)
class PlotSpec:
    filename: str
    title: str
    ylabel: str
    series: tuple[tuple[str, str], ...]
    """(metrics.jsonl key, legend label) of each line, or each layer when stacked."""
    stacked: bool = False
    unit_interval: bool = False
    """The values are fractions in [0, 1]: the y axis shows all of it."""
    from_zero: bool = False
    """The values are counts or sizes: the y axis starts at 0, so changes are not magnified."""


PLOTS = (
    PlotSpec(
        "reward.png", "Reward", "mean reward of the step's samples", (("reward_mean", "reward"),)
    ),
    PlotSpec(
        "accuracy.png",
        "Accuracy",
        "fraction of samples correct",
        (("accuracy", "accuracy"),),
        unit_interval=True,
    ),
    PlotSpec(
        "tool_calls.png",
        "Tool calls per episode",
        "mean tool calls per episode",
        (("tool_calls_mean", "tool calls"),),
        from_zero=True,
    ),
    PlotSpec(
        "entropy.png",
        "Policy entropy",
        "mean token entropy (nats)",
        (("entropy", "entropy"),),
        from_zero=True,
    ),
    PlotSpec(
        "response_length.png",
        "Response length",
        "tokens per response",
        (
            ("response_length_mean", "mean of the step's responses"),
            ("response_length_max", "longest response of the step"),
        ),
        from_zero=True,
    ),
    PlotSpec(
        "clip_fraction.png",
        "Clipped token fraction",
        "fraction of loss tokens clipped",
        (
            ("clip_frac_low", "low side (ratio < 1 − ε_low)"),
            ("clip_frac_high", "high side (ratio > 1 + ε_high)"),
        ),
        from_zero=True,
    ),
    PlotSpec(
        "step_time.png",
        "Step time by part",
        "seconds per step",
        (
            ("time_waiting_s", "waiting for groups"),
            ("time_training_s", "training"),
            ("time_weight_sync_s", "weight sync"),
        ),
        stacked=True,
    ),
)


def series_values(records: list[dict[str, Any]], key: str) -> list[float]:
    """The key's value per record as floats; NaN where null, missing or not a number."""
    values = []
    for record in records:
        value = record.get(key)
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        values.append(float(value) if numeric else math.nan)
    return values


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values, NaNs ignored (NaN where all are)."""
    out = []
    for index in range(len(values)):
        recent = [v for v in values[max(0, index - window + 1) : index + 1] if not math.isnan(v)]
        out.append(sum(recent) / len(recent) if recent else math.nan)
    return out


def draw(spec: PlotSpec, steps: list[int], columns: dict[str, list[float]], path: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=FIGURE_SIZE_IN, dpi=FIGURE_DPI, layout="constrained")
    axes = figure.add_subplot()
    present = [(key, label) for key, label in spec.series if key in columns]
    smoothed = not spec.stacked and len(steps) >= SMOOTH_MIN_POINTS
    window = max(2, round(len(steps) * SMOOTH_RUN_FRACTION))
    if spec.stacked and len(steps) <= MARKER_MAX_POINTS:  # few steps: one stacked bar each
        bottom = [0.0] * len(steps)
        for (key, label), color in zip(present, _colors(), strict=False):
            layer = [0.0 if math.isnan(v) else v for v in columns[key]]
            axes.bar(steps, layer, bottom=bottom, label=label, color=color, width=0.8)
            bottom = [b + v for b, v in zip(bottom, layer, strict=True)]
    elif spec.stacked:
        layers = [[0.0 if math.isnan(v) else v for v in columns[key]] for key, _ in present]
        axes.stackplot(
            steps,
            *layers,
            labels=[label for _, label in present],
            colors=_colors()[: len(layers)],
            alpha=0.85,
        )
        axes.set_ylim(bottom=0)
    else:
        marker = "o" if len(steps) <= MARKER_MAX_POINTS else None
        for (key, label), color in zip(present, _colors(), strict=False):
            values = columns[key]
            if smoothed:
                axes.plot(steps, values, color=color, alpha=0.3, linewidth=1)
                axes.plot(
                    steps, moving_average(values, window), color=color, linewidth=2, label=label
                )
            else:
                axes.plot(
                    steps,
                    values,
                    color=color,
                    linewidth=2,
                    marker=marker,
                    markersize=4,
                    label=label,
                )
        if spec.unit_interval:
            axes.set_ylim(-0.02, 1.02)
        elif spec.from_zero:
            axes.set_ylim(bottom=0)
    axes.set_title(spec.title, fontsize=14, fontweight="bold")
    axes.set_xlabel(
        "optimizer step"
        + (f"   (faint: each step; bold: mean of the last {window} steps)" if smoothed else "")
    )
    axes.set_ylabel(spec.ylabel)
    if len(steps) <= LABEL_EVERY_STEP_MAX:
        axes.set_xticks(steps)
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    if spec.stacked:  # above the stack, in stacking order, with headroom so nothing is hidden
        axes.set_ylim(top=axes.get_ylim()[1] * 1.25)
        axes.legend(loc="upper center", ncols=len(present), frameon=False)
    elif len(present) > 1:
        axes.legend(loc="best", frameon=True, framealpha=0.9)
    figure.savefig(path, format="png")


def _colors() -> list[str]:
    return [f"C{index}" for index in range(10)]


def write_plots(records: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """Draw every PLOTS figure that has data into out_dir; {filename: path} in PLOTS order."""
    steps = [record["step"] for record in records]
    written = {}
    for spec in PLOTS:
        columns = {}
        for key, _ in spec.series:
            values = series_values(records, key)
            if not all(math.isnan(v) for v in values):
                columns[key] = values
        if columns:
            path = out_dir / spec.filename
            draw(spec, steps, columns, path)
            written[spec.filename] = path
    return written
