"""Scores per second of the reward service, for math and for code (through the sandbox), at
concurrency 1 and 32. Everything real: the reward service over gRPC on loopback with its
verifier processes, and (for code) the sandbox service with the bubblewrap backend in-process.

    .venv/bin/python benchmarks/reward_throughput.py [--rounds 3] [--seconds 3] [--workers 2]

Each figure is the number of Score calls answered in a fixed wall-clock window by that many
client threads; the first call of each client is a warm-up and not counted. Math is compared
with its baseline, `verify_math` called directly in this process by the same number of
threads on the same inputs, in paired rounds of rotating order (benchmarks/paired.py): the
ratio service / direct (min / median / max) is the cost of gRPC, admission and the hand-off
to a verifier process, less what the processes gain over one GIL.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import threading
import time

from paired import paired_rounds, ratio_line

from agentrl.common.config import AgentRLConfig

MATH = [  # (response, gold): a mix of forms, right and wrong
    (r"The answer is $\boxed{\frac{1}{2}}$.", "0.5"),
    (r"\boxed{(0,1]}", "(0,1]"),
    (r"<answer>42</answer>", "41"),
    (r"\boxed{x^2+2x+1}", "(x+1)^2"),
    (r"\boxed{2\sqrt{3}}", r"\sqrt{12}"),
]
CODE_TESTS = json.dumps(
    {"asserts": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(10, 5) == 15"]}
)
CODE_RESPONSE = "```python\ndef add(a, b):\n    return a + b\n```"


def measure(
    target: str, requests: list[tuple[str, str, str]], concurrency: int, seconds: float
) -> float:
    """Score calls per second answered by `concurrency` client threads in `seconds`."""
    from agentrl.reward.client import RewardClient

    counts = [0] * concurrency
    stop = threading.Event()
    start_barrier = threading.Barrier(concurrency + 1)

    def client_loop(index: int) -> None:
        with RewardClient(target, token=None) as client:
            cycle = itertools.cycle(requests)
            client.score(*next(cycle))  # warm-up: connection and worker caches
            start_barrier.wait()
            while not stop.is_set():
                result = client.score(*next(cycle))
                assert result.verdict != 6, result.reason  # VERDICT_VERIFIER_ERROR
                counts[index] += 1

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    start_barrier.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - began)


def measure_direct(requests: list[tuple[str, str, str]], concurrency: int, seconds: float) -> float:
    """verify_math calls per second by `concurrency` threads of this process: the baseline."""
    from agentrl.reward.math_verifier import verify_math
    from agentrl.reward.verifier import VerifyInput

    items = [VerifyInput(task, response, gold) for task, response, gold in requests]
    counts = [0] * concurrency
    stop = threading.Event()
    start_barrier = threading.Barrier(concurrency + 1)

    def loop(index: int) -> None:
        cycle = itertools.cycle(items)
        verify_math(next(cycle), False)  # warm-up, as the service clients do
        start_barrier.wait()
        while not stop.is_set():
            verify_math(next(cycle), False)
            counts[index] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    start_barrier.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="window per figure")
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds for math")
    parser.add_argument("--math-only", action="store_true", help="skip code (and the sandbox)")
    parser.add_argument("--workers", type=int, default=2, help="verifier processes")
    args = parser.parse_args()

    from agentrl.common.grpc_server import serve
    from agentrl.reward.main import start

    sandbox_server = sandbox = servicer = None
    config = {
        "reward": {
            "grpc_port": 0,
            "http_port": 0,
            "num_verifier_workers": args.workers,
            "max_concurrency": 32,
        }
    }
    if shutil.which("bwrap") and not args.math_only:
        from agentrl.sandbox.executor import Sandbox
        from agentrl.sandbox.servicer import SERVICE_NAME, SandboxServicer, register

        sandbox_config = AgentRLConfig.model_validate({"sandbox": {"max_concurrency": 4}}).sandbox
        sandbox = Sandbox(sandbox_config)
        servicer = SandboxServicer(sandbox)
        sandbox_server = serve(
            register(servicer), [SERVICE_NAME], port=0, token=None, max_workers=300
        )
        config["sandbox"] = {"address": sandbox_server.address}
    reward = start(AgentRLConfig.model_validate(config))
    target = reward.grpc.address
    try:
        math_requests = [("math", response, gold) for response, gold in MATH]
        code_requests = [("code", CODE_RESPONSE, CODE_TESTS)]
        print(
            f"reward service benchmark, {args.workers} verifier processes, "
            f"{args.seconds:g} s per figure"
        )
        for concurrency in (1, 32):
            rates = paired_rounds(
                args.rounds,
                {
                    "direct": lambda r, c=concurrency: measure_direct(
                        math_requests, c, args.seconds
                    ),
                    "service": lambda r, c=concurrency: measure(
                        target, math_requests, c, args.seconds
                    ),
                },
                lambda r, path, rate, c=concurrency: print(
                    f"  math c={c:<2} round {r} {path:<8} {rate:8.1f} scores/s", flush=True
                ),
            )
            print(
                ratio_line(
                    f"math c={concurrency} service / direct", rates["service"], rates["direct"]
                ),
                flush=True,
            )
        if sandbox_server is None:
            print("code: skipped (no bubblewrap, no sandbox)")
            return
        for concurrency in (1, 32):
            rate = measure(target, code_requests, concurrency, args.seconds)
            print(
                f"code  concurrency {concurrency:>2}: {rate:8.1f} scores/s "
                "(3 asserts each, sandbox max_concurrency 4)"
            )
    finally:
        reward.stop(0)
        if sandbox_server is not None:
            sandbox_server.stop(0)
            servicer.close()
            sandbox.close()


if __name__ == "__main__":
    main()
