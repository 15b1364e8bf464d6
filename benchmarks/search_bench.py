"""Search service benchmark: throughput and latency of the real service, and retrieval quality.

    .venv/bin/python benchmarks/search_bench.py [--passages 100000] [--dense-passages 3000]

1. Generates a QA world of `--passages` passages (`agentrl data make-qa-world`) and indexes it
   with BM25 (`agentrl search index`), timing the build.
2. Starts the service through its entrypoint in a subprocess (result cache off, so every
   request searches) and drives it from this process: one query per request, top_k 3
   (Search-R1's default), questions of the world as queries, for `--duration-s` seconds at
   concurrency 1 and 32, over gRPC and over HTTP. Prints queries/s and p50/p99 latency.
3. Recall@1/3/10 of the supporting passages (the share of a question's supporting passages in
   the top k for the question text) for single-hop and multi-hop questions with BM25 on the
   big world, and BM25 vs dense vs hybrid on a `--dense-passages` world: encoding 100,000
   passages with MiniLM takes ~15-30 minutes on two cores, beyond this benchmark's budget.

Everything runs on loopback and stops by itself; total ~6-9 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CONCURRENCIES = (1, 32)
TOP_K = 3
RECALL_KS = (1, 3, 10)


def build_world(out: Path, passages: int, questions: int, dense: bool) -> dict:
    from agentrl.search.indexer import build_index
    from agentrl.search.qa_questions import make_qa_world

    started = time.perf_counter()
    make_qa_world(out, seed=0, num_passages=passages, num_questions=questions)
    generated_s = time.perf_counter() - started
    manifest = build_index(out / "corpus.jsonl", out / "index", dense=dense, progress=False)
    size_mb = sum(p.stat().st_size for p in (out / "index").rglob("*") if p.is_file()) / 2**20
    print(
        f"world: {manifest['num_passages']} passages generated in {generated_s:.1f} s; "
        f"indexed ({'+'.join(manifest['methods'])}) in {manifest['build_seconds']:.1f} s "
        f"({manifest['num_passages'] / manifest['build_seconds']:.0f} passages/s), "
        f"{size_mb:.0f} MB on disk",
        flush=True,
    )
    return manifest


def start_service(index_dir: Path) -> tuple[subprocess.Popen, str, str]:
    env = {
        **os.environ,
        "AGENTRL__SEARCH__GRPC_PORT": "0",
        "AGENTRL__SEARCH__HTTP_PORT": "0",
        "AGENTRL__SEARCH__INDEX_DIR": str(index_dir),
        "AGENTRL__SEARCH__CACHE_SIZE": "0",
        "AGENTRL__SEARCH__MAX_CONCURRENCY": "64",
    }
    env.pop("AGENTRL_AUTH_TOKEN", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "agentrl.common.cli", "serve", "search"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    for line in process.stderr:
        if "search service ready" in line:
            grpc_address = re.search(r"grpc=(\S+)", line).group(1)
            http_url = re.search(r"http=(\S+)", line).group(1)
            # Keep draining stderr so the service never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
            return process, grpc_address, http_url
        if time.monotonic() > deadline:
            break
    process.kill()
    raise RuntimeError("the search service did not report ready")


def load_test(make_call, queries: list[str], concurrency: int, duration_s: float) -> dict:
    """Each of `concurrency` threads sends one query per request until the time is up."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    stop_at = time.perf_counter() + duration_s
    barrier = threading.Barrier(concurrency + 1)

    def worker(slot: int) -> None:
        call = make_call()
        call(queries[slot])  # connect and warm up outside the measurement
        barrier.wait()
        i = slot
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            call(queries[i % len(queries)])
            latencies[slot].append(time.perf_counter() - started)
            i += concurrency

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    values = np.array([v for per in latencies for v in per])
    return {
        "concurrency": concurrency,
        "requests": len(values),
        "qps": len(values) / elapsed,
        "p50_ms": float(np.percentile(values, 50) * 1e3),
        "p99_ms": float(np.percentile(values, 99) * 1e3),
    }


def grpc_caller(address: str):
    from agentrl.common.grpc_client import create_channel
    from agentrl.proto.search.v1 import search_pb2, search_pb2_grpc

    def make():
        stub = search_pb2_grpc.SearchServiceStub(create_channel(address, token=None))
        return lambda q: stub.Retrieve(search_pb2.RetrieveRequest(queries=[q], top_k=TOP_K))

    return make


