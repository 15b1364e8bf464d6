"""Scores per second of the reward service, for math and for code (through the sandbox), at
concurrency 1 and 32. Everything real: the reward service over gRPC on loopback with its
verifier processes, and (for code) the sandbox service with the bubblewrap backend in-process.

    .venv/bin/python benchmarks/reward_throughput.py [--rounds 3] [--seconds 3] [--workers 2]

Each figure is the number of Score calls answered in a fixed wall-clock window by that many
client threads; the first call of each client is a warm-up and not counted. Math is compared
with its baseline, `verify_math` called directly in this process by the same number of
threads on the same inputs, in paired rounds of rotating order (benchmarks/paired.py). Two
service paths run in every round:

- `service`: the reward service in its own process, as deployed (`agentrl serve reward`); the
  client threads here share nothing with it but the cores. For this path the benchmark also
  prints CPU per score of the client (this process), the service process and its verifier
  processes, which moves far less with the machine's load than the rates do;
- `in-process`: the service started inside this process, so its gRPC server shares one GIL
  with the 32 client threads (the layout of the figures measured before this path existed).

The ratio service / direct (min / median / max) is the cost of gRPC, admission and the
hand-off to a verifier process, less what the processes gain over one GIL.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable

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
    target: str,
    requests: list[tuple[str, str, str]],
    concurrency: int,
    seconds: float,
    on_window: Callable[[str, int], None] | None = None,
) -> float:
    """Score calls per second answered by `concurrency` client threads in `seconds`.

    `on_window("start", 0)` and `on_window("stop", calls)` bracket the counted window.
    """
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
    if on_window is not None:
        on_window("start", 0)
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    elapsed = time.perf_counter() - began
    if on_window is not None:
        on_window("stop", sum(counts))
    for thread in threads:
        thread.join()
    return sum(counts) / elapsed


class ServiceProcess:
    """The reward service in a child process (this file with `--serve`), as deployed."""

    def __init__(self, workers: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", "--workers", str(workers)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.target = self.process.stdout.readline().strip()
        if not self.target:
            raise RuntimeError("the reward service process did not start (see its log above)")

    def cpu_s(self) -> tuple[float, float]:
        """CPU seconds used so far by (the service process, its verifier processes)."""
        import psutil

        service = psutil.Process(self.process.pid)
        workers = 0.0
        for child in service.children(recursive=True):
            try:
                times = child.cpu_times()
                workers += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        times = service.cpu_times()
        return times.user + times.system, workers

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class CpuPerScore:
    """CPU per score of the client, the service and the workers, over measured windows."""

    def __init__(self, service: ServiceProcess) -> None:
        self.service = service
        self.per_round: list[tuple[float, float, float]] = []
        self._start = (0.0, 0.0, 0.0)

    def on_window(self, event: str, calls: int) -> None:
        now = (time.process_time(), *self.service.cpu_s())
        if event == "start":
            self._start = now
        elif calls:
            used = [b - a for a, b in zip(self._start, now)]
            self.per_round.append(tuple(x / calls * 1e6 for x in used))

    def line(self, concurrency: int) -> str:
        parts = []
        for i, name in enumerate(("client", "service", "workers")):
            values = sorted(r[i] for r in self.per_round)
            parts.append(
                f"{name} {values[0]:.0f} / {values[len(values) // 2]:.0f} / {values[-1]:.0f}"
            )
        return (
            f"math c={concurrency} CPU us per score (service in its own process), "
            f"min / median / max: " + ", ".join(parts)
        )


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


def serve_forever(workers: int) -> None:
    """`--serve`: run the reward service, print its address, stop when stdin closes."""
    from agentrl.reward.main import start

    config = {
        "reward": {
            "grpc_port": 0,
            "http_port": 0,
            "num_verifier_workers": workers,
            "max_concurrency": 32,
        }
    }
    service = start(AgentRLConfig.model_validate(config))
    print(service.grpc.address, flush=True)
    sys.stdin.read()
    service.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="window per figure")
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds for math")
    parser.add_argument("--math-only", action="store_true", help="skip code (and the sandbox)")
    parser.add_argument("--workers", type=int, default=2, help="verifier processes")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_forever(args.workers)
        return

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
    service = ServiceProcess(args.workers)
    try:
        math_requests = [("math", response, gold) for response, gold in MATH]
        code_requests = [("code", CODE_RESPONSE, CODE_TESTS)]
        print(
            f"reward service benchmark, {args.workers} verifier processes, "
            f"{args.seconds:g} s per figure; load average {os.getloadavg()[0]:.1f} "
            f"on {os.cpu_count()} cores"
        )
        for concurrency in (1, 32):
            cpu = CpuPerScore(service)
            rates = paired_rounds(
                args.rounds,
                {
                    "direct": lambda r, c=concurrency: measure_direct(
                        math_requests, c, args.seconds
                    ),
                    "service": lambda r, c=concurrency, cpu=cpu: measure(
                        service.target, math_requests, c, args.seconds, cpu.on_window
                    ),
                    "in-process": lambda r, c=concurrency: measure(
                        reward.grpc.address, math_requests, c, args.seconds
                    ),
                },
                lambda r, path, rate, c=concurrency: print(
                    f"  math c={c:<2} round {r} {path:<10} {rate:8.1f} scores/s "
                    f"(load average {os.getloadavg()[0]:.1f})",
                    flush=True,
                ),
            )
            for path in ("service", "in-process"):
                label = f"math c={concurrency} {path} / direct"
                print(ratio_line(label, rates[path], rates["direct"]), flush=True)
            print(cpu.line(concurrency), flush=True)
        if sandbox_server is None:
            print("code: skipped (no bubblewrap, no sandbox)")
            return
        for concurrency in (1, 32):
            rate = measure(reward.grpc.address, code_requests, concurrency, args.seconds)
            print(
                f"code  concurrency {concurrency:>2}: {rate:8.1f} scores/s "
                "(3 asserts each, sandbox max_concurrency 4)"
            )
    finally:
        service.close()
        reward.stop(0)
        if sandbox_server is not None:
            sandbox_server.stop(0)
            servicer.close()
            sandbox.close()


if __name__ == "__main__":
    main()
