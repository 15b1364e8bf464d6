"""Step metrics: JSONL records in the run directory and the Prometheus gauges."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from agentrl.trainer.metrics import StepMetricsWriter, read_step_metrics


def test_records_go_to_the_file_and_the_gauges(tmp_path):
    registry = CollectorRegistry()
    with StepMetricsWriter(tmp_path, registry=registry) as writer:
        writer.write(1, {"loss": 0.5, "grad_norm": float("nan"), "phase": "training"})
        writer.write(2, {"loss": 0.25, "clip_frac_high": 0.1})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["step"] == 1 and first["grad_norm"] is None and first["phase"] == "training"
    assert [r["loss"] for r in read_step_metrics(tmp_path)] == [0.5, 0.25]
    value = registry.get_sample_value
    assert value("agentrl_trainer_step_index") == 2
    assert value("agentrl_trainer_step_metric_value", {"metric": "loss"}) == 0.25
    assert value("agentrl_trainer_step_metric_value", {"metric": "clip_frac_high"}) == 0.1
    assert value("agentrl_trainer_step_metric_value", {"metric": "phase"}) is None


def test_a_resumed_run_appends_and_a_torn_line_is_skipped(tmp_path):
    with StepMetricsWriter(tmp_path, registry=CollectorRegistry()) as writer:
        writer.write(1, {"loss": 1.0})
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 2, "lo')  # killed mid-write
    with StepMetricsWriter(tmp_path, registry=CollectorRegistry()) as writer:
        writer.write(2, {"loss": 0.5})
        with pytest.raises(ValueError, match="reserved"):
            writer.write(3, {"step": 3})
    assert [(r["step"], r["loss"]) for r in read_step_metrics(tmp_path)] == [(1, 1.0), (2, 0.5)]
