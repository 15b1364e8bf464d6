"""benchmarks/quickstart_seeds.py's bookkeeping on hand-made run directories: one seed's row
(goal, pass@k held, collapse warnings, best step), the median and range over seeds, and which
tool service `--up` starts for each quickstart recipe."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from agentrl.common.config import load_config

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def seeds():
    spec = importlib.util.spec_from_file_location(
        "quickstart_seeds", REPO / "benchmarks" / "quickstart_seeds.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluation(avg: float, passes: float, tool_calls: list[int]) -> dict:
    samples = [{"num_tool_calls": n} for n in tool_calls]
    return {
        "k": 4,
        "overall": {"avg_at_k": avg, "pass_at_k": passes},
        "groups": [{"samples": samples}],
    }


def write_run(run_dir: Path, before: dict, after: dict, warnings_at: tuple[int, ...] = ()) -> Path:
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "eval" / "before.json").write_text(json.dumps(before))
    (run_dir / "eval" / "after.json").write_text(json.dumps(after))
    records = [
        {"step": step, "collapse_warning": int(step in warnings_at)} for step in range(1, 21)
    ]
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (run_dir / "best").mkdir()
    (run_dir / "best" / "best.json").write_text(
        json.dumps({"step": 20, "eval_avg_at_k": after["overall"]["avg_at_k"]})
    )
    return run_dir


def test_a_seed_that_meets_every_bar(seeds, tmp_path: Path) -> None:
    run = write_run(
        tmp_path / "seed_0",
        evaluation(0.41, 0.91, [0, 1, 0, 0]),
        evaluation(0.95, 0.99, [1, 1, 1, 1]),
    )
    row = seeds.seed_row(0, run, wall_s=300.0, load_avg=6.5)
    assert row["avg_at_k_gain"] == pytest.approx(0.54)
    assert (row["goal_met"], row["pass_at_k_held"], row["collapse_warning_steps"]) == (
        True,
        True,
        [],
    )
    assert (row["tool_calls_before"], row["tool_calls_after"]) == (0.25, 1.0)
    assert (row["best_step"], row["steps"], row["load_avg"]) == (20, 20, 6.5)
    assert "goal met" in seeds.describe_row(row) and "load 6.5" in seeds.describe_row(row)


def test_the_issue_17_run_fails_each_bar(seeds, tmp_path: Path) -> None:
    # 0.410 -> 0.623 (+0.213 < 0.30), pass@4 0.910 -> 0.670, warnings at the collapse.
    run = write_run(
        tmp_path / "seed_1",
        evaluation(0.41, 0.91, [0, 1]),
        evaluation(0.623, 0.67, [1, 2]),
        warnings_at=(19, 20),
    )
    row = seeds.seed_row(1, run, wall_s=400.0)
    assert (row["goal_met"], row["pass_at_k_held"]) == (False, False)
    assert row["collapse_warning_steps"] == [19, 20]
    line = seeds.describe_row(row)
    assert "NOT met" in line and "(FELL)" in line and "at [19, 20]" in line and "load" not in line


def test_median_and_range_over_seeds(seeds, tmp_path: Path) -> None:
    rows = []
    for seed, (after, load) in enumerate([(0.95, 4.0), (0.62, 8.0), (0.90, 6.0)]):
        run = write_run(
            tmp_path / f"seed_{seed}", evaluation(0.40, 0.9, [0]), evaluation(after, 0.95, [1])
        )
        rows.append(seeds.seed_row(seed, run, wall_s=100.0 * (seed + 1), load_avg=load))
    result = seeds.summary(rows)
    assert result["figures"]["avg_at_k_after"] == {"median": 0.90, "min": 0.62, "max": 0.95}
    assert result["figures"]["load_avg"] == {"median": 6.0, "min": 4.0, "max": 8.0}
    assert (result["goal_met"], result["pass_at_k_held"], result["num_seeds"]) == (2, 3, 3)
    lines = seeds.describe_summary(result, k=4)
    assert lines[-1].startswith("goal (+0.30) met by 2/3 seeds")


def test_the_stack_carries_the_recipes_tool_service(seeds) -> None:
    assert seeds.stack_services(load_config(REPO / "recipes/quickstart.yaml")) == (
        "vllm,sandbox,reward,rollout"
    )
    assert seeds.stack_services(load_config(REPO / "recipes/quickstart_search.yaml")) == (
        "vllm,search,reward,rollout"
    )
