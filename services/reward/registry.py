"""Which verifier judges which task type: a plain dict built from RewardConfig.

Built-ins: `math` (gate, answer extraction and integer answers in the service process,
math-verify in a verifier process), `qa`, `format` (run whole in a verifier process) and `code`
(prepared in a verifier process, tests run by the sandbox service). Custom task types come from
`reward.custom_verifiers` as `package.module:function`; the function takes a `VerifyInput` and
returns a `Verification`, and runs in a verifier process under the same deadline as math.
A custom path is imported once at start-up here, so a typo stops the service instead of failing
every request.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import time
from collections.abc import Callable
from typing import Any

from agentrl.common.config import RewardConfig
from agentrl.reward import code_verifier, format_gate, math_verifier, qa_verifier
from agentrl.reward.verifier import Verification, Verifier, VerifierError, VerifyInput
from agentrl.reward.worker_pool import WorkerPool


class PoolVerifier:
    """Runs `function(item, *args)` in the worker pool under the deadline."""

    def __init__(self, pool: WorkerPool, function: Callable[..., Verification], *args: Any) -> None:
        self.pool = pool
        self.function = function
        self.args = args

    def verify(self, item: VerifyInput, deadline_s: float) -> Verification:
        return self.pool.call(self.function, (item, *self.args), deadline_s)


class MathVerifier:
    """`math_verifier.prepare_math` here, then `judge_math` in the worker pool when needed.

    Responses longer than `math_verifier.IN_PROCESS_MAX_CHARS` run whole in a worker.
    """

    def __init__(self, pool: WorkerPool, apply_gate: bool) -> None:
        self.pool = pool
        self.apply_gate = apply_gate

    def verify(self, item: VerifyInput, deadline_s: float) -> Verification:
        if len(item.response_text) > math_verifier.IN_PROCESS_MAX_CHARS:
            return self.pool.call(math_verifier.verify_math, (item, self.apply_gate), deadline_s)
        start = time.monotonic()
        prepared = math_verifier.prepare_math(item, self.apply_gate)
        if isinstance(prepared, Verification):
            return prepared
        remaining_s = deadline_s - (time.monotonic() - start)
        return self.pool.call(math_verifier.judge_math, prepared, remaining_s)


def load_function(path: str) -> Callable[..., Any]:
    """The callable named by `package.module:function`; ValueError saying what is wrong."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"custom verifier {path!r}: cannot import {module_name}: {exc}") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        message = f"custom verifier {path!r}: {module_name} has no function {attribute!r}"
        raise ValueError(message)  # noqa: TRY004 - bad config, not a programming error
    return function


def run_custom(item: VerifyInput, path: str, apply_gate: bool) -> Verification:
    """In a worker: the format gate (if asked), then the custom function; its result checked."""
    if apply_gate and (failed := format_gate.gate(item, boxed_answers=True)) is not None:
        return failed
    result = load_function(path)(item)
    if not isinstance(result, Verification):
        raise VerifierError(
            f"custom verifier {path} returned {type(result).__name__}, "
            "not agentrl.reward.verifier.Verification"
        )
    return result


def build_verifiers(
    config: RewardConfig, pool: WorkerPool, sandbox_stub: Any, executor: cf.ThreadPoolExecutor
) -> dict[str, Verifier]:
    """Task type -> verifier, for every built-in and custom task type of `config`."""
    gated = set(config.format_gate_task_types)
    verifiers: dict[str, Verifier] = {
        "math": MathVerifier(pool, "math" in gated),
        "qa": PoolVerifier(pool, qa_verifier.verify_qa, config.qa_metric, "qa" in gated),
        "format": PoolVerifier(pool, format_gate.verify_format),
        "code": code_verifier.CodeVerifier(
            pool, sandbox_stub, config.code, executor, "code" in gated
        ),
    }
    for name, path in config.custom_verifiers.items():
        load_function(path)
        verifiers[name] = PoolVerifier(pool, run_custom, path, name in gated)
    return verifiers
