"""The rollout worker's gRPC control service (`agentrl.rollout.v1.RolloutControlService`):
status, pause and resume of one worker and, through it, of the vLLM pool it generates with."""

from __future__ import annotations

from typing import Any

import grpc

# Control calls wait on every vLLM server's /pause or /resume: a few seconds even under load.
CONTROL_TIMEOUT_S = 60.0
PAUSE_MODES = {1: "keep", 2: "abort", 3: "wait"}  # rollout_pb2.PauseMode -> pool mode


class RolloutControlServicer:
    """gRPC control of one worker; calls run on the worker's loop from gRPC threads."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker

    def GetStatus(self, request, context):
        return self.worker.status()

    def Pause(self, request, context):
        from agentrl.proto.rollout.v1 import rollout_pb2

        mode = PAUSE_MODES.get(request.mode or 1)
        if mode is None:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown pause mode {request.mode}; use KEEP, ABORT or WAIT",
            )
        self.worker.pause(mode, CONTROL_TIMEOUT_S)
        return rollout_pb2.PauseResponse(status=self.worker.status())

    def Resume(self, request, context):
        from agentrl.proto.rollout.v1 import rollout_pb2

        self.worker.resume(CONTROL_TIMEOUT_S)
        return rollout_pb2.ResumeResponse(status=self.worker.status())
