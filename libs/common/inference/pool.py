"""An async client of a pool of `vllm serve` servers, token-in/token-out.

    pool = InferencePool(["http://127.0.0.1:8000"])   # or .from_config(config.inference)
    await pool.start()                       # background health checks
    out = await pool.generate("traj-1", prompt_ids, {"max_tokens": 64, "logprobs": 5})
    out.token_ids, out.logprobs, out.top_logprobs, out.policy_versions

Route: vLLM's `POST /inference/v1/generate` (vllm/entrypoints/scale_out/token_in_token_out):
prompt token ids in; sampled token ids, each one's log-prob, its top-k, and the weight version
that sampled it out. No text is re-tokenised on either side. `sampling` is passed as vLLM
`SamplingParams` fields (temperature, top_p, max_tokens, stop, logprobs, allowed_token_ids...).

Routing: a trajectory's turns go to the server that served its first turn (sticky by session
id, so the prefix cache holds the earlier turns); a new session goes to the healthy server with
the fewest requests in flight. A server that fails a request (connection error, 5xx) or a
health probe is ejected until a probe passes; the request is retried on another server, at most
`max_retries` times. When no server is left (the pool's vLLM restarting), a generation waits:
it probes the pool and tries again with the shared backoff (agentrl.common.retry) until
`reconnect_deadline_s` (`inference.reconnect_deadline_s`), so a short outage is a pause; past
it `NoHealthyServer` (a `ServiceUnavailableError`, not an `InferenceError`: an outage is not a
property of the episode, and the agent loop lets it through to the rollout worker, which
retries the group). `InferenceError` stays for answers retrying cannot change. Control calls (pause, resume, weight version, weight transfer) are
control.py's: they fan out to every server of the pool.

What this does NOT cover: weight transfer itself (the trainer's transport) and resuming an
aborted request from its partial tokens (the agent loop re-sends its tokens as a new turn).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import httpx

from agentrl.common.inference.generate_http import GenerateClient
from agentrl.common.logging import get_logger
from agentrl.common.retry import Outage, ServiceUnavailableError, acall_with_deadline

if TYPE_CHECKING:
    from agentrl.common.config import InferenceConfig

log = get_logger(__name__)

GENERATE_ROUTE = "/inference/v1/generate"
# A server that never had a version set serves the weights it started with: version 0.
INITIAL_VERSION_LABEL = "default"
# Sticky sessions remembered at once; the oldest are forgotten (they only lose cache reuse).
MAX_STICKY_SESSIONS = 100_000
# Control calls and health probes are short; generation has its own (long) deadline.
CONTROL_TIMEOUT_S = 30.0
HEALTH_TIMEOUT_S = 5.0


class InferenceError(RuntimeError):
    """A generation failed for a reason retrying elsewhere cannot fix (bad request)."""


class NoHealthyServer(ServiceUnavailableError):
    """Every server of the pool is ejected (or failed this request), past the deadline."""


@dataclass
class GenerationResult:
    """One turn's sampled tokens, aligned per token."""

    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]]
    """Per token, the top-k (token id, log-prob) of `sampling["logprobs"] = k`, best first
    (k < MAX_LOGPROBS of the launcher); empty lists when k is 0."""
    policy_versions: list[int]
    finish_reason: str
    """`stop` (stop string, stop token or EOS), `length` (max_tokens) or `abort`."""
    stop_reason: str | int | None
    """The stop string or token id that ended the turn; None on EOS, length and abort."""
    server_url: str


@dataclass
class ServerState:
    url: str
    healthy: bool = True
    in_flight: int = 0
    num_failures: int = 0
    num_requests: int = 0
    sessions: set[str] = field(default_factory=set)


def parse_version(label: str | None) -> int:
    if label in (None, INITIAL_VERSION_LABEL):
        return 0
    try:
        return int(label)
    except ValueError:
        raise InferenceError(
            f"server reports weight version {label!r}; AgentRL sets integer "
            "versions through agentrl.common.inference.control.set_weight_version"
        ) from None


