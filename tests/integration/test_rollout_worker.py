"""Group sampling and the rollout worker end to end: real `vllm serve` (CPU, tiny local model),
the real sandbox and reward services (in this process, free ports), real Redis at
127.0.0.1:6379 under a fresh run id per test.

- `GroupSampler` runs n episodes of a task concurrently and scores each: one Group, n samples.
- A task published to `agentrl:{run}:prompts` yields exactly one Group on `...:groups`; a second
  copy under the same idempotency key yields none; gRPC control and HTTP metrics answer.
- The worker follows the policy version the trainer publishes (GetStatus, a gauge) and reports
  queue lag, the prompts backlog and each episode's policy-version lag in /metrics.
- A worker (subprocess, `agentrl serve rollout`) SIGKILLed mid-episode: a second worker
  reclaims the task after the visibility timeout, and, SIGTERMed mid-episode itself, finishes
  it, publishes exactly one group and exits 0.

The random tiny model never writes a tool call by itself, so the in-process episodes are
constrained by a vLLM structured-outputs regex (a python call or an answer); the subprocess
workers sample freely (long random turns, which keeps an episode in flight for seconds)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families
from transformers import AutoTokenizer

from agentrl.common.agent.arpo import TaskSampler
from agentrl.common.agent.group import GroupSampler
from agentrl.common.agent.loop import AgentLoop
from agentrl.common.agent.tools import SandboxTool, ToolBox
from agentrl.common.config import AgentRLConfig, ARPOConfig
from agentrl.common.inference.launcher import VLLMServer
from agentrl.common.inference.pool import InferencePool
from agentrl.common.models import default_corpus, init_tiny_model
from agentrl.common.policy_version import PolicyVersionPublisher
from agentrl.common.run_layout import RunLayout
from agentrl.proto.core.v1 import group_pb2, task_pb2
from agentrl.proto.rollout.v1 import rollout_pb2, rollout_pb2_grpc
from agentrl.reward.client import RewardClient
from agentrl.rollout import main as rollout_main
from agentrl.sandbox.client import SandboxClient

pytestmark = pytest.mark.slow
REDIS_URL = "redis://127.0.0.1:6379/0"
# A python call or a final answer: the tiny model writes one of the two every turn.
CALL_REGEX = r"<code>\nprint\(6 \* 7\)\n</code>"
REGEX = rf"({CALL_REGEX}|The answer is <answer>42</answer>)"


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s} s")
        time.sleep(interval_s)


def groups_in(run_id: str) -> list[group_pb2.Group]:
    entries = redis.Redis.from_url(REDIS_URL).xrange(RunLayout(run_id).groups)
    return [group_pb2.Group.FromString(fields[b"data"]) for _id, fields in entries]


def assert_consistent(group: group_pb2.Group, task: task_pb2.RolloutTask) -> None:
    """n samples, one per index, each aligned per token and starting with the prompt."""
    assert len(group.samples) == task.num_samples
    trajs = [s.trajectory for s in group.samples]
    assert sorted(t.sample_index for t in trajs) == list(range(task.num_samples))
    assert len({t.trajectory_id for t in trajs}) == task.num_samples
    for t in trajs:
        n = len(t.token_ids)
        assert len(t.loss_mask) == len(t.behaviour_logprobs) == len(t.policy_versions) == n
        assert t.task_id == task.task_id and t.prompt_length == len(task.prompt_token_ids)
        assert list(t.token_ids[: t.prompt_length]) == list(task.prompt_token_ids)
        assert sum(t.loss_mask) > 0 and not any(t.loss_mask[: t.prompt_length])


def metric(http_url: str, name: str, **labels: str) -> float:
    """The value of one sample in the worker's /metrics (0 when it is not there yet)."""
    text = httpx.get(f"{http_url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WorkerProcess:
    """`agentrl serve rollout` in its own process group, with its recipe and log under `root`."""

    def __init__(self, config: AgentRLConfig, root: Path, worker_id: str) -> None:
        root.mkdir(parents=True)
        self.port = free_port()
        data = config.model_dump(mode="json", exclude_none=True)
        data["rollout"].update(grpc_port=self.port, worker_id=worker_id)
        recipe = root / "recipe.yaml"
        recipe.write_text(yaml.safe_dump(data))
        self.log_path = root / "worker.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRL__")}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agentrl.common.cli", "serve", "rollout", "-r", str(recipe)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def status(self) -> rollout_pb2.RolloutStatus | None:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = rollout_pb2_grpc.RolloutControlServiceStub(channel)
            try:
                return stub.GetStatus(rollout_pb2.GetStatusRequest(), timeout=2)
            except grpc.RpcError:
                return None

    def wait_in_flight(self, timeout_s: float, prompts: str) -> None:
        seen: list = []

        def in_flight() -> bool:
            assert self.process.poll() is None, self.log()
            status = self.status()
            seen[:] = [status]
            return status is not None and status.episodes_in_flight > 0

        try:
            wait_until(in_flight, timeout_s, "episode in flight", interval_s=0.05)
        except AssertionError as exc:  # say where the task was: unread, pending, or done
            client = redis.Redis.from_url(REDIS_URL)
            groups = client.xinfo_groups(prompts) if client.exists(prompts) else []
            raise AssertionError(
                f"{exc}; worker status {seen}; stream {prompts} groups "
                f"{groups}; worker log:\n{self.log()}"
            ) from None

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int:
        return self.process.wait(timeout_s)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_tiny_model(tmp_path_factory.mktemp("model"), default_corpus(500), seed=3)


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    return AutoTokenizer.from_pretrained(model_dir)


