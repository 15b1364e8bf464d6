"""A tiny randomly initialised Qwen3 (2 layers, hidden 64, vocab 101) for trainer tests: no download."""

from __future__ import annotations

import pytest
import torch

VOCAB_SIZE = 101


def build_tiny_qwen3(attn_implementation: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
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
