"""Which weights every server of the pool serves: the trainer's side of the version contract.

    weights = PoolWeights(transport, pool, main=rank == 0)
    await weights.push(version)          # after a step: every healthy server, riding through
    await weights.catch_up(version)      # before a step: servers that came back get `version`

- `push`: `transport.sync(version)`; a server that fails it (the error names it) is ejected
  from the pool and the others are synced again, the transport reusing the weights it gathered
  (no second collective), at most MAX_SYNC_ATTEMPTS times. One dead server does not end the run;
  with none left (a pool of one restarting, seen failing the sync or already marked down by the
  pool's health checks) the trainer waits for a server to pass its health probe, with the shared retry policy (agentrl.common.retry) until
  `inference.reconnect_deadline_s`, and syncs it; past the deadline the run ends with the last
  error.
- `catch_up`: probe every server's /health (an ejected server whose probe passes is back), read
  each one's version label, and sync the ones that report another version alone: a restarted
  server (it serves the checkpoint it started from, labelled 0), a new pod, one that missed a
  sync while ejected. Labels stay truthful meanwhile: a restarted server labels its tokens 0,
  which is what it serves, and the trainer's staleness bound drops them if too old.

Rank 0 does all of this; other ranks only take part in `push`'s first gather. What this does
NOT cover: rollout workers route to a server that came back before the next `catch_up` (at most
one step later); its samples then carry its true, older version.
"""

from __future__ import annotations

import asyncio

from agentrl.common.inference import control
from agentrl.common.inference.pool import InferencePool, NoHealthyServer
from agentrl.common.logging import get_logger
from agentrl.common.retry import Outage, acall_with_deadline
from agentrl.trainer.transports.interface import SyncResult, WeightSyncError, WeightTransport

log = get_logger(__name__)

# Each attempt drops one failed server: three attempts ride through two dead servers in a sync.
MAX_SYNC_ATTEMPTS = 3


class PoolWeights:
    def __init__(
        self, transport: WeightTransport, pool: InferencePool, *, main: bool = True
    ) -> None:
        self.transport, self.pool, self.main = transport, pool, main
        self.num_ejected = 0
        """Servers ejected after failing a sync (run total)."""
        self.num_caught_up = 0
        """Servers that came back and were given the current version (run total)."""

    async def push(self, version: int, urls: list[str] | None = None) -> SyncResult:
        """Serve `version` on every healthy server (or `urls`); see the module docstring."""
        for attempt in range(MAX_SYNC_ATTEMPTS):
            if self.main and not any(s.healthy for s in self.pool.servers.values()):
                # The pool's health checks saw its last server die before this sync began (the
                # fault suite's vLLM SIGKILL, under load): wait as after a failed sync; past the
                # deadline the sync below fails with the transport's error.
                await self._wait_for_a_server(version, NoHealthyServer("every server is down"))
            try:
                return await self.transport.sync(version, urls)
            except WeightSyncError as exc:
                failed = exc.url
                if (
                    not self.main
                    or failed not in self.pool.servers
                    or attempt == MAX_SYNC_ATTEMPTS - 1
                ):
                    raise
                self.pool.eject(failed, f"weight sync of version {version} failed: {exc}")
                self.num_ejected += 1
                urls = None if urls is None else [url for url in urls if url != failed]
                # A pool of one restarting: wait for a server, then sync whoever came back.
                if not any(
                    s.healthy for s in self.pool.servers.values()
                ) and await self._wait_for_a_server(version, exc):
                    urls = None
                    continue
                if urls == [] or not any(s.healthy for s in self.pool.servers.values()):
                    raise WeightSyncError(
                        f"no server left to serve version {version}: {exc}. Check the vLLM "
                        f"pool at {list(self.pool.servers)} (inference.urls): start it with "
                        "`agentrl up -r RECIPE`, or point inference.urls at running servers",
                        failed,
                        exc.phase,
                    ) from exc
                log.warning(
                    "weight sync: %s failed in %s; syncing the other servers again",
                    failed,
                    exc.phase,
                )
        raise AssertionError("unreachable: the last attempt raises")

    async def _wait_for_a_server(self, version: int, cause: Exception) -> bool:
        """Probe the pool until a server is healthy (True) or the deadline passed (False)."""
        deadline_s = self.pool.reconnect_deadline_s
        if deadline_s <= 0:
            return False

        async def probe() -> None:
            await self.pool.check_health()
            if not any(s.healthy for s in self.pool.servers.values()):
                raise NoHealthyServer(f"no server of {list(self.pool.servers)} is healthy")

        log.warning(
            "weight sync of version %d: no server left (%s); waiting up to %.0f s for one",
            version,
            cause,
            deadline_s,
        )
        outage = Outage(
            "vLLM", ", ".join(self.pool.servers), "inference.reconnect_deadline_s", deadline_s
        )
        try:
            await acall_with_deadline(
                probe, outage, retry_on=lambda err: isinstance(err, NoHealthyServer)
            )
        except ConnectionError:  # past the deadline (ServiceUnavailableError)
            return False
        return True

    async def catch_up(self, version: int) -> list[str]:
        """Sync the servers that report another version than `version`; returns them."""
        if not self.main:
            return []
        await self.pool.check_health()
        urls = [url for url, server in self.pool.servers.items() if server.healthy]
        replies = await asyncio.gather(
            *(control.weight_versions(self.pool, [url]) for url in urls), return_exceptions=True
        )
        behind = []
        for url, reply in zip(urls, replies, strict=True):
            if isinstance(reply, BaseException):
                self.pool.eject(url, f"its weight version is unreadable: {reply}")
            elif reply[url] != version:
                behind.append(url)
        if behind:
            log.warning("servers %s serve another version than %d: syncing them", behind, version)
            await self.push(version, behind)
            self.num_caught_up += len(behind)
        return behind
