"""gRPC `agentrl.reward.v1.RewardService`: Score and ScoreBatch on top of `Scorer`.

Status codes: INVALID_ARGUMENT for a malformed request (the message starts with the field,
e.g. `requests[3].ground_truth: ...`), RESOURCE_EXHAUSTED when more than
`max_concurrency + queue_size` verifications are admitted. A verification that fails is *not*
an RPC error: it is a result with `VERDICT_VERIFIER_ERROR` and its reason.
"""

from __future__ import annotations

import grpc

from agentrl.proto.reward.v1 import reward_pb2, reward_pb2_grpc
from agentrl.reward.scorer import InvalidRequest, Overloaded, Scorer

SERVICE_NAME = reward_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    """Translates between protobuf calls and the Scorer."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    def Score(
        self, request: reward_pb2.ScoreRequest, context: grpc.ServicerContext
    ) -> reward_pb2.ScoreResponse:
        try:
            result = self.scorer.score(request)
        except InvalidRequest as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Overloaded as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        return reward_pb2.ScoreResponse(result=result, request_id=request.request_id)

    def ScoreBatch(
        self, request: reward_pb2.ScoreBatchRequest, context: grpc.ServicerContext
    ) -> reward_pb2.ScoreBatchResponse:
        try:
            results = self.scorer.score_batch(request.requests)
        except InvalidRequest as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Overloaded as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        return reward_pb2.ScoreBatchResponse(
            responses=[
                reward_pb2.ScoreResponse(result=result, request_id=item.request_id)
                for item, result in zip(request.requests, results)
            ]
        )
