"""Pure pieces of the search tool (query extraction, Search-R1 passage text) and of the
policy-version lag metric (counted as the trainer counts staleness)."""

from __future__ import annotations

from agentrl.common.agent.tools import format_passages, search_query
from agentrl.proto.core.v1 import trajectory_pb2
from agentrl.proto.search.v1 import search_pb2
from agentrl.rollout.metrics import policy_version_lag


def test_query_is_the_tag_text_or_the_hermes_query_argument() -> None:
    assert search_query("  capital of France\n") == "capital of France"
    assert search_query('{"query": " capital of France "}') == "capital of France"
    assert search_query('{"q": "x"}') == '{"q": "x"}'  # not a query object: searched as written
    assert search_query("42") == "42"


def test_passages_read_as_search_r1_writes_them() -> None:
    passages = [
        search_pb2.Passage(title="Paris", text="Paris is the capital."),
        search_pb2.Passage(title="France", text="France is a country."),
    ]
    assert format_passages(passages) == (
        "Doc 1(Title: Paris) Paris is the capital.\nDoc 2(Title: France) France is a country."
    )
    assert format_passages([]) == "No passages found."


def trajectory(versions: list[int], mask: list[int]) -> trajectory_pb2.Trajectory:
    return trajectory_pb2.Trajectory(policy_versions=versions, loss_mask=mask)


def test_version_lag_counts_from_the_oldest_sampled_token() -> None:
    # Prompt and observation tokens (-1, mask 0) do not count; the oldest sampled one does.
    traj = trajectory([-1, -1, 2, 2, -1, 3, 4], [0, 0, 1, 1, 0, 1, 1])
    assert policy_version_lag(traj, latest_version=5, admitted_version=1) == 3
    assert policy_version_lag(traj, latest_version=2, admitted_version=1) == 0


def test_version_lag_without_sampled_tokens_uses_the_admitted_version() -> None:
    assert (
        policy_version_lag(trajectory([-1, -1], [0, 0]), latest_version=6, admitted_version=4) == 2
    )


def test_version_lag_is_never_negative() -> None:
    # Tokens of version 4 while the event of 4 has not arrived yet.
    assert policy_version_lag(trajectory([4, 4], [1, 1]), latest_version=3, admitted_version=3) == 0
