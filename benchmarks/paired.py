"""Paired rounds: how every benchmark here compares a path with its baseline.

A round runs the baseline and each measured path once, back to back; each round rotates the
order by one (two paths: alternating; three: every path in every position once per three
rounds), so a drift in machine load (other jobs, thermal, a noisy neighbour) and whatever a
position in the round brings (the engine idle before the first path, busy draining before the
others) hit every path alike. Each round gives one ratio per path (measured / baseline, both from the same round), and
a benchmark prints min / median / max of those ratios over the rounds, never one absolute
figure: on a shared machine absolute rates move by 2-5x between minutes, ratios far less.

    from paired import paired_rounds, ratio_line
    rates = paired_rounds(3, {"bare": run_bare, "queue": run_queue})  # name -> [value per round]
    print(ratio_line("queue / bare", rates["queue"], rates["bare"]))

Imported by path (`python benchmarks/x.py` puts this folder on sys.path): no package needed.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable


def round_order(names: list[str], round_index: int) -> list[str]:
    """The names rotated left by `round_index` (with two names: in order, then reversed)."""
    shift = round_index % len(names)
    return list(names[shift:]) + list(names[:shift])


def paired_rounds(
    num_rounds: int,
    paths: dict[str, Callable[[int], float]],
    on_result: Callable[[int, str, float], None] | None = None,
) -> dict[str, list[float]]:
    """Run every path once per round (rotating order); `path(round_index)` returns a value
    (a rate, or a cost such as CPU per request). Returns name -> one value per round."""
    if num_rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {num_rounds}")
    rates: dict[str, list[float]] = {name: [0.0] * num_rounds for name in paths}
    for r in range(num_rounds):
        for name in round_order(list(paths), r):
            rates[name][r] = paths[name](r)
            if on_result is not None:
                on_result(r, name, rates[name][r])
    return rates


def ratios(measured: list[float], baseline: list[float]) -> list[float]:
    """Per-round ratios measured[r] / baseline[r]."""
    return [m / b if b else float("nan") for m, b in zip(measured, baseline, strict=True)]


def spread(values: list[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


def ratio_line(label: str, measured: list[float], baseline: list[float], goal: str = "") -> str:
    """`label: min / median / max over N rounds (goal ...)`, with how many rounds were slower."""
    per_round = ratios(measured, baseline)
    low, mid, high = spread(per_round)
    slower = sum(1 for x in per_round if x < 1.0)
    text = (
        f"{label}: {low:.2f} / {mid:.2f} / {high:.2f} (min / median / max over "
        f"{len(per_round)} rounds; below 1 in {slower})"
    )
    return f"{text}; goal {goal}" if goal else text
