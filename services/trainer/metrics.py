"""Per-step trainer metrics: one JSONL record per step in the run directory, and Prometheus.

`StepMetricsWriter.write(step, metrics)` appends `{"step", "time_unix_s", **metrics}` to
`<run dir>/metrics.jsonl` (flushed every step, so a killed run keeps every finished step;
non-finite numbers are written as null, which every JSON reader accepts) and sets

    agentrl_trainer_step_index                    the latest step
    agentrl_trainer_step_metric_value{metric=..}  each metric of the latest step

Names of metrics are free-form (`loss`, `grad_norm`, `clip_frac_low`, `time_training_s`...):
one labelled gauge keeps dashboards working when a loss knob adds a metric. Reading the file
back is `read_step_metrics` (reports, plots, resume checks).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Self

from prometheus_client import CollectorRegistry

from agentrl.common import metrics

METRICS_FILE = "metrics.jsonl"


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class StepMetricsWriter:
    """Appends step records to `<run_dir>/metrics.jsonl` and mirrors them as gauges."""

    def __init__(
        self,
        run_dir: str | Path,
        registry: CollectorRegistry | None = None,
        filename: str = METRICS_FILE,
    ) -> None:
        self.path = Path(run_dir) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = (
            self.path.exists()
            and self.path.stat().st_size > 0
            and not self.path.read_bytes().endswith(b"\n")
        )
        self._file = self.path.open("a")  # append: a resumed run continues the same file
        if torn:  # a kill mid-write left half a line: start on a fresh one
            self._file.write("\n")
        self._step = metrics.gauge(
            "trainer", "step", "index", "Latest optimizer step written", registry=registry
        )
        self._values = metrics.gauge(
            "trainer",
            "step_metric",
            "value",
            "Each metric of the latest optimizer step",
            ("metric",),
            registry=registry,
        )

    def write(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """Record `metrics` of `step`; numbers become gauges, every value goes to the file."""
        if "step" in metrics or "time_unix_s" in metrics:
            raise ValueError("metrics may not be named 'step' or 'time_unix_s' (reserved)")
        record = {
            "step": step,
            "time_unix_s": time.time(),
            **{k: _finite_or_none(v) for k, v in metrics.items()},
        }
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        self._step.set(step)
        for name, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self._values.labels(metric=name).set(value)
        return record

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_step_metrics(run_dir: str | Path, filename: str = METRICS_FILE) -> list[dict[str, Any]]:
    """Every record of the run, in file order (a torn last line from a kill is skipped)."""
    path = Path(run_dir) / filename
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
