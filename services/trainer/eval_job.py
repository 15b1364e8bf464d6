"""`agentrl eval`: run a data set through the rollout path, k samples per prompt, and report.

    report = run_eval(config, "data/eval.jsonl", k=4, out_json=Path("eval.json"))

Every row of the data set (agentrl.trainer.data.load_prompts) becomes a `RolloutTask` exactly
as the RL loop builds it (`rl_loop.make_task`: the same prompt rendering and tokenisation, the
rollout defaults for sampling and limits), with `num_samples = k`. The tasks run in this
process through `GroupSampler` against the running stack of the recipe: the vLLM pool
(`inference.urls`), the sandbox (`sandbox.address`, the `python` tool) and the reward
service (`reward.address`). The groups are scored by `evaluation.evaluate_groups`; the report
(and, when asked, every group's per-sample verdicts) is written as JSON.

Concurrency: at most `rollout.max_concurrent_episodes` episodes at once (whole groups of k).
No Redis, no trainer, no weight sync: it evaluates whatever weights the pool serves.

Outages (agentrl.common.retry, as in a rollout worker): the sandbox, reward and search clients
retry an unreachable service until its `<service>.reconnect_deadline_s`, vLLM generation until
`inference.reconnect_deadline_s`, so a restart is a pause. A group that still met an outage (a
call that raised past its deadline, or a tool call the service could not run) is not scored as
the model's: it is sampled again, at most `rollout.max_group_attempts` times in all, then the
evaluation fails with the outage's error (service, address, setting).
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.common.config import AgentRLConfig
from agentrl.common.logging import get_logger
from agentrl.trainer.data import load_prompts
from agentrl.trainer.evaluation import evaluate_groups, is_correct
from agentrl.trainer.rl_loop import make_task

log = get_logger(__name__)

EVAL_WORKER_ID = "eval"
# Pause before sampling a group again after an outage (doubling per attempt).
RETRY_INITIAL_S = 1.0
# Tasks are admitted at policy version 0: evaluation has no trainer versions of its own.
EVAL_POLICY_VERSION = 0


@dataclass
class EvalResult:
    report: dict[str, Any]
    """What was written to JSON: evaluation.evaluate_groups' dict and the per-prompt records."""
    groups: list = field(default_factory=list)
    """The scored `Group` protos, in data-set order."""


def build_eval_tasks(
    rows,
    config: AgentRLConfig,
    tokenizer: Any,
    k: int,
    *,
    sampling: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
) -> list:
    """One RolloutTask per row, k samples each; keys `eval:<row index>:<prompt id>`.
    `sampling` / `limits`: task_pb2.SamplingParams / EpisodeLimits fields set on every task
    (`make_task` leaves them 0, i.e. the rollout defaults); `limits={"max_tool_calls": 0}`
    allows no tool call (sent as the task's NO_TOOL_CALLS: a call ends the episode unrun)."""
    from agentrl.common.agent.loop import NO_TOOL_CALLS
    from agentrl.proto.core.v1 import task_pb2

    limits = dict(limits or {})
    if limits.get("max_tool_calls") == 0:
        limits["max_tool_calls"] = NO_TOOL_CALLS

    if k < 1:
        raise ValueError(f"k must be >= 1 (samples per prompt), got {k}")
    tasks = []
    for index, row in enumerate(rows):
        task = make_task(
            row, config, tokenizer, f"eval:{index}:{row.prompt_id}", EVAL_POLICY_VERSION
        )
        task.num_samples = k
        try:
            task.sampling.MergeFrom(task_pb2.SamplingParams(**(sampling or {})))
            task.limits.MergeFrom(task_pb2.EpisodeLimits(**limits))
        except ValueError as exc:
            raise ValueError(f"bad eval sampling/limits override: {exc}") from None
        tasks.append(task)
    return tasks


def group_summary(group) -> dict[str, Any]:
    """Per-prompt record for the JSON: the verdict, reward, tool calls (and how many failed) and
    length of every sample."""
    from agentrl.common.agent.group import response_length_tokens
    from agentrl.proto.core.v1 import group_pb2
    from agentrl.trainer.evaluation import num_tool_errors

    return {
        "prompt_id": group.task.prompt_id,
        "task_type": group.task.task_type,
        "num_correct": sum(1 for s in group.samples if is_correct(s)),
        "samples": [
            {
                "verdict": group_pb2.Verdict.Name(s.result.verdict),
                "reward": s.result.reward,
                "num_tool_calls": s.trajectory.num_tool_calls,
                "num_tool_errors": num_tool_errors(s.trajectory),
                "response_length_tokens": response_length_tokens(s.trajectory),
            }
            for s in group.samples
        ],
    }


