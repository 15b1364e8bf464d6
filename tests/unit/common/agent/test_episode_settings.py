"""EpisodeSettings: a RolloutTask's sampling and limits become per-turn vLLM parameters."""

from __future__ import annotations

import pytest

from agentrl.common.agent.loop import EpisodeSettings
from agentrl.common.inference.pool import parse_generation, parse_version
from agentrl.proto.core.v1 import task_pb2


def test_from_task_maps_sampling_and_limits() -> None:
    task = task_pb2.RolloutTask(
        tool_format="search_tags",
        sampling=task_pb2.SamplingParams(
            temperature=0.7,
            top_p=0.9,
            top_k=0,
            max_tokens_per_turn=128,
            num_logprobs=10,
            stop=["###"],
            seed=5,
        ),
        limits=task_pb2.EpisodeLimits(
            max_turns=3, max_tool_calls=2, max_total_tokens=1000, max_tool_output_tokens=64
        ),
    )
    settings = EpisodeSettings.from_task(task, allowed_token_ids=[1, 2])
    assert settings.sampling == {
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": -1,
        "logprobs": 10,
        "stop": ["###"],
        "seed": 5,
        "allowed_token_ids": [1, 2],
    }
    assert (
        settings.max_tokens_per_turn,
        settings.max_turns,
        settings.max_tool_calls,
        settings.max_total_tokens,
        settings.max_tool_output_tokens,
    ) == (128, 3, 2, 1000, 64)
    assert settings.tool_format == "search_tags"


def test_unset_limits_take_the_defaults_tool_calls_included() -> None:
    settings = EpisodeSettings.from_task(task_pb2.RolloutTask())
    assert settings.max_turns == 8
    assert settings.max_tool_calls == 8  # 0 is "unset", never "no tool call allowed"


def test_no_tool_calls_is_a_negative_limit_and_eval_sends_it_for_zero() -> None:
    from agentrl.common.agent.loop import NO_TOOL_CALLS

    task = task_pb2.RolloutTask(limits=task_pb2.EpisodeLimits(max_tool_calls=NO_TOOL_CALLS))
    assert EpisodeSettings.from_task(task).max_tool_calls == 0


def test_eval_max_tool_calls_zero_allows_none(monkeypatch) -> None:
    from agentrl.common.config import AgentRLConfig
    from agentrl.trainer import eval_job
    from agentrl.trainer.data import PromptRow

    monkeypatch.setattr(eval_job, "make_task", lambda *a, **k: task_pb2.RolloutTask())
    rows = [PromptRow(prompt_id="p", prompt="1+1?", ground_truth="2", task_type="math")]
    config = AgentRLConfig()
    (none,) = eval_job.build_eval_tasks(rows, config, None, 2, limits={"max_tool_calls": 0})
    (two,) = eval_job.build_eval_tasks(rows, config, None, 2, limits={"max_tool_calls": 2})
    (default,) = eval_job.build_eval_tasks(rows, config, None, 2)
    assert EpisodeSettings.from_task(none).max_tool_calls == 0
    assert EpisodeSettings.from_task(two).max_tool_calls == 2
    assert EpisodeSettings.from_task(default).max_tool_calls == 8


def test_bad_limits_and_formats_are_rejected() -> None:
    with pytest.raises(ValueError, match="max_turns must be positive"):
        EpisodeSettings(max_turns=0)
    with pytest.raises(ValueError, match="unknown tool format"):
        EpisodeSettings(tool_format="xml")


def test_weight_version_spans_become_per_token_versions() -> None:
    body = {
        "choices": [
            {
                "token_ids": [5, 6, 7],
                "finish_reason": "stop",
                "stop_reason": "</code>",
                "weight_versions": [
                    {"version": "default", "start": 0, "end": 1},
                    {"version": "3", "start": 1, "end": 3},
                ],
                "logprobs": {
                    "content": [
                        {
                            "token_id": t,
                            "logprob": -1.0,
                            # vLLM's order: by rank (the sampled token may sit anywhere).
                            "top_logprobs": [
                                {"token_id": 8, "logprob": -0.1},
                                {"token_id": 9, "logprob": -0.5},
                                {"token_id": t, "logprob": -1.0},
                            ],
                        }
                        for t in (5, 6, 7)
                    ]
                },
            }
        ]
    }
    out = parse_generation(body, "http://x", num_top=2)
    assert out.policy_versions == [0, 3, 3] and out.stop_reason == "</code>"
    assert out.top_logprobs[0] == [(8, -0.1), (9, -0.5)]
    assert parse_version("12") == 12