def http_caller(url: str):
    import httpx

    def make():
        client = httpx.Client(base_url=url, timeout=30)

        def call(q: str) -> None:
            client.post("/retrieve", json={"queries": [q], "topk": TOP_K}).raise_for_status()

        return call

    return make


def recall_table(index_dir: Path, world: Path, methods: tuple[str, ...]) -> list[dict]:
    from agentrl.search.qa_questions import read_questions
    from agentrl.search.retriever import SearchIndex

    index = SearchIndex(index_dir)
    questions = read_questions(world / "train.jsonl") + read_questions(world / "test.jsonl")
    rows = []
    for method in methods:
        started = time.perf_counter()
        hits = index.retrieve([q["question"] for q in questions], max(RECALL_KS), method)
        per_query_ms = (time.perf_counter() - started) / len(questions) * 1e3
        for label, keep in (
            ("single-hop", lambda h: h == 1),
            ("multi-hop", lambda h: h > 1),
            ("2-hop", lambda h: h == 2),
            ("3-hop", lambda h: h == 3),
            ("4-hop", lambda h: h == 4),
        ):
            chosen = [(q, r) for q, r in zip(questions, hits) if keep(q["hops"])]
            row = {
                "method": method,
                "questions": label,
                "n": len(chosen),
                "batch_ms_per_query": per_query_ms,
            }
            for k in RECALL_KS:
                row[f"recall@{k}"] = float(
                    np.mean(
                        [
                            len(set(q["supporting_ids"]) & {h.passage.id for h in r[:k]})
                            / len(q["supporting_ids"])
                            for q, r in chosen
                        ]
                    )
                )
            rows.append(row)
    return rows


def print_recall(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print(
        f"{'method':<8} {'questions':<11} {'n':>5} "
        + " ".join(f"{f'R@{k}':>6}" for k in RECALL_KS)
        + f" {'ms/query':>9}"
    )
    for r in rows:
        print(
            f"{r['method']:<8} {r['questions']:<11} {r['n']:>5} "
            + " ".join(f"{r[f'recall@{k}']:>6.3f}" for k in RECALL_KS)
            + f" {r['batch_ms_per_query']:>9.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, default=100_000)
    # Encoding is ~15-60 ms per passage on two busy cores: 3,000 passages keep the run < 10 min.
    parser.add_argument("--dense-passages", type=int, default=3_000)
    parser.add_argument("--questions", type=int, default=4_000)
    parser.add_argument("--duration-s", type=float, default=15.0)
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="search-bench-"))
    results: dict = {"machine_cpus": os.cpu_count()}
    big, small = work / f"world-{args.passages}", work / f"world-{args.dense_passages}"
    results["big_world"] = build_world(big, args.passages, args.questions, dense=False)

    from agentrl.search.qa_questions import read_questions

    queries = [q["question"] for q in read_questions(big / "train.jsonl")]
    process, grpc_address, http_url = start_service(big / "index")
    try:
        print(
            f"\nservice load test: {args.passages} passages, BM25, top_k {TOP_K}, one query per "
            f"request, cache off, {args.duration_s:.0f} s per row"
        )
        print(
            f"{'transport':<9} {'conc':>4} {'requests':>8} {'qps':>8} {'p50 ms':>8} {'p99 ms':>8}"
        )
        results["load"] = []
        for transport, caller in (
            ("grpc", grpc_caller(grpc_address)),
            ("http", http_caller(http_url)),
        ):
            for concurrency in CONCURRENCIES:
                row = {
                    "transport": transport,
                    **load_test(caller, queries, concurrency, args.duration_s),
                }
                results["load"].append(row)
                print(
                    f"{transport:<9} {concurrency:>4} {row['requests']:>8} {row['qps']:>8.0f} "
                    f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}",
                    flush=True,
                )
    finally:
        process.terminate()
        process.wait(timeout=30)

    results["recall_big"] = recall_table(big / "index", big, ("bm25",))
    print_recall(f"recall of supporting passages, {args.passages} passages", results["recall_big"])
    results["small_world"] = build_world(small, args.dense_passages, 2_000, dense=True)
    results["recall_small"] = recall_table(small / "index", small, ("bm25", "dense", "hybrid"))
    print_recall(
        f"BM25 vs dense vs hybrid, {args.dense_passages} passages", results["recall_small"]
    )
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nresults: {work / 'results.json'}")


if __name__ == "__main__":
    main()
