"""A tour of the running local stack: one real call to each service, printed as a user sees it.

`make quickstart` runs it between `agentrl up` and `agentrl down`. It is a check as much as a
demo: any call that does not give the expected answer makes it exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import grpc

from agentrl.common import grpc_client
from agentrl.common.config import load_config
from agentrl.proto.core.v1 import group_pb2
from agentrl.proto.search.v1 import search_pb2, search_pb2_grpc
from agentrl.reward.client import RewardClient
from agentrl.sandbox.client import SandboxClient

PROGRAM = "import math\nprint(math.factorial(20) % 1_000_003)"
HOSTILE = "import os\nwhile True:\n    os.fork()"
CODE_TESTS = '{"asserts": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]}'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=None)
    config = load_config(parser.parse_args().recipe)
    failures = 0

    def show(what: str, got: str, ok: bool, elapsed_s: float) -> None:
        nonlocal failures
        failures += not ok
        mark = "ok " if ok else "BAD"
        print(f"  [{mark}] {what:<44} -> {got}  ({elapsed_s * 1000:.0f} ms)")

    print(f"sandbox ({config.sandbox.backend}) at {config.sandbox.target()}")
    with SandboxClient(config.sandbox.target()) as sandbox:
        # A fork bomb fails at the process limit (error) or is killed at the deadline (timeout).
        for code, expect in ((PROGRAM, {"ok"}), (HOSTILE, {"error", "timeout"})):
            start = time.perf_counter()
            result = sandbox.execute(code, timeout_s=2)
            label = "factorial(20) mod 1000003" if code == PROGRAM else "fork bomb (2 s limit)"
            show(
                label,
                f"{result.status.value} {result.stdout.strip()}".strip(),
                result.status.value in expect,
                time.perf_counter() - start,
            )

    print(f"reward at {config.reward.target()}")
    cases = [
        ("math", r"The product is \boxed{\frac{3}{4}}.", "0.75", group_pb2.VERDICT_CORRECT),
        ("math", r"So \boxed{0.7}.", "3/4", group_pb2.VERDICT_INCORRECT),
        (
            "code",
            "```python\ndef add(a, b):\n    return a + b\n```",
            CODE_TESTS,
            group_pb2.VERDICT_CORRECT,
        ),
    ]
    with RewardClient(config.reward.target()) as reward:
        for task_type, response, truth, expect in cases:
            start = time.perf_counter()
            result = reward.score(task_type, response, truth)
            verdict = group_pb2.Verdict.Name(result.verdict).removeprefix("VERDICT_").lower()
            show(
                f"{task_type}: {response.splitlines()[0][:40]}",
                f"{verdict} {result.reward:+.2f}",
                result.verdict == expect,
                time.perf_counter() - start,
            )
    questions = Path("data/qa-world/test.jsonl")
    if questions.is_file():
        print(f"search at {config.search.target()} (questions from {questions})")
        rows = [json.loads(line) for line in questions.read_text().splitlines()[:50]]
        row = next(r for r in rows if len(r.get("supporting_ids", [])) == 1)
        with grpc_client.create_channel(config.search.target()) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            start = time.perf_counter()
            try:
                reply = stub.Retrieve(
                    search_pb2.RetrieveRequest(queries=[row["question"]], top_k=3)
                )
                ids = [p.id for p in reply.results[0].passages]
            except grpc.RpcError as exc:
                ids = [f"error: {exc}"]
            show(
                f"q: {row['question'][:41]}",
                f"top-3 {ids}",
                row["supporting_ids"][0] in ids,
                time.perf_counter() - start,
            )
    print("all answers as expected" if not failures else f"{failures} unexpected answer(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
