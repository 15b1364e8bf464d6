"""The reduced quickstart with `trainer.backend: megatron`, through the CLI a user runs: the
calculator data (its SFT tool calls executed by the sandbox), a tiny model, SFT with the Megatron
backend, `agentrl up` (vLLM on CPU, sandbox, reward, rollout worker; Redis the machine's), then
`agentrl train` at tensor parallel 1 for 2 steps, then `agentrl train --nproc-per-node 2` at
tensor parallel 2 (two gloo ranks under torchrun) resuming the TP 1 checkpoint to step 4.

Checked after each `train`: the steps are in metrics.jsonl with finite losses and metrics and a
non-zero gradient; the weights reached vLLM (its version label is the last step's, and the drift
check after every sync found vLLM's log-probs equal to the trainer's); the checkpoints say which
layout wrote them. Not covered: evaluation and the report (backend-independent; test_quickstart)
and anything of the stack beyond what `train` uses.

One vLLM server and at most two training ranks at a time; ~5-8 min on 2 busy cores.
"""

from __future__ import annotations

import json
import math
import os
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from loop_helpers import AGENTRL, REPO, launch, stack_ports

pytest.importorskip("megatron.core", reason="megatron-core is not installed")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

REDIS_URL = "redis://127.0.0.1:6379/0"  # the machine's, as the quickstart uses it
TP1_STEPS, TP2_STEPS = 2, 4
# vLLM's log-probs against the trainer's after each sync: equal weights give ~1e-6 in float32;
# a step not synced would differ by ~1e-2 (test_megatron_vllm.py sees the check fire).
DRIFT_TOLERANCE = 1e-3
DATA_SIZES = ["--num-train", "64", "--num-eval", "6", "--num-sft", "200"]  # test_quickstart's


def agentrl(*args: str, timeout_s: float = 600):
    return launch([*AGENTRL, *args], timeout_s)


def reduced(root: Path) -> dict:
    """recipes/quickstart.yaml with this run's paths and free ports, sized down (2 groups of 4
    per step, 20 SFT steps, an entropy bonus) and without evaluation, at `trainer.backend:
    megatron`."""
    config = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text())
    del config["data"]["eval_path"]
    sizes = {
        "run": {"run_id": f"qs-megatron-{os.getpid()}", "output_dir": str(root / "run")},
        "model": {"path": str(root / "run" / "sft")},
        "data": {"train_path": str(root / "data" / "train.jsonl")},
        "redis": {"url": REDIS_URL, "visibility_timeout_s": 10},
        "inference": {"server": {"max_model_len": 512, "max_num_seqs": 32}},
        "rollout": {"max_concurrent_episodes": 16, "shutdown_grace_s": 5},
        "trainer": {
            "backend": "megatron",
            "megatron": {"tensor_parallel_size": 1},
            "batch_size": 2,
            "total_steps": TP1_STEPS,
            "checkpoint_interval_steps": 1,
        },
        # A tiny model 20 SFT steps in often gets every sample of a batch wrong (no advantage,
        # no gradient: seen at TP 2); the entropy bonus moves the weights at every step, so each
        # sync's drift check compares vLLM with weights it has not served before.
        "algorithm": {"group_size": 4, "entropy_coef": 0.01},
        "sft": {
            "train_path": str(root / "data" / "sft.jsonl"),
            "output_dir": str(root / "run" / "sft"),
            "max_steps": 20,
            "batch_size": 16,
        },
    }
    return merged(merged(config, sizes), stack_ports())


