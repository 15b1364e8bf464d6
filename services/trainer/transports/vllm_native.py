"""The `vllm` weight transport: vLLM's native four-phase weight-transfer API on a stock
`vllm serve`, in flight, with nothing written to disk.

    gather+pack -> connect -> start -> update -> wait -> [pause -> finish -> reset -> label
    -> resume] -> verify            (only the bracket stops generation)

One sync of policy version v (`NativeTransport.sync`):

1. gather: `backend.hf_weights()` (every rank takes part; rank 0 gets the full tensors), packed
   into one flat buffer with its `weights_checksum`;
2. connect (the first sync, and after a server failed or discarded): `/init_weight_transfer_
   engine` opens a process group with every server (one per server, the trainer rank 0);
3. transfer, while every server keeps generating (agentrl.common.inference.gloo_weight_transfer):
     POST /start_weight_update
     POST /update_weights {names, dtypes, shapes, checksum}   the server starts receiving in a
        background thread into a staging buffer and answers at once; the trainer broadcasts
     POST /update_weights {"wait": true}    the receive ended and the checksum matched: each
        server holds a verified staged copy; the model is untouched so far
4. on every healthy server at once, only once every server staged (control.py):
     POST /pause?mode=keep                      in-flight requests freeze, keep their tokens
     POST /finish_weight_update                 each loads through vLLM's own `load_weights`
     POST /reset_prefix_cache?reset_running_requests=true
     POST /update_weight_version {"new_version": "v"}
     POST /resume                               always, also after a failure
5. verify: every server reports version v.

Phases (`SyncResult.phases_s`): gather_and_pack_s, connect_s, transfer_s (start, update and the
broadcast), wait_staged_s (until every server verified its copy), load_s, reset_and_label_s,
verify_s. `pause_s` spans pause to resume only: load_s + reset_and_label_s and the pause and
resume calls; the transfer is never inside it.

A server that dies, stalls or receives corrupt bytes fails the sync within
`trainer.weight_sync_timeout_s` (plus a few seconds of grace) with a `WeightSyncError` naming it
and the phase; the other servers discard the update, nothing is loaded anywhere, and, failing
before step 4, no server was ever paused: all go on serving the previous version under its
label (all-or-nothing across the pool). The next sync reconnects.

A version is gathered and packed once: a second `sync(v, urls)` (a retry without a failed
server, a restarted server catching up) sends the same buffer to those servers only; rank 0
keeps that buffer (one copy of the weights in host memory) until the next version.

Engines: `agentrl_gloo` (libs/common/inference/gloo_weight_transfer.py, CPU; what CI runs).
What this does NOT cover: vLLM's `nccl` engine (config validation refuses it until a GPU build
of vLLM can test it), trainer ranks other than 0 sending (rank 0 holds the full weights and
sends them all), the generation slowdown while a server receives and hashes on shared cores
(it is not paused, but it shares them).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from agentrl.common.inference import control
from agentrl.common.inference.pool import InferenceError, InferencePool
from agentrl.trainer.backends.interface import TrainerBackend
from agentrl.trainer.transports.interface import SyncResult, WeightSyncError, WeightTransport
from agentrl.trainer.transports.swap import swap_weights


class NativeTransport(WeightTransport):
    """vLLM's weight-transfer API through the `agentrl_gloo` engine: see the module docstring."""

    name = "vllm"

    def __init__(
        self,
        backend: TrainerBackend,
        pool: InferencePool,
        *,
        pause_mode: str = "keep",
        timeout_s: float = 300.0,
        master_address: str = "127.0.0.1",
        engine: str = "agentrl_gloo",
    ) -> None:
        if engine != "agentrl_gloo":
            raise ValueError(
                f"the vllm transport drives the 'agentrl_gloo' engine, not {engine!r}"
                "; set inference.weight_transfer_backend: agentrl_gloo"
            )
        self.backend, self.pool = backend, pool
        self.pause_mode, self.timeout_s = pause_mode, timeout_s
        self.master_address = master_address
        self.sender: Any = None  # a GlooWeightSender; its `urls` are each sync's targets
        self.packed: tuple[int, Any] | None = None  # the last version gathered and packed

    @classmethod
    def from_config(
        cls, config: Any, backend: TrainerBackend, pool: InferencePool, run_dir: Path
    ) -> NativeTransport:
        trainer = config.trainer
        return cls(
            backend,
            pool,
            pause_mode=trainer.weight_sync_pause_mode,
            timeout_s=trainer.weight_sync_timeout_s,
            master_address=trainer.weight_transfer_address,
            engine=config.inference.weight_transfer_backend,
        )

    def _sender_for(self, urls: list[str]):
        """The sender, aimed at `urls`; groups of the other servers stay open, except those
        of servers the pool ejected (a server that comes back is a new process: it connects
        afresh)."""
        from agentrl.common.inference.gloo_weight_transfer import GlooWeightSender

        if self.sender is None:
            self.sender = GlooWeightSender(
                urls, master_address=self.master_address, timeout_s=self.timeout_s
            )
        for url in list(self.sender.engines):
            if url in self.pool.servers and not self.pool.servers[url].healthy:
                self.sender.drop(url)
        self.sender.urls = list(urls)
        return self.sender

    async def sync(self, version: int, urls: list[str] | None = None) -> SyncResult:
        from agentrl.common.inference.gloo_weight_transfer import PackedWeights

        start = time.perf_counter()
        uri = f"vllm://agentrl_gloo/v{version}"
        if self.packed is None or self.packed[0] != version:
            self.packed = None  # drop the previous version's buffer before gathering this one
            weights = self.backend.hf_weights()  # collective: every rank, once per version
            if not self.backend.is_main_process():
                return SyncResult(
                    version,
                    0,
                    "",
                    uri,
                    0.0,
                    time.perf_counter() - start,
                    {"gather_s": time.perf_counter() - start},
                )
            self.packed = (version, await asyncio.to_thread(PackedWeights.pack, weights))
            del weights
        packed = self.packed[1]
        phases = {"gather_and_pack_s": time.perf_counter() - start}
        try:
            pause_s = await self._transfer(
                packed, version, phases, urls or control.healthy_urls(self.pool)
            )
        except InferenceError as exc:  # ControlError names the server and the phase
            raise WeightSyncError(
                f"native sync of version {version}: {exc}",
                getattr(exc, "url", None),
                getattr(exc, "phase", None),
            ) from exc
        return SyncResult(
            version,
            packed.num_bytes,
            packed.checksum,
            uri,
            pause_s,
            time.perf_counter() - start,
            phases,
        )

    async def _transfer(
        self, packed: Any, version: int, phases: dict[str, float], urls: list[str]
    ) -> float:
        sender = self._sender_for(urls)
        mark = time.perf_counter()
        await asyncio.to_thread(sender.connect)  # groups open once
        phases["connect_s"] = time.perf_counter() - mark
        # The servers receive in the background and go on generating; a failure here leaves
        # every server unpaused and serving what it served (the sender discards everywhere; a
        # session left open by a cancelled sync is discarded by the next start).
        mark = time.perf_counter()
        await asyncio.to_thread(sender.start)
        await asyncio.to_thread(sender.update, packed)
        phases["transfer_s"] = time.perf_counter() - mark
        mark = time.perf_counter()
        await asyncio.to_thread(sender.wait)
        phases["wait_staged_s"] = time.perf_counter() - mark
        return await swap_weights(
            self.pool,
            urls,
            version,
            self.pause_mode,
            lambda: asyncio.to_thread(sender.finish),
            phases,
            on_failed_pause=lambda: asyncio.to_thread(sender.discard),
        )

    async def close(self) -> None:
        if self.sender is not None:
            await asyncio.to_thread(self.sender.close)
            self.sender = None