def make_config(
    run_id: str, server: VLLMServer, model_dir: Path, services: tuple[str, str], **rollout: object
) -> AgentRLConfig:
    return AgentRLConfig.model_validate(
        {
            "run": {"run_id": run_id},
            # Short enough that a killed worker's task is reclaimed within the test, long enough
            # that a live worker on a loaded 2-core machine always renews its entries in time.
            "redis": {"url": REDIS_URL, "visibility_timeout_s": 8.0},
            "sandbox": {"address": services[0]},
            "reward": {"address": services[1]},
            "inference": {
                "urls": [server.url],
                "request_timeout_s": 120.0,
                "server": {"model_path": str(model_dir)},
            },
            "rollout": {
                "grpc_port": 0,
                "http_port": 0,
                "max_concurrent_episodes": 16,
                "shutdown_grace_s": 60.0,
                **rollout,
            },
        }
    )


@contextlib.contextmanager
def generation_held(server) -> Iterator[None]:
    """vLLM's /pause (mode keep) for the block: requests sent meanwhile wait, unanswered."""
    httpx.post(f"{server.url}/pause", params={"mode": "keep"}, timeout=30).raise_for_status()
    try:
        yield
    finally:
        httpx.post(f"{server.url}/resume", timeout=30).raise_for_status()


def make_task(tokenizer, key: str, n: int, max_tokens_per_turn: int = 48) -> task_pb2.RolloutTask:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 6 * 7?"}], add_generation_prompt=True, tokenize=False
    )
    return task_pb2.RolloutTask(
        task_id=f"task-{key}",
        idempotency_key=key,
        prompt_id="p0",
        prompt_token_ids=tokenizer.encode(text, add_special_tokens=False),
        prompt_text=text,
        task_type="math",
        ground_truth="42",
        tools=["python"],
        tool_format="code_tags",
        num_samples=n,
        created_at_unix_s=time.time(),
        sampling=task_pb2.SamplingParams(temperature=1.0, max_tokens_per_turn=max_tokens_per_turn),
        limits=task_pb2.EpisodeLimits(
            max_turns=3, max_tool_calls=1, max_total_tokens=1000, max_tool_output_tokens=32
        ),
    )


