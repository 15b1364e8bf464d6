"""Tiny randomly initialised Qwen3 models (2 layers, hidden 64) for trainer tests: no download.

`tiny_qwen3` has a 101-token vocabulary and no tokenizer; `tiny_checkpoint` is a saved Hugging
Face directory with a byte-level BPE tokenizer trained on calculator-task text
(agentrl.common.models), for the backend, checkpoint and SFT tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# The helpers beside the tests (`from megatron_batches import ...`), which pytest's importlib
# mode does not put on sys.path by itself.
sys.path.insert(0, str(Path(__file__).parent))

VOCAB_SIZE = 101


def build_tiny_qwen3(attn_implementation: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config).eval()  # eval: no dropout, so every forward is repeatable


def random_sequences(lengths: list[int], seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB_SIZE, (n,), generator=generator).tolist() for n in lengths]


@pytest.fixture(scope="module")
def tiny_qwen3() -> torch.nn.Module:
    return build_tiny_qwen3()


@pytest.fixture(scope="module")
def build_model():
    """The builder, for tests that need a fresh model or another attention kernel."""
    return build_tiny_qwen3


@pytest.fixture(scope="module")
def make_sequences():
    return random_sequences


def save_tiny_checkpoint(out_dir, seed: int = 0):
    """A Hugging Face checkpoint dir: tokenizer trained on calculator text + a tiny Qwen3."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from agentrl.common.models import default_corpus, train_tokenizer

    # 300 calculator trajectories (prompt, <code> call, <output>, answer) cover digits, operators,
    # Python and the tags; a 400-token vocabulary keeps the embedding small.
    tokenizer = train_tokenizer(default_corpus(300, seed=0), vocab_size=400)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Path of a saved tiny checkpoint (read-only: copy it before writing into it)."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint"))
