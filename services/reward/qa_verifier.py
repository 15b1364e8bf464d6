"""The `qa` verifier: exact match and token F1 after SQuAD normalisation, over gold aliases.

Normalisation (the SQuAD / Search-R1 one): lower case, drop ASCII punctuation, drop the articles
a/an/the, collapse whitespace. Token F1 counts shared tokens with multiplicity. Both are taken
as the best over every alias. The score is EM (`qa_metric: em`, Search-R1) or F1
(`qa_metric: f1`, ASearcher); the reason always shows both.

Ground truth: a plain answer, a JSON list of aliases (`["Paris", "City of Paris"]`), or a JSON
object with the list under `aliases`, `target` (Search-R1's golden_answers) or `answers`.
The answer is the last `<answer>` block, else the last `\\boxed{}`.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from typing import Literal

from agentrl.reward import answers, format_gate
from agentrl.reward.verifier import (
    CORRECT,
    INCORRECT,
    NO_ANSWER,
    PARTIAL,
    Verification,
    VerifyInput,
    clip_reason,
    preview,
)

_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ALIAS_KEYS = ("aliases", "target", "answers")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES_RE.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Harmonic mean of token precision and recall after normalisation (0.0 with no overlap)."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def parse_aliases(ground_truth: str) -> list[str]:
    """Gold aliases from a plain string or JSON; ValueError naming what to fix."""
    text = ground_truth.strip()
    value: object = text
    if text[:1] in '[{"':
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"ground_truth looks like JSON but does not parse: {exc}") from None
    if isinstance(value, dict):
        key = next((k for k in _ALIAS_KEYS if k in value), None)
        if key is None:
            raise ValueError(f"ground_truth JSON object needs one of the keys {list(_ALIAS_KEYS)}")
        value = value[key]
    aliases = [value] if isinstance(value, str) else value
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise ValueError("ground_truth aliases must be strings")
    aliases = [a for a in aliases if a.strip()]
    if not aliases:
        raise ValueError("ground_truth holds no non-empty answer")
    return aliases


def verify_qa(item: VerifyInput, metric: Literal["em", "f1"], apply_gate: bool) -> Verification:
    """In a worker: the format gate (if asked), then EM or F1 (best alias) of the final answer.

    PARTIAL when 0 < F1 < 1 under `f1`.
    """
    if metric not in ("em", "f1"):
        raise ValueError(f"qa_metric must be 'em' or 'f1', got {metric!r}")
    if apply_gate and (failed := format_gate.gate(item, boxed_answers=True)) is not None:
        return failed
    aliases = parse_aliases(item.ground_truth)
    final = answers.final_answer(item.response_text)
    if final.answer is None:
        return Verification(NO_ANSWER, 0.0, "no final answer (no <answer> or \\boxed{})")
    em = max(exact_match(final.answer, gold) for gold in aliases)
    f1 = max(token_f1(final.answer, gold) for gold in aliases)
    score = em if metric == "em" else f1
    verdict = CORRECT if score == 1.0 else INCORRECT if score == 0.0 else PARTIAL
    reason = (
        f"answer {preview(final.answer)}: EM {em:.0f}, F1 {f1:.3f} over {len(aliases)} alias(es)"
    )
    return Verification(verdict, score, clip_reason(reason))
