"""The reference policy of the KL penalty (ALGORITHMS.md §1): the run's initial weights, frozen.

    reference = ReferencePolicy.for_run(config)       # None unless the KL needs it
    reference.annotate(micro_batches)                 # per_token["ref_logprobs"], no gradient

What it is: a second backend built from `model.path` (the SFT checkpoint the run starts from)
through `create_backend`, so it lives where the policy lives (same device, dtype, packing and
parallelism: under FSDP2 it is sharded the same way and its forward is collective, every rank
calling it on its own share of micro-batches, as for π_prox). It is built once, before the
trainer resumes a checkpoint, and never loads one: after a resume the reference is still the
run's initial weights, not the resumed ones. It has an optimizer object (the backend contract)
that never steps, so no optimizer state is allocated.

When: `algorithm.kl_coef > 0` (the penalty needs it), or `algorithm.log_reference_kl` (compute
it at kl_coef 0 only to log the KL). Otherwise there is no reference and the step logs no
`kl_*` metric (there is nothing to measure the KL against).

Cost: memory of one more model (parameters only; no gradients, no optimizer moments: about a
quarter of the policy's AdamW training footprint in float32), and one forward without gradient
per micro-batch per step; `time_reference_s` in the step metrics measures it.

Not covered: a reference other than the run's starting weights (e.g. a moving EMA reference).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from agentrl.trainer.backends.interface import TrainerBackend
from agentrl.trainer.packing import MicroBatch

# The reference scores tokens as the policy does: raw log-probs at temperature 1 (rl_step.py).
REFERENCE_TEMPERATURE = 1.0


class ReferencePolicy:
    """Frozen log-probs of the initial weights for the micro-batches of every step."""

    def __init__(self, backend: TrainerBackend) -> None:
        self.backend = backend
        self.time_s = 0.0
        """Seconds the last `annotate` took (the per-step cost)."""

    @classmethod
    def for_run(cls, config: Any) -> ReferencePolicy | None:
        """The run's reference (`model.path`'s weights) when the algorithm needs it, else None."""
        algorithm = config.algorithm
        if not (algorithm.kl_coef > 0 or algorithm.log_reference_kl):
            return None
        from agentrl.trainer.backends import create_backend

        return cls(create_backend(config))  # `logprobs` runs without gradient: nothing to freeze

    def annotate(self, micro_batches: Sequence[MicroBatch]) -> None:
        """Set `per_token["ref_logprobs"]` of each micro-batch (0 off the loss mask)."""
        started = time.perf_counter()
        scored = self.backend.logprobs(micro_batches, REFERENCE_TEMPERATURE)
        for micro_batch, (logprobs, _entropy) in zip(micro_batches, scored, strict=True):
            mask = micro_batch.per_token["loss_mask"].bool()
            micro_batch.per_token["ref_logprobs"] = logprobs.where(mask, 0.0)
        self.time_s = time.perf_counter() - started
