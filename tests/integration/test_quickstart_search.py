"""The search quickstart, reduced: `scripts/quickstart_search.sh` on a small world and recipe
through the real local stack (Redis, vLLM on CPU, search, reward, rollout worker).

Checked: the job completes and writes the task, metrics, evaluations before and after, samples
and the report; the SFT searches really ran (their observations are the world's passages) and
the eval questions are about entities no training row names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agentrl.common.inference.launcher import free_port

# The whole job (data, SFT, vLLM start, RL, report) takes 3-6 minutes on 2 busy cores.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1000)]

REPO = Path(__file__).resolve().parents[2]
AGENTRL = [sys.executable, "-m", "agentrl.common.cli"]
NUM_STEPS, NUM_EVAL = 2, 4


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("quickstart-search")
    ports = iter(free_port() for _ in range(9))
    data = root / "data"
    config = {
        "run": {
            "run_id": f"qs-search-test-{os.getpid()}",
            "output_dir": str(root / "run"),
            "seed": 0,
        },
        "model": {"path": str(root / "run" / "sft")},
        "data": {"train_path": str(data / "train.jsonl"), "eval_path": str(data / "eval.jsonl")},
        "redis": {"url": "redis://127.0.0.1:6379/0", "visibility_timeout_s": 10},
        "sandbox": {"grpc_port": next(ports), "http_port": next(ports)},
        "reward": {"grpc_port": next(ports), "http_port": next(ports), "num_verifier_workers": 1},
        "search": {
            "grpc_port": next(ports),
            "http_port": next(ports),
            "index_dir": str(data / "index"),
            "default_top_k": 1,
            "search_threads": 1,
        },
        "inference": {
            "urls": [f"http://127.0.0.1:{next(ports)}"],
            "server": {"max_model_len": 512, "max_num_seqs": 32},
        },
        "rollout": {
            "grpc_port": next(ports),
            "http_port": next(ports),
            "tool_format": "search_tags",
            "max_concurrent_episodes": 16,
            "shutdown_grace_s": 5,
            "max_turns": 3,
            "max_tokens_per_turn": 48,
        },
        "trainer": {
            "batch_size": 2,
            "max_staleness": 1,
            "total_steps": NUM_STEPS,
            "checkpoint_interval_steps": 1,
            "eval_samples_per_prompt": 1,
        },
        "algorithm": {"group_size": 4, "learning_rate": 5e-4},
        "sft": {
            "train_path": str(data / "sft.jsonl"),
            "output_dir": str(root / "run" / "sft"),
            "max_steps": 20,
            "batch_size": 16,
            "learning_rate": 3e-3,
        },
    }
    path = root / "quickstart-search-test.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def load(recipe: Path) -> dict:
    return yaml.safe_load(recipe.read_text())


@pytest.fixture(scope="module")
def run(recipe: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "QUICKSTART_RECIPE": str(recipe),
        "QUICKSTART_WORLD_ARGS": "--num-passages 400 --num-questions 20",
        "QUICKSTART_DATA_ARGS": f"--num-train 16 --num-eval {NUM_EVAL} --num-sft 100 "
        "--num-sft-entities 40",
    }
    result = subprocess.run(
        ["bash", "scripts/quickstart_search.sh"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    yield result
    subprocess.run(
        [*AGENTRL, "down", "--recipe", str(recipe)],
        cwd=REPO,
        capture_output=True,
        timeout=300,
        check=False,
    )


def test_reduced_search_quickstart_completes_and_reports(recipe: Path, run) -> None:
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    run_dir = Path(load(recipe)["run"]["output_dir"])
    steps = [
        json.loads(line)["step"]
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    assert steps == list(range(1, NUM_STEPS + 1))
    for name in ("before", "after"):
        report = json.loads((run_dir / "eval" / f"{name}.json").read_text())
        assert report["num_prompts"] == NUM_EVAL and report["k"] == 1
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == set(range(1, NUM_STEPS + 1))
    assert (run_dir / "report" / "report.html").is_file()
    assert len(list((run_dir / "report").glob("*.png"))) >= 5
    assert "held-out accuracy" in run.stdout and "tool calls per episode" in run.stdout


def test_sft_searches_ran_on_the_world_and_eval_is_held_out(recipe: Path, run) -> None:
    assert run.returncode == 0
    data = Path(load(recipe)["data"]["train_path"]).parent
    titles = {
        json.loads(line)["title"]
        for line in (data / "world" / "corpus.jsonl").read_text().splitlines()
    }
    searched = [
        json.loads(line)["messages"]
        for line in (data / "sft.jsonl").read_text().splitlines()
        if json.loads(line)["tool_calls"]
    ]
    assert searched
    for messages in searched:  # the observation is the search service's top passage
        observation = messages[2]["content"]
        assert any(observation.startswith(f"Doc 1(Title: {title}) ") for title in titles)
    rows = {
        name: [json.loads(line) for line in (data / f"{name}.jsonl").read_text().splitlines()]
        for name in ("train", "eval")
    }
    assert len(rows["eval"]) == NUM_EVAL
    assert not {r["entity_id"] for r in rows["train"]} & {r["entity_id"] for r in rows["eval"]}