_PAIR = itemgetter("token_id", "logprob")  # one candidate dict -> (token id, log-prob), in C


def _top_k(candidates: list[dict[str, Any]], k: int) -> list[tuple[int, float]]:
    """The true top-k of one position from vLLM's list: the sampled token first (with its
    `rank` in the vocabulary), then the other candidates in rank order, best first. Slices
    put the sampled token in its place: no sort, no per-candidate Python code. Without a rank
    (a NaN log-prob, an older server) one merge pass by log-prob does it, the sampled token
    before equal ones, as a stable sort of the whole list would put it."""
    if not candidates:
        return []
    rank = candidates[0].get("rank")
    if rank == 1:  # the sampled token is the best one: the list is already in order
        return list(map(_PAIR, candidates[:k]))
    if rank is not None:
        chosen = (
            candidates[1:rank] + candidates[:1] + candidates[rank:k]
            if rank <= k
            else candidates[1 : k + 1]
        )
        return list(map(_PAIR, chosen))
    sampled_logprob = candidates[0]["logprob"]
    out: list[tuple[int, float]] = []
    placed = False
    for candidate in candidates[1:]:
        if not placed and sampled_logprob >= candidate["logprob"]:
            out.append(_PAIR(candidates[0]))
            placed = True
        out.append(_PAIR(candidate))
        if len(out) >= k:
            return out[:k]
    if not placed:
        out.append(_PAIR(candidates[0]))
    return out[:k]


def parse_generation(body: dict[str, Any], url: str, num_top: int = 0) -> GenerationResult:
    """One reply of the generate route as a `GenerationResult`. Per token it takes the
    sampled token's log-prob (what training needs); the top-k lists are built only when
    `num_top` asks for them, by merging the sampled token into vLLM's rank-ordered list."""
    (choice,) = body["choices"]
    token_ids = choice["token_ids"] or []
    content = (choice.get("logprobs") or {}).get("content") or []
    if content and len(content) != len(token_ids):
        raise InferenceError(f"{url}: {len(content)} log-probs for {len(token_ids)} tokens")
    spans = choice.get("weight_versions") or []
    if len(spans) == 1 and spans[0]["start"] == 0 and spans[0]["end"] >= len(token_ids):
        versions = [parse_version(spans[0]["version"])] * len(token_ids)  # the usual case
    else:
        versions = [0] * len(token_ids)
        for span in spans:
            version = parse_version(span["version"])
            versions[span["start"] : span["end"]] = [version] * (span["end"] - span["start"])
    if num_top:
        top_logprobs = [_top_k(c.get("top_logprobs") or [], num_top) for c in content]
    else:
        top_logprobs = [[] for _ in content]
    return GenerationResult(
        token_ids=token_ids,
        logprobs=[c["logprob"] for c in content],
        top_logprobs=top_logprobs,
        policy_versions=versions,
        finish_reason=choice["finish_reason"] or "stop",
        stop_reason=choice.get("stop_reason"),
        server_url=url,
    )


