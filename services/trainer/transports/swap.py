"""The part of every weight sync that stops generation, shared by the transports:

    pause -> load -> reset the prefix cache -> label the version -> resume -> read labels back

`swap_weights` runs it on `urls` with the transport's own `load` (vLLM's reload from disk, or
the native engine's finish) and returns the pause window (first pause to last resume). Resume
is always attempted, also after a failure (the first error is the one raised); `on_failed_pause`
lets a transport undo what it staged when the pause itself failed. A server that reports
another label afterwards fails the sync naming it, phase `verify`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable

from agentrl.common.inference import control
from agentrl.common.inference.pool import InferenceError, InferencePool
from agentrl.trainer.transports.interface import WeightSyncError


async def swap_weights(
    pool: InferencePool,
    urls: list[str],
    version: int,
    pause_mode: str,
    load: Callable[[], Awaitable[None]],
    phases: dict[str, float],
    *,
    load_phase: str = "load_s",
    on_failed_pause: Callable[[], Awaitable[None]] | None = None,
) -> float:
    paused, loading = time.perf_counter(), False
    try:
        await control.pause(pool, pause_mode, urls)
        mark, loading = time.perf_counter(), True
        await load()
        phases[load_phase] = time.perf_counter() - mark
        mark = time.perf_counter()
        await control.reset_prefix_cache(pool, urls)
        await control.set_weight_version(pool, version, urls)
        phases["reset_and_label_s"] = time.perf_counter() - mark
    except BaseException:
        if not loading and on_failed_pause is not None:
            await on_failed_pause()
        with contextlib.suppress(InferenceError):  # the first error is the one to report
            await control.resume(pool, urls)
        raise
    await control.resume(pool, urls)
    pause_s = time.perf_counter() - paused
    mark = time.perf_counter()
    served = await control.weight_versions(pool, urls)
    wrong = {url: label for url, label in served.items() if label != version}
    if wrong:
        raise WeightSyncError(
            f"after loading version {version}, servers report {wrong}: the label did not take",
            next(iter(wrong)),
            "verify",
        )
    phases["verify_s"] = time.perf_counter() - mark
    return pause_s