def merged(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` laid over it, key by key at every depth."""
    out = dict(base)
    for key, value in overrides.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if nested else value
    return out


@pytest.fixture(scope="module")
def recipes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same run at TP 1 and at TP 2 (the same stack)."""
    root = tmp_path_factory.mktemp("megatron-quickstart")
    config = reduced(root)
    tp1, tp2 = root / "tp1.yaml", root / "tp2.yaml"
    tp1.write_text(yaml.safe_dump(config))
    config["trainer"]["megatron"]["tensor_parallel_size"] = 2
    tp2.write_text(yaml.safe_dump(config))
    return tp1, tp2


@pytest.fixture(scope="module")
def stack(recipes):
    """The quickstart's steps up to RL (scripts/quickstart.sh's), leaving the stack up."""
    recipe = str(recipes[0])
    config = yaml.safe_load(recipes[0].read_text())
    data_dir = Path(config["data"]["train_path"]).parent
    run_dir = Path(config["run"]["output_dir"])
    try:
        agentrl("up", "--recipe", recipe, "--services", "sandbox")
        agentrl("data", "make-calculator", "--recipe", recipe, "--out", str(data_dir), *DATA_SIZES)
        agentrl("down", "--recipe", recipe)
        init = [
            "--preset",
            "tiny",
            "--out",
            str(run_dir / "init"),
            "--data",
            str(data_dir / "sft.jsonl"),
        ]
        agentrl("model", "init", *init)
        agentrl("sft", "--recipe", recipe, "--model", str(run_dir / "init"), "--log-every", "10")
        agentrl("up", "--recipe", recipe, "--services", "vllm,sandbox,reward,rollout")
        yield config
    finally:
        launch([*AGENTRL, "down", "--recipe", recipe], timeout_s=300, check=False)


def served_version(config: dict) -> int:
    """The weight version vLLM itself reports (0: the checkpoint it started with)."""
    from agentrl.common.inference.pool import parse_version

    url = config["inference"]["urls"][0] + "/weight_info"
    with urllib.request.urlopen(url, timeout=30) as response:
        return parse_version(json.loads(response.read())["weight_version"])


def step_records(config: dict) -> list[dict]:
    lines = (Path(config["run"]["output_dir"]) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def assert_trained_and_served(config: dict, records: list[dict]) -> None:
    for record in records:
        floats = {k: v for k, v in record.items() if isinstance(v, float)}
        assert all(math.isfinite(v) for v in floats.values()), floats
        assert record["grad_norm"] > 0 and record["entropy"] > 0, record
        assert record["logprob_drift_max"] < DRIFT_TOLERANCE, record
        assert record["policy_version"] == record["step"]
    assert served_version(config) == records[-1]["step"]


def checkpoint_layout(config: dict, step: int) -> dict:
    path = Path(config["run"]["output_dir"]) / "checkpoints" / f"step_{step:08d}" / "backend.pt"
    return torch.load(path, weights_only=False)["layout"]


def test_train_at_tp_1_through_the_stack(recipes, stack) -> None:
    before = served_version(stack)
    result = agentrl("train", "--recipe", str(recipes[0]))
    assert f"training done: {TP1_STEPS} steps" in result.stdout, result.stdout[-3000:]
    records = step_records(stack)
    print([{k: r[k] for k in ("step", "loss", "grad_norm", "logprob_drift_max")} for r in records])
    assert [r["step"] for r in records] == list(range(1, TP1_STEPS + 1))
    assert before == 0  # the SFT checkpoint vLLM started with
    assert_trained_and_served(stack, records)
    assert checkpoint_layout(stack, TP1_STEPS) == {"tp": 1, "pp": 1}


def test_train_at_tp_2_on_two_ranks_resumes_the_tp_1_run(recipes, stack) -> None:
    result = agentrl(
        "train", "--recipe", str(recipes[1]), "--nproc-per-node", "2", "--max-steps", str(TP2_STEPS)
    )
    # Rank 0 alone prints and writes; the run resumed at step TP1_STEPS + 1.
    assert result.stdout.count(f"training done: {TP2_STEPS} steps") == 1, result.stdout[-3000:]
    records = step_records(stack)
    print([{k: r[k] for k in ("step", "loss", "grad_norm", "logprob_drift_max")} for r in records])
    assert [r["step"] for r in records] == list(range(1, TP2_STEPS + 1))
    assert_trained_and_served(stack, records)
    assert checkpoint_layout(stack, TP1_STEPS) == {"tp": 1, "pp": 1}
    assert checkpoint_layout(stack, TP2_STEPS) == {"tp": 2, "pp": 1}
