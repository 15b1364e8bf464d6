"""Entry point of the reward service: `agentrl serve reward` calls `main(config)`.

Starts the verifier processes, the gRPC `RewardService` (with health, reflection, metrics, auth
and graceful drain from agentrl.common.grpc_server) and the HTTP side (/healthz, /readyz,
/metrics from agentrl.common.http), then serves until SIGTERM or SIGINT: health turns
NOT_SERVING, in-flight verifications drain, then the verifier processes stop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agentrl.common.config import AgentRLConfig

log = logging.getLogger(__name__)

# gRPC handler threads mostly wait on verifications. Every admitted or queued call holds one, and
# a call past the queue needs one too, to be refused with RESOURCE_EXHAUSTED instead of waiting
# unseen inside gRPC; the spare ones also keep health checks answering under full load.
SPARE_HANDLER_THREADS = 8
# Idle threads cost little, but thousands would: a queue_size beyond this waits inside gRPC.
MAX_HANDLER_THREADS = 512


@dataclass
class RunningRewardService:
    """A started reward service: its gRPC server, HTTP server and scorer."""

    grpc: object
    http: object
    scorer: object

    def stop(self, grace_s: float | None = None) -> None:
        self.grpc.stop(grace_s)
        self.http.stop()
        self.scorer.close()


def start(config: AgentRLConfig) -> RunningRewardService:
    """Start everything and return at once (tests and `main` use this)."""
    # Heavy imports after the config is parsed (STYLE.md: thin entrypoints).
    from agentrl.common import grpc_client, grpc_server, http
    from agentrl.proto.reward.v1 import reward_pb2_grpc
    from agentrl.proto.sandbox.v1 import sandbox_pb2_grpc
    from agentrl.reward.scorer import Scorer
    from agentrl.reward.servicer import SERVICE_NAME, RewardServicer

    reward = config.reward
    # Code tests pass their own deadline per call; None here means "no default".
    sandbox_channel = grpc_client.create_channel(config.sandbox.target(), default_timeout_s=None)
    scorer = Scorer(reward, sandbox_pb2_grpc.SandboxServiceStub(sandbox_channel))
    servicer = RewardServicer(scorer)
    server = grpc_server.serve(
        lambda s: reward_pb2_grpc.add_RewardServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
        host=reward.host,
        port=reward.grpc_port,
        max_workers=min(
            reward.max_concurrency + reward.queue_size + SPARE_HANDLER_THREADS, MAX_HANDLER_THREADS
        ),
    )
    app = http.create_app("reward", ready=scorer.ready)
    http_server = http.serve_in_thread(app, host=reward.host, port=reward.http_port)
    log.info(
        "reward service ready",
        extra={"grpc": server.address, "http": http_server.url, "sandbox": config.sandbox.target()},
    )
    return RunningRewardService(server, http_server, scorer)


def main(config: AgentRLConfig) -> None:
    """Serve the reward service until SIGTERM/SIGINT, then drain and exit."""
    service = start(config)
    service.grpc.install_signal_handlers()
    try:
        service.grpc.wait()
    finally:
        service.http.stop()
        service.scorer.close()
