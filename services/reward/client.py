"""Client of the reward service for other services (rollout, evaluation).

    client = RewardClient(config.reward.target())
    result = client.score(task_type="math", response_text=text, ground_truth="42",
                          num_tool_calls=3, response_length_tokens=812)
    results = client.score_batch([request, ...])   # one round trip for a whole group

Calls go through agentrl.common.grpc_client (auth token, deadline, bounded UNAVAILABLE
retries; scoring is idempotent so a retry is safe). Pass
`outage=grpc_client.outage_for("reward", config.reward)` to retry UNAVAILABLE with the shared
policy until `reward.reconnect_deadline_s` (the rollout worker does). A RESOURCE_EXHAUSTED or INVALID_ARGUMENT
comes back as `grpc_client.RpcCallError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Self

from agentrl.common import grpc_client
from agentrl.proto.core.v1 import group_pb2
from agentrl.proto.reward.v1 import reward_pb2, reward_pb2_grpc

# A code verification may run for a minute (reward.code.verifier_timeout_s); leave margin.
DEFAULT_TIMEOUT_S = 120.0


class RewardClient:
    """Score responses through `RewardService`; close with `close()` or `with`."""

    def __init__(self, target: str, timeout_s: float = DEFAULT_TIMEOUT_S, **channel_kwargs) -> None:
        self.channel = grpc_client.create_channel(
            target, default_timeout_s=timeout_s, **channel_kwargs
        )
        self.stub = reward_pb2_grpc.RewardServiceStub(self.channel)

    def score(
        self,
        task_type: str,
        response_text: str,
        ground_truth: str = "",
        *,
        metadata: Mapping[str, str] | None = None,
        num_tool_calls: int = 0,
        response_length_tokens: int = 0,
        truncated: bool = False,
        request_id: str = "",
        tools_used: Sequence[str] = (),
    ) -> group_pb2.RewardResult:
        """The reward of one response (see agentrl.reward.v1.ScoreRequest for the fields)."""
        request = reward_pb2.ScoreRequest(
            task_type=task_type,
            response_text=response_text,
            ground_truth=ground_truth,
            metadata=dict(metadata or {}),
            num_tool_calls=num_tool_calls,
            response_length_tokens=response_length_tokens,
            truncated=truncated,
            request_id=request_id,
            tools_used=list(tools_used),
        )
        return self.stub.Score(request).result

    def score_batch(
        self, requests: Sequence[reward_pb2.ScoreRequest]
    ) -> list[group_pb2.RewardResult]:
        """Results in request order."""
        response = self.stub.ScoreBatch(reward_pb2.ScoreBatchRequest(requests=list(requests)))
        return [r.result for r in response.responses]

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
