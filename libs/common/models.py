"""Tiny models made locally: a byte-level BPE tokenizer trained on the task's text plus a small,
randomly initialised Qwen3-architecture model, saved so that transformers and `vllm serve` both
load the directory (shared by rollout, trainer and tests; nothing is downloaded).

    from agentrl.common.models import init_tiny_model
    init_tiny_model("runs/local/model", texts, preset="tiny")

Tokenizer choices (why):
- Byte-level BPE (GPT-2 pre-tokenisation, no normaliser): every string round-trips exactly, so a
  trajectory's token ids decode to exactly the text the model saw.
- Digits are single tokens: `4821` is the same four ids after a space, a bracket or a newline,
  which is what lets a tiny model copy operands into code and a tool result into its answer.
- Chat markers (`<|im_start|>`, `<|im_end|>`, `<|endoftext|>`) are *special* tokens: one id
  each, skipped when decoding with `skip_special_tokens=True`.
- Tool tags (`<code>`, `</code>`, `<output>`, ...) are *added, non-special* tokens: one id each,
  kept in decoded text. BPE could learn them too, but then a tag might merge with its neighbours
  (`>\n`, `"</`) depending on context, so the same tag would tokenise differently inside a
  model turn and inside an observation tokenised on its own. As single ids they are token
  boundaries everywhere: stop strings end exactly on them and appending separately tokenised
  pieces never changes ids.

What this does NOT cover: importing a pretrained checkpoint (GGUF import is a separate command).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# Chat markers (Qwen/ChatML spelling, so chat templates written for Qwen read naturally).
END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END)
# Tool tags of every tool format the rollout parses (code_tags, search_tags, hermes).
TOOL_TAGS = (
    "<code>",
    "</code>",
    "<python>",
    "</python>",
    "<output>",
    "</output>",
    "<search>",
    "</search>",
    "<result>",
    "</result>",
    "<information>",
    "</information>",
    "<answer>",
    "</answer>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
)
# ChatML, like Qwen's: the prompt ends with an open assistant turn when asked for one.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ModelPreset:
    """Sizes of a locally initialised Qwen3 model and its tokenizer."""

    vocab_size: int
    """Upper bound for BPE training; a small corpus yields fewer tokens."""
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_position_embeddings: int


PRESETS: dict[str, ModelPreset] = {
    # ~0.5M parameters (vocab ~1k): trains on 2 CPU cores in minutes, vLLM on CPU serves ~300 tokens/s.
    "tiny": ModelPreset(
        vocab_size=1024,
        hidden_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=384,
        max_position_embeddings=4096,
    ),
    # ~4M parameters: for tasks the tiny one cannot fit; still CPU-trainable.
    "small": ModelPreset(
        vocab_size=4096,
        hidden_size=256,
        num_layers=4,
        num_heads=8,
        num_kv_heads=4,
        intermediate_size=768,
        max_position_embeddings=4096,
    ),
}


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `texts`, with the chat and tool tags."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    # Digits split one by one first (as Llama and Qwen do): a number is the same ids in the
    # prompt, inside code and in a tool result, so a small model can copy it token by token.
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[IM_START],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens(list(TOOL_TAGS), special_tokens=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def init_tiny_model(
    out_dir: str | Path, texts: Iterable[str], preset: str = "tiny", seed: int = 0
) -> Path:
    """Train a tokenizer on `texts`, initialise a Qwen3 model of `preset` with `seed`, save both.

    The directory holds config.json, generation_config.json, model.safetensors (float32) and the
    tokenizer files; `AutoModelForCausalLM.from_pretrained(out_dir)` and `vllm serve out_dir`
    load it. Returns the directory.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError(
            "texts is empty: pass the task's prompts and answers to train the "
            "tokenizer on (or use default_corpus())"
        )
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    sizes = PRESETS[preset]
    tokenizer = train_tokenizer(texts, sizes.vocab_size)
    head_dim = sizes.hidden_size // sizes.num_heads
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size,
        num_hidden_layers=sizes.num_layers,
        num_attention_heads=sizes.num_heads,
        num_key_value_heads=sizes.num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=sizes.max_position_embeddings,
        tie_word_embeddings=True,
        rope_theta=10_000.0,
        bos_token_id=tokenizer.convert_tokens_to_ids(IM_START),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=config.bos_token_id,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "agentrl_model.json").write_text(
        json.dumps(
            {
                "preset": preset,
                "seed": seed,
                "num_parameters": model.num_parameters(),
                "num_training_texts": len(texts),
            },
            indent=2,
        )
        + "\n"
    )
    return out


def default_corpus(num_examples: int = 2000, seed: int = 0) -> list[str]:
    """Calculator-task text in the quickstart's format (prompt, `<code>` call, `<output>`,
    `<answer>`), used when `agentrl model init` is given no data: enough digits, operators,
    Python and tags for the tokenizer to cover the task."""
    rng = random.Random(seed)
    texts = []
    for _ in range(num_examples):
        a, b, c = rng.randint(10, 99999), rng.randint(10, 9999), rng.randint(2, 999)
        op = rng.choice(["+", "-", "*"])
        right = b * c if rng.random() < 0.5 else b
        expression = f"{a} {op} {b} * {c}" if right != b else f"{a} {op} {b}"
        value = {"+": a + right, "-": a - right, "*": a * right}[op]
        question = f"What is {expression}? Use Python if it helps."
        texts.append(
            f"{IM_START}user\n{question}{IM_END}\n{IM_START}assistant\n"
            f"Let me compute it.\n<code>\nprint({expression})\n</code>\n"
            f"<output>\n{value}\n</output>\nThe result is <answer>{value}</answer>{IM_END}\n"
        )
    return texts


def read_corpus(path: str | Path) -> list[str]:
    """Texts from a file: JSONL rows (every string value, and the contents of a `messages`
    list) or plain text lines."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"corpus file {path} not found; pass a JSONL or text file")
    texts = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            row = json.loads(line)
            texts.extend(v for v in row.values() if isinstance(v, str))
            # SFT rows: {"messages": [{"role", "content"}, ...]}: their contents too.
            texts.extend(
                m["content"]
                for m in row.get("messages", ())
                if isinstance(m, dict) and isinstance(m.get("content"), str)
            )
        else:
            texts.append(line)
    return texts
