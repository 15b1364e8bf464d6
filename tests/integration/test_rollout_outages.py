"""Infrastructure failures are not episodes (issue #20 item 3), with the real services: a rollout
worker (the service's own `start`, in this process) whose vLLM server, sandbox and reward service are down at first
publishes nothing while they are; the task goes back to the queue after
`rollout.max_group_attempts`, is taken again, and once every service is up exactly one group,
made of real episodes, is published for it."""

from __future__ import annotations

import time
import uuid
from contextlib import ExitStack

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sandbox_service_helpers import sandbox_server
from transformers import AutoTokenizer

from agentrl.common.config import AgentRLConfig, InferenceServerConfig
from agentrl.common.inference.launcher import VLLMServer, free_port
from agentrl.common.models import default_corpus, init_tiny_model
from agentrl.common.run_layout import RunLayout
from agentrl.common.streams import StreamQueue
from agentrl.proto.core.v1 import group_pb2, task_pb2, trajectory_pb2
from agentrl.reward.main import start as start_reward
from agentrl.rollout import main as rollout_main

pytestmark = pytest.mark.slow

# Every turn is this python call: with sandbox down every episode meets the outage.
CALL_REGEX = r"<code>\nprint\(6 \* 7\)\n</code>"


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s} s")
        time.sleep(0.2)


def metric(url: str, name: str) -> float:
    try:
        text = httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return 0.0


def test_outages_are_retried_or_requeued_never_published(redis_url, tmp_path) -> None:
    model_dir = init_tiny_model(tmp_path / "model", default_corpus(500), seed=3)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    run_id = f"outages-{uuid.uuid4().hex[:8]}"
    vllm_port, sandbox_port, reward_port, http_port = (free_port() for _ in range(4))
    config = AgentRLConfig.model_validate(
        {
            "run": {"run_id": run_id},
            "redis": {"url": redis_url, "visibility_timeout_s": 6.0},
            "sandbox": {"grpc_port": sandbox_port, "http_port": 0, "reconnect_deadline_s": 1.0},
            "reward": {
                "grpc_port": reward_port,
                "http_port": 0,
                "reconnect_deadline_s": 1.0,
                "num_verifier_workers": 1,
            },
            "inference": {
                "urls": [f"http://127.0.0.1:{vllm_port}"],
                "request_timeout_s": 120.0,
                "reconnect_deadline_s": 1.0,
                "health_check_interval_s": 1.0,
                "server": {"model_path": str(model_dir)},
            },
            "rollout": {
                "grpc_port": free_port(),
                "http_port": http_port,
                "worker_id": "outage-worker",
                "max_group_attempts": 2,
            },
        }
    )
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 6 * 7?"}], add_generation_prompt=True, tokenize=False
    )
    task = task_pb2.RolloutTask(
        task_id="task-k1",
        idempotency_key="k1",
        prompt_id="p0",
        prompt_token_ids=tokenizer.encode(text, add_special_tokens=False),
        prompt_text=text,
        task_type="math",
        ground_truth="42",
        tools=["python"],
        tool_format="code_tags",
        num_samples=2,
        sampling=task_pb2.SamplingParams(temperature=1.0, max_tokens_per_turn=24),
        limits=task_pb2.EpisodeLimits(max_turns=2, max_tool_calls=1, max_total_tokens=600),
    )
    layout = RunLayout(run_id)
    prompts = StreamQueue(redis_url, layout.prompts, "rollout")
    prompts.publish(task)
    client = redis.Redis.from_url(redis_url)
    # The tiny model is constrained to the python call on every turn.
    worker = rollout_main.start(
        config, extra_sampling={"structured_outputs": {"regex": CALL_REGEX}}
    )
    vllm = reward = None
    sandbox = ExitStack()  # holds the sandbox service once step 3 starts it
    worker_url = f"http://127.0.0.1:{http_port}"
    try:
        # 1. vLLM, sandbox and reward down: attempts fail, the task is released, nothing is
        # published (before: every episode became an error trajectory, published and acked).
        wait_until(
            lambda: metric(worker_url, "agentrl_rollout_task_failures_total") >= 2,
            120,
            "failed group attempts",
        )
        assert client.xlen(layout.groups) == 0
        # 2. vLLM comes back (sandbox, reward still down): the episodes' tool calls meet the
        # sandbox outage, so the groups are still not published.
        vllm = VLLMServer.launch(
            InferenceServerConfig(max_model_len=1024, max_num_seqs=8),
            model_dir,
            tmp_path / "vllm.log",
            port=vllm_port,
        )
        failures = metric(worker_url, "agentrl_rollout_task_failures_total")
        wait_until(
            lambda: metric(worker_url, "agentrl_rollout_task_failures_total") >= failures + 2,
            180,
            "failed attempts with vLLM up",
        )
        assert client.xlen(layout.groups) == 0
        # 3. Sandbox and reward come back: exactly one group of real episodes, the task acked.
        sandbox.enter_context(sandbox_server(config.sandbox, port=sandbox_port))
        reward = start_reward(config)
        wait_until(lambda: client.xlen(layout.groups) >= 1, 240, "group")
        time.sleep(1.0)  # a second copy would be published right after the first
        entries = client.xrange(layout.groups)
        assert len(entries) == 1
        group = group_pb2.Group.FromString(entries[0][1][b"data"])
        assert group.idempotency_key == "k1" and len(group.samples) == 2
        for scored in group.samples:
            assert not scored.trajectory.error
            statuses = {t.tool_call.status for t in scored.trajectory.turns if t.tool_call.tool}
            assert trajectory_pb2.TOOL_CALL_STATUS_UNAVAILABLE not in statuses
        wait_until(lambda: prompts.stats().pending == 0, 30, "task acked")
    finally:
        worker.stop(timeout_s=10)
        if vllm is not None:
            vllm.stop()
        if reward is not None:
            reward.stop(0)
        sandbox.close()
        prompts.close()
        client.close()