class InferencePool:
    def __init__(
        self,
        urls: list[str],
        *,
        request_timeout_s: float = 300.0,
        max_retries: int = 2,
        health_check_interval_s: float = 5.0,
        reconnect_deadline_s: float = 0.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`reconnect_deadline_s`: how long a generation waits for a server to come back when
        none is healthy (0: fail at once)."""
        if not urls:
            raise ValueError("the vLLM pool needs at least one URL (inference.urls)")
        self.servers = {url.rstrip("/"): ServerState(url.rstrip("/")) for url in urls}
        self.request_timeout_s = request_timeout_s
        self.max_retries = max_retries
        self.health_check_interval_s = health_check_interval_s
        self.reconnect_deadline_s = reconnect_deadline_s
        self.http = httpx.AsyncClient(
            transport=transport,
            timeout=CONTROL_TIMEOUT_S,
            limits=httpx.Limits(max_connections=None),
        )
        # Generation rides aiohttp (flat CPU per request in concurrency, generate_http.py); a
        # test's httpx transport carries it too, so one mock answers every route.
        self.generate_http = GenerateClient(self.http if transport is not None else None)
        self._sticky: OrderedDict[str, str] = OrderedDict()
        self._request_counter = itertools.count()
        self._health_task: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, config: InferenceConfig, **kwargs: Any) -> InferencePool:
        """The pool of the `inference` section (URLs, request deadline, retries, health checks)."""
        return cls(
            config.urls,
            request_timeout_s=config.request_timeout_s,
            max_retries=config.max_request_retries,
            health_check_interval_s=config.health_check_interval_s,
            reconnect_deadline_s=config.reconnect_deadline_s,
            **kwargs,
        )

    # ---- routing -------------------------------------------------------------------------
    def pick(self, session_id: str, exclude: set[str] = frozenset()) -> ServerState:
        """The session's server while it is healthy, else the least-loaded healthy one."""
        url = self._sticky.get(session_id)
        if url is not None and url not in exclude and self.servers[url].healthy:
            self._sticky.move_to_end(session_id)
            return self.servers[url]
        candidates = [s for s in self.servers.values() if s.healthy and s.url not in exclude]
        if not candidates:
            raise NoHealthyServer(f"no healthy vLLM server among {list(self.servers)}")
        server = min(candidates, key=lambda s: (s.in_flight, len(s.sessions), s.num_requests))
        self._stick(session_id, server)
        return server

    def _stick(self, session_id: str, server: ServerState) -> None:
        old = self._sticky.get(session_id)
        if old is not None:
            self.servers[old].sessions.discard(session_id)
        self._sticky[session_id] = server.url
        server.sessions.add(session_id)
        while len(self._sticky) > MAX_STICKY_SESSIONS:
            forgotten, url = self._sticky.popitem(last=False)
            self.servers[url].sessions.discard(forgotten)

    def release(self, session_id: str) -> None:
        """Forget a finished trajectory's server (its cache entries simply age out)."""
        url = self._sticky.pop(session_id, None)
        if url is not None:
            self.servers[url].sessions.discard(session_id)

    def eject(self, url: str, reason: str) -> None:
        server = self.servers[url]
        if server.healthy:
            log.warning("ejecting vLLM server %s: %s", url, reason)
        server.healthy = False
        server.num_failures += 1

    # ---- generation ----------------------------------------------------------------------
    async def generate(
        self, session_id: str, prompt_token_ids: list[int], sampling: dict[str, Any]
    ) -> GenerationResult:
        """Sample one continuation of `prompt_token_ids` (n=1) with vLLM `sampling` fields."""
        if not prompt_token_ids:
            raise ValueError("prompt_token_ids is empty; a turn needs at least one token")
        if sampling.get("n", 1) != 1:
            raise ValueError("generate() samples one sequence; send n requests for a group")
        # vLLM lists the sampled token first, then the top candidates, cut to `logprobs`
        # entries: asking for one more and sorting recovers the true top-k.
        num_top = sampling.get("logprobs") or 0
        if num_top:
            sampling = {**sampling, "logprobs": num_top + 1}
        first = [True]

        async def attempt() -> GenerationResult:
            if not first[0]:  # waiting out an outage: readmit servers that answer again
                await self.check_health()
            first[0] = False
            return await self._generate_once(session_id, prompt_token_ids, sampling, num_top)

        outage = Outage(
            "vLLM",
            ", ".join(self.servers),
            "inference.reconnect_deadline_s",
            self.reconnect_deadline_s,
        )
        return await acall_with_deadline(
            attempt,
            outage,
            retry_on=lambda err: isinstance(err, NoHealthyServer),
            error=lambda err: NoHealthyServer(
                f"no vLLM server of the pool ({', '.join(self.servers)}) served a generation "
                f"for {self.reconnect_deadline_s:g} s (last: {err}); check that they run "
                "(`agentrl status`) and that inference.urls is right "
                "(inference.reconnect_deadline_s sets how long to wait)",
                outage,
            ),
        )

    async def _generate_once(
        self,
        session_id: str,
        prompt_token_ids: list[int],
        sampling: dict[str, Any],
        num_top: int,
    ) -> GenerationResult:
        """One pass over the pool: the session's server, then others, `max_retries` times."""
        failed: set[str] = set()
        for attempt in range(self.max_retries + 1):
            server = self.pick(session_id, exclude=failed)
            body = {
                "request_id": f"{session_id}-{next(self._request_counter)}",
                "token_ids": prompt_token_ids,
                "sampling_params": sampling,
                "output_mode": "tokens",
            }
            server.in_flight += 1
            server.num_requests += 1
            try:
                response = await self.generate_http.post(
                    server.url + GENERATE_ROUTE, body, self.request_timeout_s
                )
            except httpx.TransportError as exc:
                self.eject(server.url, f"{type(exc).__name__}: {exc}")
                failed.add(server.url)
                continue
            finally:
                server.in_flight -= 1
            if response.status_code >= 500:
                self.eject(server.url, f"HTTP {response.status_code}: {response.text[:200]}")
                failed.add(server.url)
                continue
            if response.status_code != 200:
                raise InferenceError(
                    f"{server.url} rejected the request "
                    f"(HTTP {response.status_code}): {response.text[:500]}"
                )
            return parse_generation(response.json(), server.url, num_top)
        raise NoHealthyServer(
            f"generation failed on {sorted(failed)} after {self.max_retries + 1} attempts"
        )

    async def score(self, token_ids: list[int], url: str | None = None) -> list[float | None]:
        """vLLM's log-prob of every token given the ones before it (None for the first), from
        server `url` (default: the least-loaded healthy one). A server that does not answer
        (or answers 5xx) is ejected and NoHealthyServer raised: one try, no waiting."""
        server = (
            self.servers[url.rstrip("/")]
            if url
            else self.pick(f"score-{next(self._request_counter)}")
        )
        body = {
            "token_ids": token_ids,
            "output_mode": "tokens",
            "sampling_params": {"max_tokens": 1, "prompt_logprobs": 0, "temperature": 1.0},
        }
        try:
            response = await self.http.post(
                server.url + GENERATE_ROUTE, json=body, timeout=self.request_timeout_s
            )
        except httpx.TransportError as exc:
            self.eject(server.url, f"{type(exc).__name__}: {exc}")
            raise NoHealthyServer(f"{server.url} did not answer the score request: {exc}") from exc
        if response.status_code >= 500:
            self.eject(server.url, f"HTTP {response.status_code}: {response.text[:200]}")
            raise NoHealthyServer(f"{server.url}: HTTP {response.status_code} scoring")
        if response.status_code != 200:
            raise InferenceError(f"{server.url}: HTTP {response.status_code} {response.text[:500]}")
        scored = response.json()["prompt_logprobs"]
        return [
            None if entry is None else entry[str(token)]["logprob"]
            for token, entry in zip(token_ids, scored, strict=True)
        ]

    # ---- health --------------------------------------------------------------------------
    async def check_health(self) -> dict[str, bool]:
        """Probe every server's /health; eject failures, readmit servers that pass again."""

        async def probe(server: ServerState) -> None:
            try:
                ok = (
                    await self.http.get(server.url + "/health", timeout=HEALTH_TIMEOUT_S)
                ).status_code == 200
            except httpx.HTTPError as exc:
                ok, reason = False, f"{type(exc).__name__}: {exc}"
            else:
                reason = "health probe failed"
            if ok and not server.healthy:
                log.info("vLLM server %s is healthy again", server.url)
            if ok:
                server.healthy = True
            else:
                self.eject(server.url, reason)

        await asyncio.gather(*(probe(s) for s in self.servers.values()))
        return {url: s.healthy for url, s in self.servers.items()}

    async def _health_loop(self) -> None:
        while True:
            await self.check_health()
            await asyncio.sleep(self.health_check_interval_s)

    async def start(self) -> None:
        """Probe once, then keep probing in the background every health_check_interval_s."""
        await self.check_health()
        self._health_task = asyncio.create_task(self._health_loop())

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        await self.generate_http.close()
        await self.http.aclose()