def sample_group(
    server,
    services,
    tokenizer,
    task: task_pb2.RolloutTask,
    regex: str,
    arpo: ARPOConfig | None = None,
) -> tuple[group_pb2.Group, GroupSampler]:
    """One group through GroupSampler, or TaskSampler when `arpo` is given."""

    async def body() -> tuple[group_pb2.Group, GroupSampler]:
        pool = InferencePool([server.url], request_timeout_s=120)
        try:
            with (
                SandboxClient(services[0], token=None) as sandbox,
                RewardClient(services[1], token=None) as reward,
            ):
                loop = AgentLoop(pool, tokenizer, ToolBox({"python": SandboxTool(sandbox)}))
                extra = {"structured_outputs": {"regex": regex}}
                sampler = (
                    GroupSampler(loop, reward, worker_id="w-test", extra_sampling=extra)
                    if arpo is None
                    else TaskSampler(
                        loop,
                        reward,
                        worker_id="w-test",
                        arpo=arpo,
                        vocab_size=len(tokenizer),
                        extra_sampling=extra,
                    )
                )
                return await sampler.sample(task), sampler
        finally:
            await pool.close()

    return asyncio.run(body())


def test_group_sampler_runs_and_scores_n_episodes(server, services, tokenizer) -> None:
    task = make_task(tokenizer, "k-group", n=4)
    group, _ = sample_group(server, services, tokenizer, task, REGEX)
    assert group.idempotency_key == "k-group" and group.worker_id == "w-test"
    assert group.task == task and group.rollout_time_s > 0 and group.group_id
    assert_consistent(group, task)
    for sample in group.samples:
        traj, result = sample.trajectory, sample.result
        assert result.verdict != group_pb2.VERDICT_UNSPECIFIED and result.verify_time_s > 0
        if traj.num_tool_calls:
            assert traj.turns[0].tool_call.output == "42\n"


def tree_task(tokenizer, key: str) -> task_pb2.RolloutTask:
    """M = 5; every turn calls the tool, so turns 1 and 2 follow a tool result."""
    task = make_task(tokenizer, key, n=5)
    task.tree_sampling, task.sampling.seed = True, 7
    task.limits.max_tool_calls, task.limits.max_turns = 2, 4
    return task


def test_arpo_forced_branching_gives_exactly_m_samples_in_a_consistent_tree(
    server, services, tokenizer
) -> None:
    task = tree_task(tokenizer, "k-tree")
    # tau = 1: P <= tau at every turn after a tool result, i.e. every such point branches.
    arpo = ARPOConfig(initial_samples=2, tau=1.0, beam_size=2)
    group, sampler = sample_group(server, services, tokenizer, task, CALL_REGEX, arpo)
    assert_consistent(group, task)
    trajs = {s.trajectory.trajectory_id: s.trajectory for s in group.samples}
    roots = [t for t in trajs.values() if not t.parent_trajectory_id]
    children = [t for t in trajs.values() if t.parent_trajectory_id]
    assert len(roots) == 2 and len(children) == 3 and sampler.decisions >= 3
    for child in children:
        parent = trajs[child.parent_trajectory_id]
        point = child.branch_point
        [k] = [t.index for t in parent.turns if t.response_start == point]
        assert k >= 1 and parent.turns[k - 1].observation_end == point  # after a tool result
        for field in ("token_ids", "loss_mask", "behaviour_logprobs", "policy_versions"):
            assert list(getattr(child, field))[:point] == list(getattr(parent, field))[:point]
        assert list(child.turns[:k]) == list(parent.turns[:k])
        assert child.turns[k].response_start == point and child.num_tool_calls == 2


def test_arpo_with_branching_disabled_equals_plain_group_sampling(
    server, services, tokenizer
) -> None:
    task = tree_task(tokenizer, "k-flat")
    never = ARPOConfig(initial_samples=2, tau=-1.0)  # P >= 0 > tau: no branch
    tree, sampler = sample_group(server, services, tokenizer, task, CALL_REGEX, never)
    task.tree_sampling = False
    plain, _ = sample_group(server, services, tokenizer, task, CALL_REGEX)
    assert sampler.decisions > 0  # decisions were taken, none branched
    assert not any(s.trajectory.parent_trajectory_id for s in tree.samples)

    def by_index(group):
        return [
            list(s.trajectory.token_ids)
            for s in sorted(group.samples, key=lambda s: s.trajectory.sample_index)
        ]

    assert by_index(tree) == by_index(plain) and len(by_index(tree)) == 5


