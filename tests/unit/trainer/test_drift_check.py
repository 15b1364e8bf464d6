"""The drift check when a server dies after the sync (drift_check.check_logprob_drift): the
server that does not answer (refused, 5xx) is ejected and left out of the report; with none
answering, DriftCheckSkipped, which the RL loop records as an unchecked step instead of ending
the run. A server that rejects the request (4xx) is still an error: the check's own bug. An
httpx MockTransport plays the servers and a fixed tensor the trainer (pure logic)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import torch

from agentrl.common.inference.pool import InferenceError, InferencePool
from agentrl.trainer.drift_check import DriftCheckSkipped, check_logprob_drift

TOKENS = [5, 6, 7, 8]
TRAINED = [-1.0, -2.0, -3.0, -4.0]  # the first token's is never compared


class FixedBackend:
    def logprobs(self, micro_batches, temperature: float = 1.0):
        return [(torch.tensor([TRAINED]), torch.zeros(1, len(TRAINED)))]


def engine(behaviour: dict[str, str]) -> httpx.MockTransport:
    """Each host answers as `behaviour` says: "ok" (its log-probs off by 1e-4), "refused",
    "503" or "400"."""

    def handle(request: httpx.Request) -> httpx.Response:
        how = behaviour[request.url.host]
        if how == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        if how in ("503", "400"):
            return httpx.Response(int(how), text="engine says no")
        scored = [None] + [
            {str(token): {"logprob": value + 1e-4}} for token, value in zip(TOKENS[1:], TRAINED[1:])
        ]
        return httpx.Response(200, json={"prompt_logprobs": scored})

    return httpx.MockTransport(handle)


def check(behaviour: dict[str, str]):
    pool = InferencePool([f"http://{host}:8000" for host in behaviour], transport=engine(behaviour))
    report = asyncio.run(check_logprob_drift(FixedBackend(), pool, TOKENS, raise_above=False))
    return report, pool


def test_a_dead_server_is_left_out_and_ejected():
    report, pool = check({"alive": "ok", "dead": "refused", "failing": "503"})
    assert report.unanswered == ("http://dead:8000", "http://failing:8000")
    assert report.worst_server == "http://alive:8000"
    assert report.max_abs_diff == pytest.approx(1e-4, abs=1e-6) and not report.exceeded
    assert not pool.servers["http://dead:8000"].healthy
    assert not pool.servers["http://failing:8000"].healthy


def test_no_server_answering_skips_the_check():
    with pytest.raises(DriftCheckSkipped, match="unanswered.*http://dead:8000"):
        check({"dead": "refused"})


def test_a_rejected_request_is_still_an_error():
    with pytest.raises(InferenceError, match="HTTP 400"):
        check({"alive": "ok", "rejecting": "400"})


def test_the_rl_loop_records_a_skipped_check_and_goes_on():
    from types import SimpleNamespace

    from agentrl.trainer.main import step_line
    from agentrl.trainer.rl_loop import RLTrainer

    behaviour = {"dead": "refused"}
    trainer = SimpleNamespace(
        drift_check_token_ids=TOKENS,
        main=True,
        backend=FixedBackend(),
        pool=InferencePool(["http://dead:8000"], transport=engine(behaviour)),
        trainer=SimpleNamespace(drift_threshold=1e-3),
        version=3,
    )
    metrics = asyncio.run(RLTrainer.drift(trainer, batch=None))
    assert metrics == {"logprob_drift_skipped": 1}
    assert "drift check skipped" in step_line({**STEP, **metrics})


STEP = {
    "step": 1,
    "reward_mean": 0.5,
    "accuracy": 0.5,
    "kept_group_ratio": 1.0,
    "grad_norm": 0.1,
    "time_waiting_s": 1.0,
    "time_training_s": 1.0,
    "time_weight_sync_s": 0.1,
}