async def sample_groups(
    config: AgentRLConfig, tasks: list, tokenizer: Any, extra_sampling: dict[str, Any] | None = None
) -> list:
    """Run every task through GroupSampler against the configured stack; groups in task order."""
    from agentrl.common import grpc_client
    from agentrl.common.agent.group import GroupSampler
    from agentrl.common.agent.loop import AgentLoop
    from agentrl.common.agent.tools import ToolBox, sandbox_client
    from agentrl.common.inference.pool import InferencePool
    from agentrl.reward.client import RewardClient

    settings = config.rollout
    if not config.inference.urls:
        raise ValueError("evaluation needs the vLLM pool: set inference.urls")
    k = max(task.num_samples for task in tasks)
    # Whole groups share the episode budget; at least one group runs even when k exceeds it.
    slots = asyncio.Semaphore(max(1, settings.max_concurrent_episodes // k))
    pool = InferencePool.from_config(config.inference)
    await pool.start()
    search_channel = grpc_client.create_channel(
        config.search.target(), outage=grpc_client.outage_for("search", config.search)
    )
    try:
        with (
            sandbox_client(
                config.sandbox, outage=grpc_client.outage_for("sandbox", config.sandbox)
            ) as sandbox,
            RewardClient(
                config.reward.target(), outage=grpc_client.outage_for("reward", config.reward)
            ) as reward,
        ):
            tools = ToolBox.for_agents(
                sandbox, search_channel, settings.tool_timeout_s, settings.python_sessions
            )
            sampler = GroupSampler(
                AgentLoop(pool, tokenizer, tools),
                reward,
                worker_id=EVAL_WORKER_ID,
                default_format=settings.tool_format,
                extra_sampling=extra_sampling,
            )

            async def one(task):
                async with slots:
                    return await sample_through_outages(sampler, task, settings.max_group_attempts)

            return list(await asyncio.gather(*(one(task) for task in tasks)))
    finally:
        search_channel.close()
        await pool.close()


async def sample_through_outages(sampler: Any, task: Any, max_attempts: int) -> Any:
    """`sampler.sample(task)`, sampled again while it meets an outage (at most `max_attempts`
    in all); past that the outage's error is raised."""
    from agentrl.rollout.worker import infrastructure_failure

    attempt = 1
    while True:
        try:
            group = await sampler.sample(task)
            cause = infrastructure_failure(group)
            if cause is None:
                return group
            error = ConnectionError(
                f"evaluation of {task.prompt_id} met an outage in each of its {max_attempts} "
                f"attempts (rollout.max_group_attempts), the last: {cause}"
            )
        except ConnectionError as exc:  # ServiceUnavailableError: a client's deadline passed
            error = exc
        if attempt >= max_attempts:
            raise error
        log.warning(
            "evaluation group met an outage; sampling it again",
            extra={"prompt_id": task.prompt_id, "attempt": attempt, "error": str(error)},
        )
        await asyncio.sleep(RETRY_INITIAL_S * 2 ** (attempt - 1) * random.uniform(0.5, 1.0))
        attempt += 1


def run_eval(
    config: AgentRLConfig,
    data_path: str | Path,
    k: int,
    out_json: str | Path | None = None,
    *,
    tokenizer: Any = None,
    extra_sampling: dict[str, Any] | None = None,
    sampling: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    include_groups: bool = True,
) -> EvalResult:
    """Evaluate `data_path` with k samples per prompt; write the report to `out_json` (when
    given) and return it with the groups. Report: evaluation.evaluate_groups' dict plus
    `data_path`, `num_prompts` and, with `include_groups`, per-prompt records under `groups`. `tokenizer`: default the
    served checkpoint's (inference.server.model_path, else model.path); `extra_sampling`: vLLM
    sampling fields added to every turn (tests constrain the tiny model with them);
    `sampling` / `limits`: per-task overrides (build_eval_tasks)."""
    rows = load_prompts(data_path)
    if tokenizer is None:
        from transformers import AutoTokenizer

        model_path = config.served_model_path()
        if model_path is None:
            raise ValueError(
                "evaluation needs the served checkpoint's tokenizer: set "
                "inference.server.model_path or model.path"
            )
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    tasks = build_eval_tasks(rows, config, tokenizer, k, sampling=sampling, limits=limits)
    groups = asyncio.run(sample_groups(config, tasks, tokenizer, extra_sampling))
    report = {"data_path": str(data_path), "num_prompts": len(rows), **evaluate_groups(groups, k)}
    if include_groups:
        report["groups"] = [group_summary(g) for g in groups]
    if out_json is not None:
        out_json = Path(out_json)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(report, indent=2) + "\n")
    return EvalResult(report, groups)
