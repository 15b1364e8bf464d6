"""`agentrl eval` end to end: real `vllm serve` (CPU, tiny local model, one server for the
module), the real sandbox and reward services in this process (free ports), no Redis.

- `run_eval` on a 3-prompt data set (2 math, 1 qa), k = 2: 3 groups of 2 scored samples, a
  JSON report with per-task-type counts, every rate in [0, 1], and avg@k / pass@k equal to
  what the returned groups' VERDICT_CORRECT samples give.
- `agentrl eval` (the typer app) writes the same kind of report and prints the table.
- A search task is evaluated with the search tool the rollout worker has (the real search service
  over a generated world): the calls come back OK with passages, none counted as a tool error.

The random tiny model never writes a tool call by itself, so `run_eval` constrains it with a
vLLM structured-outputs regex (a python call or an answer, as in test_rollout_worker.py)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from agentrl.common.agent.group import response_length_tokens
from agentrl.common.config import AgentRLConfig, SearchConfig
from agentrl.common.models import default_corpus, init_tiny_model
from agentrl.proto.core.v1 import group_pb2, trajectory_pb2
from agentrl.search.indexer import build_index
from agentrl.search.main import start_search_service
from agentrl.search.qa_questions import make_qa_world
from agentrl.trainer.cli import eval_app
from agentrl.trainer.eval_job import run_eval

pytestmark = pytest.mark.slow
CALL_REGEX = r"<code>\nprint\(6 \* 7\)\n</code>"
REGEX = rf"({CALL_REGEX}|The answer is <answer>42</answer>)"
# Short episodes: at most 3 turns of 48 tokens and one executed tool call.
SAMPLING = {"temperature": 1.0, "max_tokens_per_turn": 48}
LIMITS = {
    "max_turns": 3,
    "max_tool_calls": 1,
    "max_total_tokens": 1000,
    "max_tool_output_tokens": 32,
}
ROWS = [
    {
        "id": "m1",
        "prompt": "What is 6 * 7?",
        "ground_truth": "42",
        "task_type": "math",
        "tools": ["python"],
    },
    {
        "id": "m2",
        "prompt": "What is 3 + 4?",
        "ground_truth": "7",
        "task_type": "math",
        "tools": ["python"],
    },
    {
        "id": "q1",
        "prompt": "The answer to everything?",
        "ground_truth": "42",
        "task_type": "qa",
        "tools": ["python"],
    },
]
K = 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_tiny_model(tmp_path_factory.mktemp("model"), default_corpus(500), seed=3)


@pytest.fixture
def config_data(server, services, model_dir, tmp_path) -> tuple[dict, Path]:
    data_path = tmp_path / "eval.jsonl"
    data_path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    config = {
        "run": {"run_id": "test-eval", "output_dir": str(tmp_path / "run")},
        "sandbox": {"address": services[0]},
        "reward": {"address": services[1]},
        "inference": {
            "urls": [server.url],
            "request_timeout_s": 120.0,
            "server": {"model_path": str(model_dir)},
        },
        "rollout": {"max_concurrent_episodes": 16},
    }
    return config, data_path


def test_run_eval_reports_per_task_type_metrics_matching_the_groups(config_data, tmp_path) -> None:
    raw, data_path = config_data
    out = tmp_path / "out" / "eval.json"
    result = run_eval(
        AgentRLConfig.model_validate(raw),
        data_path,
        K,
        out,
        extra_sampling={"structured_outputs": {"regex": REGEX}},
        sampling=SAMPLING,
        limits=LIMITS,
    )
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(result.report))
    groups = result.groups
    assert [g.task.prompt_id for g in groups] == ["m1", "m2", "q1"]
    assert all(len(g.samples) == K and g.task.num_samples == K for g in groups)
    assert all(s.result.verdict != group_pb2.VERDICT_UNSPECIFIED for g in groups for s in g.samples)

    assert report["k"] == K and report["num_prompts"] == 3
    by_type = report["by_task_type"]
    assert sorted(by_type) == ["math", "qa"]
    counts = {name: (m["num_prompts"], m["num_samples"]) for name, m in by_type.items()}
    assert counts == {"math": (2, 4), "qa": (1, 2)}
    assert (report["overall"]["num_prompts"], report["overall"]["num_samples"]) == (3, 6)
    for metrics in [*by_type.values(), report["overall"]]:
        for name in ("avg_at_k", "pass_at_k"):
            assert 0.0 <= metrics[name] <= 1.0, (name, metrics)
        assert metrics["pass_at_k"] >= metrics["avg_at_k"]  # pass@k >= pass@1 per prompt

    # Recompute from the protos: avg@k is the fraction of VERDICT_CORRECT samples.
    def correct(g: group_pb2.Group) -> int:
        return sum(s.result.verdict == group_pb2.VERDICT_CORRECT for s in g.samples)

    num_correct = sum(correct(g) for g in groups)
    assert report["overall"]["num_correct"] == num_correct
    assert report["overall"]["avg_at_k"] == pytest.approx(num_correct / (3 * K))
    math_groups = [g for g in groups if g.task.task_type == "math"]
    assert by_type["math"]["avg_at_k"] == pytest.approx(sum(map(correct, math_groups)) / 4)
    expected_pass = sum(1 - math.comb(K - correct(g), K) / math.comb(K, K) for g in groups) / 3
    assert report["overall"]["pass_at_k"] == pytest.approx(expected_pass)
    lengths = [response_length_tokens(s.trajectory) for g in groups for s in g.samples]
    assert report["overall"]["mean_response_length_tokens"] == pytest.approx(sum(lengths) / 6)
    assert all(length > 0 for length in lengths)
    # The tool ran: a python call's output came back in some sample.
    calls = [
        t.tool_call
        for g in groups
        for s in g.samples
        for t in s.trajectory.turns
        if t.tool_call.tool
    ]
    assert all(c.output == "42\n" for c in calls if c.output)
    assert [len(g["samples"]) for g in report["groups"]] == [K, K, K]
    # The regex allows only the answer 42: m2 (7) is never solved, so pass@k counts it as 0.
    assert correct(groups[1]) == 0 and report["groups"][1]["num_correct"] == 0


def test_eval_cli_writes_the_report_and_prints_the_table(config_data, tmp_path) -> None:
    raw, data_path = config_data
    # Free sampling (no regex through the CLI): one turn per episode, no tool call executed.
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = tmp_path / "cli.json"
    outcome = CliRunner().invoke(
        eval_app,
        [
            "--recipe",
            str(recipe),
            "--data",
            str(data_path),
            "-k",
            "2",
            "--out",
            str(out),
            "--max-turns",
            "1",
            "--max-tool-calls",
            "0",
        ],
    )
    assert outcome.exit_code == 0, outcome.output
    report = json.loads(out.read_text())
    assert report["overall"]["num_samples"] == 6
    assert sorted(report["by_task_type"]) == ["math", "qa"]
    assert "pass@2" in outcome.output and "overall" in outcome.output


@pytest.fixture(scope="module")
def search_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real search service over a small generated world (BM25)."""
    world = tmp_path_factory.mktemp("world")
    make_qa_world(world, seed=2, num_passages=200, num_questions=10)
    build_index(world / "corpus.jsonl", world / "index", progress=False)
    service = start_search_service(
        SearchConfig(grpc_port=0, http_port=0, index_dir=world / "index", default_top_k=1),
        registry=CollectorRegistry(),
        token=None,
    )
    yield service.grpc_address
    service.stop(0)


