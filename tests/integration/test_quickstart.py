"""The main job, reduced: `scripts/quickstart.sh` on a small recipe through the real local stack
(Redis, vLLM on CPU, bubblewrap sandbox, reward, rollout worker), then a second `agentrl train`
that resumes from its checkpoint while the rollout worker and the sandbox are SIGKILLed.

Checked: the job completes and writes metrics (with the collapse detector's flags),
evaluations, samples, the report and the best evaluated weights (`best/`); every trajectory that
reached the trainer is self-consistent (lengths, masks, versions, turn spans); the resumed run
continues at the next step, the supervisor restarts the killed services, and every group is
consumed exactly once (none lost, none counted twice); and one python session per episode: on
the stack the job left running, an episode's second `<code>` call reads a variable its first
defined (with sessions off, the same episode gets a NameError).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import yaml

from agentrl.common.inference.launcher import free_port
from agentrl.common.run_layout import RunLayout

# The reduced job takes ~3 min alone; a loaded machine can take several times that.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
AGENTRL = [sys.executable, "-m", "agentrl.common.cli"]
REDIS_URL = "redis://127.0.0.1:6379/0"
FIRST_STEPS, RESUMED_STEPS = 2, 5


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("quickstart")
    ports = iter(free_port() for _ in range(7))
    run_id = f"qs-test-{os.getpid()}"
    config = {
        "run": {"run_id": run_id, "output_dir": str(root / "run"), "seed": 0},
        "model": {"path": str(root / "run" / "sft")},
        "data": {
            "train_path": str(root / "data" / "train.jsonl"),
            "eval_path": str(root / "data" / "eval.jsonl"),
        },
        "redis": {"url": REDIS_URL, "visibility_timeout_s": 10},
        "sandbox": {"grpc_port": next(ports), "http_port": next(ports), "max_concurrency": 4},
        "reward": {"grpc_port": next(ports), "http_port": next(ports), "num_verifier_workers": 1},
        "inference": {
            "urls": [f"http://127.0.0.1:{next(ports)}"],
            "server": {"max_model_len": 512, "max_num_seqs": 32},
        },
        "rollout": {
            "grpc_port": next(ports),
            "http_port": next(ports),
            "max_concurrent_episodes": 16,
            "shutdown_grace_s": 5,
        },
        "trainer": {
            "batch_size": 2,
            "max_staleness": 1,
            "total_steps": FIRST_STEPS,
            "checkpoint_interval_steps": 1,
            "eval_samples_per_prompt": 1,
            "eval_interval_steps": 4,
        },
        "algorithm": {"group_size": 4, "learning_rate": 5e-4},
        "sft": {
            "train_path": str(root / "data" / "sft.jsonl"),
            "output_dir": str(root / "run" / "sft"),
            "max_steps": 20,
            "batch_size": 16,
            "learning_rate": 3e-3,
        },
    }
    path = root / "quickstart-test.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def load(recipe: Path) -> dict:
    return yaml.safe_load(recipe.read_text())


def agentrl(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*AGENTRL, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def metric_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if line.strip()]


@pytest.fixture(scope="module")
def first_run(recipe: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "QUICKSTART_RECIPE": str(recipe),
        "QUICKSTART_DATA_ARGS": "--num-train 64 --num-eval 6 --num-sft 200",
    }
    result = subprocess.run(
        ["bash", "scripts/quickstart.sh"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    yield result
    agentrl("down", "--recipe", str(recipe))


def test_reduced_quickstart_completes_and_reports(recipe: Path, first_run) -> None:
    assert first_run.returncode == 0, first_run.stdout[-3000:] + first_run.stderr[-3000:]
    run_dir = Path(load(recipe)["run"]["output_dir"])
    assert metric_steps(run_dir) == list(range(1, FIRST_STEPS + 1))
    for name in ("before", "after"):
        report = json.loads((run_dir / "eval" / f"{name}.json").read_text())
        assert report["num_prompts"] == 6 and report["k"] == 1
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == set(range(1, FIRST_STEPS + 1))
    assert all(s["segments"] and s["segments"][0]["role"] == "model" for s in samples)
    assert (
        json.loads((run_dir / "config.json").read_text())["run"]["run_id"]
        == load(recipe)["run"]["run_id"]
    )
    html = (run_dir / "report" / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert len(list((run_dir / "report").glob("*.png"))) >= 5
    assert (run_dir / "checkpoints" / f"step_{FIRST_STEPS:08d}").is_dir()
    assert "held-out accuracy" in first_run.stdout
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("collapse_warning" in r and "collapse_low_entropy" in r for r in records)
    best = json.loads((run_dir / "best" / "best.json").read_text())
    assert best["step"] in (0, FIRST_STEPS) and (run_dir / "best" / "config.json").is_file()
    assert records[-1]["best_step"] == best["step"]


def test_every_consumed_trajectory_accounts_for_its_tokens(recipe: Path, first_run) -> None:
    from agentrl.proto.core.v1 import group_pb2, trajectory_pb2

    assert first_run.returncode == 0
    client = redis.Redis.from_url(REDIS_URL)
    entries = client.xrange(RunLayout(load(recipe)["run"]["run_id"]).groups)
    assert entries, "no group reached the groups stream"
    for _entry_id, fields in entries:
        group = group_pb2.Group.FromString(fields[b"data"])
        assert len(group.samples) == 4
        for scored in group.samples:
            t = scored.trajectory
            n = len(t.token_ids)
            assert n == len(t.loss_mask) == len(t.behaviour_logprobs) == len(t.policy_versions)
            assert not any(t.loss_mask[: t.prompt_length])
            observed = set()
            position = t.prompt_length
            for turn in t.turns:  # turns tile the response: model tokens, then tool output
                assert turn.response_start == position <= turn.response_end
                assert all(t.loss_mask[turn.response_start : turn.response_end])
                assert all(
                    v >= 0 for v in t.policy_versions[turn.response_start : turn.response_end]
                )
                assert all(
                    lp <= 0 for lp in t.behaviour_logprobs[turn.response_start : turn.response_end]
                )
                assert turn.observation_start == turn.response_end <= turn.observation_end
                observed.update(range(turn.observation_start, turn.observation_end))
                position = turn.observation_end
            assert position == n
            assert {i for i in range(t.prompt_length, n) if not t.loss_mask[i]} == observed
            # A call a limit refused (the last turn's, one past max_tool_calls) is recorded
            # with status UNSPECIFIED and never ran: it is not counted.
            ran = [
                turn
                for turn in t.turns
                if turn.HasField("tool_call")
                and turn.tool_call.status != trajectory_pb2.TOOL_CALL_STATUS_UNSPECIFIED
            ]
            assert t.num_tool_calls == len(ran)


def test_resume_survives_killed_worker_and_sandbox(recipe: Path, first_run) -> None:
    assert first_run.returncode == 0
    config = load(recipe)
    run_dir = Path(config["run"]["output_dir"])
    up = agentrl("up", "--recipe", str(recipe), "--services", "vllm,sandbox,reward,rollout")
    assert up.returncode == 0, up.stdout + up.stderr
    train = subprocess.Popen(
        [*AGENTRL, "train", "--recipe", str(recipe), "--max-steps", str(RESUMED_STEPS)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while metric_steps(run_dir)[-1] < FIRST_STEPS + 1 and time.monotonic() < deadline:
            assert train.poll() is None, train.stdout.read()
            time.sleep(0.5)
        stack = json.loads((run_dir / "stack.json").read_text())
        for name in ("rollout", "sandbox"):  # mid-run: episodes and tool calls in flight
            os.kill(stack["services"][name]["pid"], signal.SIGKILL)
        output, _ = train.communicate(timeout=600)
    finally:
        if train.poll() is None:
            train.kill()
    assert train.returncode == 0, output[-4000:]
    steps = metric_steps(run_dir)
    assert steps == list(range(1, RESUMED_STEPS + 1)), steps  # resumed at 3, no step twice
    # Evaluated mid-run at step 4 (trainer.eval_interval_steps) and after the last step.
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert json.loads((run_dir / "eval" / "step_00000004.json").read_text())["num_prompts"] == 6
    assert [r["step"] for r in records if "eval_avg_at_k" in r] == [FIRST_STEPS, 4, RESUMED_STEPS]
    restarted = json.loads((run_dir / "stack.json").read_text())["services"]
    assert restarted["rollout"]["restarts"] >= 1 and restarted["sandbox"]["restarts"] >= 1
    # Exactly once: every group the trainer used is done once, none is left pending.
    client = redis.Redis.from_url(REDIS_URL)
    groups = RunLayout(config["run"]["run_id"]).groups
    assert client.zcard(f"{groups}:trainer:done") == sum(r["groups_consumed"] for r in records)
    assert client.xpending(groups, "trainer")["pending"] == 0
    status = agentrl("status", "--recipe", str(recipe))
    assert status.returncode == 0, status.stdout  # every service serving again


class TurnByTurn:
    """The real vLLM pool, each turn constrained by the next regex (structured outputs): the
    tiny model never writes two calls by itself."""

    def __init__(self, pool, regexes: list[str]) -> None:
        self.pool, self.regexes, self.turn = pool, regexes, 0

    async def generate(self, trajectory_id, token_ids, sampling):
        regex = self.regexes[min(self.turn, len(self.regexes) - 1)]
        self.turn += 1
        constrained = {**sampling, "structured_outputs": {"regex": regex}}
        return await self.pool.generate(trajectory_id, token_ids, constrained)

    def release(self, trajectory_id) -> None:
        self.pool.release(trajectory_id)


def two_call_episode(config: dict, python_sessions: bool):
    import asyncio

    from transformers import AutoTokenizer

    from agentrl.common.agent.loop import AgentLoop, EpisodeSettings
    from agentrl.common.agent.tools import SandboxTool, ToolBox
    from agentrl.common.inference.pool import InferencePool
    from agentrl.sandbox.client import SandboxClient
    from agentrl.trainer.rendering import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(config["model"]["path"])
    text = render_prompt(
        [{"role": "user", "content": "What is 841 * 350?"}],
        tokenizer,
        "chat_template" if getattr(tokenizer, "chat_template", None) else "plain",
    )
    prompt = tokenizer(text, add_special_tokens=False).input_ids
    regexes = [
        r"<code>\nx = 841 \* 350\n</code>",
        r"<code>\nprint\(x\)\n</code>",
        r"<answer>294350</answer>",
    ]

    async def body():
        pool = InferencePool(config["inference"]["urls"], request_timeout_s=120)
        target = f"127.0.0.1:{config['sandbox']['grpc_port']}"
        try:
            with SandboxClient(target) as sandbox:
                tools = ToolBox({"python": SandboxTool(sandbox, 10.0, sessions=python_sessions)})
                loop = AgentLoop(TurnByTurn(pool, regexes), tokenizer, tools)
                settings = EpisodeSettings(sampling={"temperature": 1.0, "seed": 3})
                return await loop.run(prompt, settings, trajectory_id=f"session-{python_sessions}")
        finally:
            await pool.close()

    return asyncio.run(body())


def test_an_episodes_second_code_call_uses_a_variable_from_its_first(
    recipe: Path, first_run
) -> None:
    assert first_run.returncode == 0
    config = load(recipe)
    if agentrl("status", "--recipe", str(recipe)).returncode != 0:  # run alone: start it
        up = agentrl("up", "--recipe", str(recipe), "--services", "vllm,sandbox")
        assert up.returncode == 0, up.stdout + up.stderr
    traj = two_call_episode(config, python_sessions=True)
    first, second = traj.turns[0].tool_call, traj.turns[1].tool_call
    assert (first.arguments, first.output) == ("x = 841 * 350", "")
    assert second.arguments == "print(x)" and second.output == "294350\n"
    assert traj.response_text.endswith("<answer>294350</answer>")
    fresh = two_call_episode(config, python_sessions=False)  # every call a new interpreter
    assert "NameError" in fresh.turns[1].tool_call.output