def test_worker_publishes_one_group_per_task_and_answers_control(
    server, services, model_dir, tokenizer, run_id
) -> None:
    config = make_config(run_id, server, model_dir, services)
    # Every turn calls the tool: a second call passes max_tool_calls=1 and ends the episode.
    service = rollout_main.start(
        config, worker_id="w-inproc", extra_sampling={"structured_outputs": {"regex": CALL_REGEX}}
    )
    client = redis.Redis.from_url(REDIS_URL)
    prompts = RunLayout(run_id).prompts
    try:
        task = make_task(tokenizer, "k-one", n=3)
        client.xadd(prompts, {b"data": task.SerializeToString(), b"key": b"k-one"})
        wait_until(lambda: groups_in(run_id), 120, "a group")
        [group] = groups_in(run_id)
        assert group.idempotency_key == "k-one" and group.worker_id == "w-inproc"
        assert_consistent(group, task)
        assert all(s.trajectory.turns[0].tool_call.output == "42\n" for s in group.samples)
        wait_until(lambda: client.xpending(prompts, "rollout")["pending"] == 0, 10, "the ack")
        # A second copy under the same key is acked without a second group.
        client.xadd(prompts, {b"data": task.SerializeToString(), b"key": b"k-one"})
        wait_until(
            lambda: (
                client.xinfo_groups(prompts)[0]["lag"] == 0
                and client.xpending(prompts, "rollout")["pending"] == 0
            ),
            10,
            "the copy",
        )
        assert len(groups_in(run_id)) == 1

        with grpc.insecure_channel(service.grpc.address) as channel:
            stub = rollout_pb2_grpc.RolloutControlServiceStub(channel)
            status = stub.GetStatus(rollout_pb2.GetStatusRequest(), timeout=10)
            assert status.worker_id == "w-inproc" and status.episodes_done == 3
            assert status.episodes_in_flight == 0 and not status.paused
            assert [s.url for s in status.servers] == [server.url] and status.servers[0].healthy
            paused = stub.Pause(
                rollout_pb2.PauseRequest(mode=rollout_pb2.PAUSE_MODE_KEEP), timeout=60
            )
            assert paused.status.paused
            assert not stub.Resume(rollout_pb2.ResumeRequest(), timeout=60).status.paused
        http = service.http.url
        assert httpx.get(f"{http}/healthz").status_code == 200
        assert httpx.get(f"{http}/readyz").status_code == 200
        text = httpx.get(f"{http}/metrics").text
        for name in (
            "agentrl_rollout_generated_tokens_total",
            "agentrl_rollout_episode_turns",
            "agentrl_rollout_episodes_in_flight_episodes",
            'agentrl_rollout_tool_latency_seconds_count{tool="python"}',
        ):
            assert name in text, name
    finally:
        service.stop(30)


def test_killed_worker_task_completes_on_another_worker_once(
    server, services, model_dir, tokenizer, run_id, tmp_path
) -> None:
    config = make_config(run_id, server, model_dir, services)
    client = redis.Redis.from_url(REDIS_URL)
    prompts = RunLayout(run_id).prompts
    task = make_task(tokenizer, "k-kill", n=4, max_tokens_per_turn=400)
    client.xadd(prompts, {b"data": task.SerializeToString(), b"key": b"k-kill"})

    # The server holds generation (vLLM's pause, mode keep) while a worker must be mid-episode:
    # with it running, a tiny model's episodes can end between two status polls.
    first = WorkerProcess(config, tmp_path / "first", "w-first")
    try:
        with generation_held(server):
            first.wait_in_flight(120, prompts)
            assert not groups_in(run_id)
            first.kill()
    finally:
        first.close()
    assert client.xpending(prompts, "rollout")["consumers"][0]["name"] == b"w-first"

    second = WorkerProcess(config, tmp_path / "second", "w-second")
    try:
        with generation_held(server):
            second.wait_in_flight(120, prompts)  # reclaimed after the visibility timeout
            second.terminate()  # SIGTERM mid-episode: finishes, publishes, acks, exits
        assert second.wait(90) == 0, second.log()
    finally:
        second.close()
    groups = groups_in(run_id)
    assert len(groups) == 1 and {g.idempotency_key for g in groups} == {"k-kill"}
    assert groups[0].worker_id == "w-second"
    assert_consistent(groups[0], task)
    assert client.xpending(prompts, "rollout")["pending"] == 0
    assert client.zscore(f"{prompts}:rollout:done", "k-kill") is not None


