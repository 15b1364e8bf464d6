"""parse_generation: the reply of vLLM's generate route as aligned per-token lists."""

from __future__ import annotations

import random

import pytest

from agentrl.common.inference.pool import InferenceError, parse_generation


def vllm_candidates(
    rng: random.Random, k: int, sampled_rank: int, with_rank: bool = False
) -> list[dict]:
    """One position as vLLM lists it when asked for k log-probs: the sampled token first, then
    the other candidates in rank order, k entries in all (ties included, as log-probs repeat);
    `rank` (1 = best) as vLLM sends it, or none as a NaN log-prob or an older server does."""
    values = sorted((round(-rng.expovariate(1.0), 1) for _ in range(k + 2)), reverse=True)
    ranked = [(1000 + r, v, r + 1) for r, v in enumerate(values)]
    sampled = ranked[sampled_rank]
    rest = [c for c in ranked if c != sampled]
    return [
        {"token_id": t, "logprob": v, **({"rank": r} if with_rank else {})}
        for t, v, r in [sampled, *rest][:k]
    ]


def reply(content: list[dict] | None, spans: list[dict] | None = None) -> dict:
    token_ids = [c[0]["token_id"] for c in content] if content else [5, 6, 7]
    return {
        "choices": [
            {
                "token_ids": token_ids,
                "logprobs": None
                if content is None
                else {
                    "content": [
                        {
                            "token_id": c[0]["token_id"],
                            "logprob": c[0]["logprob"],
                            "top_logprobs": c,
                        }
                        for c in content
                    ]
                },
                "finish_reason": "length",
                "stop_reason": None,
                "weight_versions": spans or [],
            }
        ]
    }


@pytest.mark.parametrize("with_rank", [True, False])
@pytest.mark.parametrize("num_top", [1, 3, 5])
def test_top_k_is_the_best_k_with_the_sampled_token_in_its_place(num_top, with_rank):
    rng = random.Random(num_top)
    # The client asks vLLM for num_top + 1 entries; the sampled token ranks anywhere.
    content = [
        vllm_candidates(rng, num_top + 1, rng.randrange(num_top + 2), with_rank) for _ in range(300)
    ]
    out = parse_generation(reply(content), "http://x", num_top)
    for got, candidates in zip(out.top_logprobs, content, strict=True):
        pairs = [(c["token_id"], c["logprob"]) for c in candidates]
        expected = sorted(pairs, key=lambda p: -p[1])[:num_top]  # a stable sort's answer
        if with_rank:  # ties ordered by vLLM's rank, not by position in its list
            assert [lp for _, lp in got] == [lp for _, lp in expected]
            assert len(set(got)) == len(got) and set(got) <= set(pairs)
            ranked = sorted(candidates, key=lambda c: c["rank"])[:num_top]
            assert got == [(c["token_id"], c["logprob"]) for c in ranked]
        else:
            assert got == expected
    assert out.logprobs == [c[0]["logprob"] for c in content]


def test_without_top_k_only_the_sampled_log_probs_and_empty_lists():
    rng = random.Random(0)
    content = [vllm_candidates(rng, 1, 0) for _ in range(4)]
    out = parse_generation(reply(content), "http://x", 0)
    assert out.top_logprobs == [[], [], [], []]
    assert out.logprobs == [c[0]["logprob"] for c in content]
    no_logprobs = parse_generation(reply(None), "http://x", 0)
    assert (no_logprobs.logprobs, no_logprobs.top_logprobs) == ([], [])


def test_weight_version_spans_and_a_misaligned_reply():
    one = parse_generation(reply(None, [{"start": 0, "end": 3, "version": "4"}]), "u")
    assert one.policy_versions == [4, 4, 4]
    two = parse_generation(
        reply(
            None,
            [{"start": 0, "end": 1, "version": "default"}, {"start": 1, "end": 3, "version": "2"}],
        ),
        "u",
    )
    assert two.policy_versions == [0, 2, 2]
    bad = reply([vllm_candidates(random.Random(1), 1, 0)])
    bad["choices"][0]["token_ids"].append(9)
    with pytest.raises(InferenceError, match="1 log-probs for 2 tokens"):
        parse_generation(bad, "u")
