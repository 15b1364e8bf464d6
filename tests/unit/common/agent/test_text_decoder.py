"""text_decoder: the agent loop's decode is the tokenizer's own text, whichever path it takes
(the Rust tokenizer directly for a stock fast tokenizer, the tokenizer's decode otherwise)."""

from __future__ import annotations

import random

from agentrl.common.agent.loop import text_decoder
from agentrl.common.models import default_corpus, train_tokenizer


def test_a_stock_fast_tokenizer_decodes_to_the_same_text_as_its_decode() -> None:
    tokenizer = train_tokenizer(default_corpus(200), 400)
    decode = text_decoder(tokenizer)
    assert decode is not tokenizer.decode  # the direct path is the one under test
    rng = random.Random(0)
    samples = [
        tokenizer.encode("<code>\nprint(6 * 7)\n</code> é 42 <answer>42</answer>"),
        list(range(len(tokenizer))),  # every id: special tokens, added tags, lone bytes
        [],
    ] + [[rng.randrange(len(tokenizer)) for _ in range(64)] for _ in range(50)]
    for ids in samples:
        assert decode(ids) == tokenizer.decode(ids)


def test_a_tokenizer_that_cleans_up_spaces_keeps_its_own_decode() -> None:
    tokenizer = train_tokenizer(default_corpus(50), 300)
    tokenizer.clean_up_tokenization_spaces = True
    assert text_decoder(tokenizer) == tokenizer.decode


def test_a_tokenizer_with_its_own_decode_keeps_it() -> None:
    class Shouting:
        backend_tokenizer = train_tokenizer(default_corpus(50), 300).backend_tokenizer
        clean_up_tokenization_spaces = False

        def decode(self, ids: list[int]) -> str:
            return self.backend_tokenizer.decode(ids).upper()

    tokenizer = Shouting()
    assert text_decoder(tokenizer) == tokenizer.decode
