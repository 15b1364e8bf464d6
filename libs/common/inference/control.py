"""The admin routes of stock `vllm serve` (vLLM 0.32), fanned out to every server of a pool.

Every weight change and every pause goes through here, whoever asks (the trainer's weight
transports, the rollout worker's Pause/Resume RPCs, tests, benchmarks):

    pause(pool, "keep")            POST /pause?mode=keep|wait|abort
    resume(pool)                   POST /resume
    set_weight_version(pool, v)    POST /update_weight_version {"new_version": "v"}
    weight_versions(pool)          GET  /weight_info            -> {url: version}
    reload_weights(pool, DIR)      POST /collective_rpc {"method": "reload_weights", ...}
                                   (dev mode: VLLM_SERVER_DEV_MODE=1; the `disk` transport)
    reset_prefix_cache(pool)       POST /reset_prefix_cache?reset_running_requests=true
    post_each(pool, PATH, ...)     any other route, e.g. the four weight-transfer phases
                                   (/init_weight_transfer_engine, /start_weight_update,
                                   /update_weights, /finish_weight_update: the `vllm`
                                   transport, services/trainer/transports/vllm_native.py)

Calls go to the servers concurrently, each with its own timeout; any failure raises
`ControlError` naming the server, the phase and what to do. `resume` is best effort on every
server (a server that died stays dead; the others must not stay paused).

What this does NOT cover: retries (a half-applied weight change is the caller's to redo, from
the start) and servers outside `pool.servers` (a pool sees only the URLs it was given).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from agentrl.common.inference.pool import InferenceError, InferencePool, parse_version

# Pause, resume and labels return at once; a slow answer means a wedged server.
CONTROL_TIMEOUT_S = 30.0
# Reloading re-reads every tensor from disk: seconds for the tiny model, about a minute for a
# few GB on a slow shared volume.
RELOAD_TIMEOUT_S = 600.0
PAUSE_MODES = ("keep", "wait", "abort")


class ControlError(InferenceError):
    """A control call failed on one server: `url` and `phase` say where."""

    def __init__(self, url: str, phase: str, detail: str) -> None:
        super().__init__(f"{phase} on {url}: {detail}")
        self.url, self.phase = url, phase


def healthy_urls(pool: InferencePool) -> list[str]:
    urls = [url for url, server in pool.servers.items() if server.healthy]
    if not urls:
        raise InferenceError(
            f"no healthy vLLM server among {list(pool.servers)}; start one "
            "(`agentrl up`) or fix inference.urls"
        )
    return urls


async def call_one(
    pool: InferencePool,
    url: str,
    method: str,
    path: str,
    phase: str,
    timeout_s: float = CONTROL_TIMEOUT_S,
    **kwargs: Any,
) -> Any:
    """One admin call; `ControlError` on a transport error, a timeout or a non-200 answer."""
    try:
        response = await pool.http.request(method, url + path, timeout=timeout_s, **kwargs)
    except httpx.TimeoutException:
        raise ControlError(
            url, phase, f"no answer within {timeout_s:.0f} s (server stalled or dead)"
        ) from None
    except httpx.HTTPError as exc:
        raise ControlError(url, phase, f"{type(exc).__name__}: {exc}") from None
    if response.status_code == 404:
        raise ControlError(
            url,
            phase,
            f"HTTP 404 for {path}: this server lacks the route "
            "(vLLM 0.32 with VLLM_SERVER_DEV_MODE=1 has it)",
        )
    if response.status_code != 200:
        raise ControlError(url, phase, f"HTTP {response.status_code}: {response.text[:300]}")
    return response.json() if response.content else None


async def post_each(
    pool: InferencePool,
    path: str,
    phase: str,
    *,
    json_by_url: dict[str, Any] | None = None,
    json: Any = None,
    params: dict[str, str] | None = None,
    timeout_s: float = CONTROL_TIMEOUT_S,
    urls: list[str] | None = None,
) -> dict[str, Any]:
    """POST `path` to every healthy server (or `urls`) at once; replies by URL. The body is
    `json_by_url[url]` when given, else `json`. The first failure is raised once all calls
    returned, so no call is left running behind the error."""
    urls = urls or healthy_urls(pool)
    results = await asyncio.gather(
        *(
            call_one(
                pool,
                url,
                "POST",
                path,
                phase,
                timeout_s,
                params=params,
                json=json_by_url[url] if json_by_url is not None else json,
            )
            for url in urls
        ),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return dict(zip(urls, results, strict=True))


async def pause(pool: InferencePool, mode: str = "keep", urls: list[str] | None = None) -> None:
    """Pause generation on every healthy server (or `urls`): `keep` freezes in-flight requests
    until resume, `wait` lets them finish, `abort` ends them (finish_reason `abort`)."""
    if mode not in PAUSE_MODES:
        raise ValueError(f"pause mode {mode!r}; use one of {', '.join(PAUSE_MODES)}")
    await post_each(pool, "/pause", "pause", params={"mode": mode}, urls=urls)


async def resume(pool: InferencePool, urls: list[str] | None = None) -> None:
    """Resume every healthy server (or `urls`); raises the first failure after trying all."""
    await post_each(pool, "/resume", "resume", urls=urls)


async def set_weight_version(
    pool: InferencePool, version: int, urls: list[str] | None = None
) -> None:
    """Label the weights every server holds; tokens sampled from now on carry `version`."""
    await post_each(
        pool,
        "/update_weight_version",
        "update_weight_version",
        json={"new_version": str(version)},
        urls=urls,
    )


async def weight_versions(pool: InferencePool, urls: list[str] | None = None) -> dict[str, int]:
    """The version label each healthy server (or each of `urls`) reports."""
    urls = urls or healthy_urls(pool)
    replies = await asyncio.gather(
        *(call_one(pool, url, "GET", "/weight_info", "weight_info") for url in urls)
    )
    return {
        url: parse_version(reply["weight_version"])
        for url, reply in zip(urls, replies, strict=True)
    }


async def reload_weights(
    pool: InferencePool,
    directory: Path,
    timeout_s: float = RELOAD_TIMEOUT_S,
    urls: list[str] | None = None,
) -> None:
    """vLLM's in-place reload of checkpoint-format safetensors from `directory` (a path every
    server can read) through its own loader: name mapping, fusing and casting are vLLM's."""
    await post_each(
        pool,
        "/collective_rpc",
        "reload_weights",
        timeout_s=timeout_s,
        json={
            "method": "reload_weights",
            "kwargs": {"weights_path": str(directory.resolve())},
            "timeout": timeout_s,
        },
        urls=urls,
    )


async def reset_prefix_cache(pool: InferencePool, urls: list[str] | None = None) -> None:
    """Drop KV computed with the old weights; frozen requests re-prefill on the new ones."""
    replies = await post_each(
        pool,
        "/reset_prefix_cache",
        "reset_prefix_cache",
        params={"reset_running_requests": "true"},
        urls=urls,
    )
    for url, reply in replies.items():
        if not (reply or {}).get("success"):
            raise ControlError(
                url, "reset_prefix_cache", "the prefix cache still holds KV of the old weights"
            )