def test_search_tasks_are_evaluated_with_the_search_tool(
    config_data, search_address, tmp_path
) -> None:
    raw, _ = config_data
    raw = {
        **raw,
        "search": {"address": search_address},
        "rollout": {**raw["rollout"], "tool_format": "search_tags"},
    }
    data_path = tmp_path / "search.jsonl"
    data_path.write_text(
        json.dumps(
            {
                "id": "s1",
                "prompt": "Who won the regatta?",
                "ground_truth": '{"answers": ["nobody"]}',
                "task_type": "qa",
                "tools": ["search"],
            }
        )
        + "\n"
    )
    call = r"<search>Who won the regatta\?</search>"
    result = run_eval(
        AgentRLConfig.model_validate(raw),
        data_path,
        K,
        tmp_path / "eval.json",
        extra_sampling={"structured_outputs": {"regex": call}},
        sampling=SAMPLING,
        limits={**LIMITS, "max_tool_output_tokens": 200},
    )
    calls = [s.trajectory.turns[0].tool_call for s in result.groups[0].samples]
    for c in calls:  # each sample's first call ran (its second is past the call budget)
        assert (c.tool, c.arguments) == ("search", "Who won the regatta?")
        assert c.status == trajectory_pb2.TOOL_CALL_STATUS_OK, c.output
        assert c.output.startswith("Doc 1(Title: ")
    overall = result.report["overall"]
    assert overall["num_tool_errors"] == 0
    assert [s["num_tool_errors"] for s in result.report["groups"][0]["samples"]] == [0] * K
