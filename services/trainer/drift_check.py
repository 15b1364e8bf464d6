"""The log-prob drift check after a weight sync: do the servers now compute what the trainer
computes? The check that sees the served weights, whatever the transport did.

    report = await check_logprob_drift(backend, pool, token_ids)   # every healthy server

vLLM's prompt log-probs of `token_ids` (`InferencePool.score`, one server after another)
against the trainer's (`backend.logprobs`, temperature 1): the largest absolute difference over
the tokens after the first, over all servers. The RL loop runs it after every sync on one
sequence it just trained on (`trainer.drift_check`), records `logprob_drift_max` and warns in
the step line above `trainer.drift_threshold`; `raise_above` turns that into an error (tests,
benchmarks). A server that does not answer the check (it died after the sync) is ejected and
left out; with none left, DriftCheckSkipped: the RL loop records the step as unchecked and goes
on (the pool's outage handling is the generation path's, not the check's).

Thresholds: float32 on both sides agrees to ~1e-6 per token (docs/rollout.md); bf16 serving
against fp32 training differs by ~1e-2, so such set-ups raise the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentrl.common.inference.pool import InferencePool, NoHealthyServer
from agentrl.trainer.backends.interface import TrainerBackend

DEFAULT_DRIFT_THRESHOLD = 1e-3


class WeightDriftError(RuntimeError):
    """vLLM's log-probs differ from the trainer's beyond the threshold after a sync."""


class DriftCheckSkipped(RuntimeError):
    """No server answered the check (every one ejected, or each failed to answer)."""


@dataclass(frozen=True)
class DriftReport:
    max_abs_diff: float
    mean_abs_diff: float
    num_tokens: int
    worst_server: str
    threshold: float
    unanswered: tuple[str, ...] = ()
    """Servers healthy at the start that did not answer (ejected since)."""

    @property
    def exceeded(self) -> bool:
        return self.max_abs_diff > self.threshold

    def describe(self) -> str:
        return (
            f"vLLM ({self.worst_server}) and trainer log-probs differ by up to "
            f"{self.max_abs_diff:.2e} (mean {self.mean_abs_diff:.2e}) over "
            f"{self.num_tokens} tokens, above {self.threshold:.0e}: the served weights are "
            "not the trained ones (stale reload, dtype mismatch?)"
        )


async def check_logprob_drift(
    backend: TrainerBackend,
    pool: InferencePool,
    token_ids: list[int],
    threshold: float = DEFAULT_DRIFT_THRESHOLD,
    *,
    raise_above: bool = True,
) -> DriftReport:
    """Compare every healthy server's log-probs of `token_ids` with the trainer's."""
    from agentrl.trainer.packing import pack_micro_batches

    if len(token_ids) < 2:
        raise ValueError("the drift check needs a sequence of at least 2 tokens")
    ((trained, _entropy),) = backend.logprobs(pack_micro_batches([token_ids], len(token_ids)))
    trained_values = trained[0, 1:].tolist()
    worst, worst_url, total, count = -1.0, "", 0.0, 0
    unanswered: list[str] = []
    for url, server in pool.servers.items():
        if not server.healthy:
            continue
        try:
            served = await pool.score(list(token_ids), url=url)
        except NoHealthyServer:
            unanswered.append(url)
            continue
        diffs = [abs(float(s) - float(t)) for s, t in zip(served[1:], trained_values, strict=True)]
        total, count = total + sum(diffs), count + len(diffs)
        if max(diffs) > worst:
            worst, worst_url = max(diffs), url
    if not count:
        raise DriftCheckSkipped(
            f"no server of {list(pool.servers)} answered the drift check "
            f"(unanswered: {unanswered or 'none healthy'})"
        )
    report = DriftReport(
        worst, total / count, len(trained_values), worst_url, threshold, tuple(unanswered)
    )
    if raise_above and report.exceeded:
        raise WeightDriftError(report.describe())
    return report