def test_worker_follows_policy_version_and_reports_queue_and_version_lag(
    server, services, model_dir, tokenizer, run_id
) -> None:
    publisher = PolicyVersionPublisher(REDIS_URL, run_id)
    publisher.publish(3, "/weights/v3", "sha-3")  # before the worker starts: read from the key
    config = make_config(run_id, server, model_dir, services)
    service = rollout_main.start(
        config, worker_id="w-lag", extra_sampling={"structured_outputs": {"regex": REGEX}}
    )
    client = redis.Redis.from_url(REDIS_URL)
    http = service.http.url
    # The metrics live in the process-wide registry: compare against their values now.
    lag_count = metric(http, "agentrl_rollout_queue_lag_seconds_count")
    lag_sum = metric(http, "agentrl_rollout_queue_lag_seconds_sum")
    lag_fast = metric(http, "agentrl_rollout_queue_lag_seconds_bucket", le="10.0")
    version_lag = {
        le: metric(http, "agentrl_rollout_policy_version_lag_versions_bucket", le=le)
        for le in ("2.0", "3.0")
    }
    try:
        with grpc.insecure_channel(service.grpc.address) as channel:
            stub = rollout_pb2_grpc.RolloutControlServiceStub(channel)
            assert (
                stub.GetStatus(rollout_pb2.GetStatusRequest(), timeout=10).latest_policy_version
                == 3
            )
            assert metric(http, "agentrl_rollout_published_policy_version") == 3

            # Held back by a pause, an admitted task waits in the stream: the backlog gauge
            # shows it at the next refresh.
            stub.Pause(rollout_pb2.PauseRequest(mode=rollout_pb2.PAUSE_MODE_KEEP), timeout=60)
            time.sleep(1.0)  # a read already in flight when the pause came ends within 0.5 s
            task = make_task(tokenizer, "k-lag", n=2)
            task.created_at_unix_s, task.admitted_policy_version = time.time() - 30, 3
            client.xadd(
                RunLayout(run_id).prompts, {b"data": task.SerializeToString(), b"key": b"k-lag"}
            )
            wait_until(
                lambda: metric(http, "agentrl_rollout_prompts_undelivered_tasks") == 1,
                15,
                "the backlog gauge",
            )
            stub.Resume(rollout_pb2.ResumeRequest(), timeout=60)
            wait_until(lambda: groups_in(run_id), 120, "a group")

            # Taken about 30 s after its admission.
            assert metric(http, "agentrl_rollout_queue_lag_seconds_count") == lag_count + 1
            assert metric(http, "agentrl_rollout_queue_lag_seconds_sum") - lag_sum >= 30
            assert metric(http, "agentrl_rollout_queue_lag_seconds_bucket", le="10.0") == lag_fast
            # Tokens sampled by the servers' version 0 while 3 is published: a lag of 3 each.
            assert (
                metric(http, "agentrl_rollout_policy_version_lag_versions_bucket", le="2.0")
                == version_lag["2.0"]
            )
            assert (
                metric(http, "agentrl_rollout_policy_version_lag_versions_bucket", le="3.0")
                == version_lag["3.0"] + 2
            )
            wait_until(
                lambda: (
                    metric(http, "agentrl_rollout_prompts_undelivered_tasks") == 0
                    and metric(http, "agentrl_rollout_prompts_pending_tasks") == 0
                ),
                15,
                "an empty backlog",
            )

            publisher.publish(4, "/weights/v4", "sha-4")
            wait_until(
                lambda: (
                    stub.GetStatus(rollout_pb2.GetStatusRequest(), timeout=10).latest_policy_version
                    == 4
                ),
                10,
                "version 4 from the event",
            )
            assert metric(http, "agentrl_rollout_published_policy_version") == 4
    finally:
        service.stop(30)
        publisher.close()
