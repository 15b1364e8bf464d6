"""The contract of a weight transport: the trainer's weights -> every vLLM server of the pool.

    result = await transport.sync(version)     # every rank calls; rank 0 talks to the pool

One `sync(v)` leaves every healthy server serving the trainer's current weights labelled `v`
(tokens sampled from then on carry `v`), or raises `WeightSyncError` naming the server and the
phase that failed, with the servers resumed and still serving the version they had (the
`vllm` transport stages what it receives; the `disk` transport reloads from a complete,
renamed directory). A `SyncResult` reports seconds per phase and, apart, the pause window: how
long generation stood still (what the rollout feels), inside the whole sync.

Transports live beside this file (`disk.py`, `vllm_native.py`), named in
`agentrl.trainer.transports.TRANSPORTS` and chosen by `trainer.weight_transport`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field


class WeightSyncError(RuntimeError):
    """A sync failed; the message names the server and the phase, `url` the server when one
    server's failure caused it (the caller may eject it and sync the others again)."""

    def __init__(self, message: str, url: str | None = None, phase: str | None = None) -> None:
        super().__init__(message)
        self.url, self.phase = url, phase


@dataclass(frozen=True)
class SyncResult:
    """What one sync did and how long it took."""

    version: int
    num_bytes: int
    """Bytes of weights sent (or written) per server."""
    checksum: str
    """`weights_checksum` of what was sent: published with the version in Redis."""
    weights_uri: str
    """Where the version lives: a directory (`disk`) or `vllm://<transport>/v<version>`."""
    pause_s: float
    """From the pause of the first server to the resume of the last (rollout stood still)."""
    total_s: float
    phases_s: dict[str, float] = field(default_factory=dict)
    """Seconds per phase, in the order they ran (names are the transport's)."""


class WeightTransport(ABC):
    """Pushes a backend's weights to an inference pool; see the module docstring."""

    name: str

    @abstractmethod
    async def sync(self, version: int, urls: list[str] | None = None) -> SyncResult:
        """Make every healthy server (or only `urls`) serve the backend's current weights as
        `version`. Every rank calls it for a new version (gathering the weights is collective);
        a second call for the same version (a retry without a failed server, a restarted
        server catching up) reuses what the first gathered and is rank 0's alone."""

    async def close(self) -> None:
        """Release what the transport holds (process groups, files); idempotent."""
