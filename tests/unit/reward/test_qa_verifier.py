"""QA exact match and token F1, checked against values computed by hand."""

from __future__ import annotations

import pytest

from agentrl.reward.qa_verifier import (
    exact_match,
    normalize_answer,
    parse_aliases,
    token_f1,
    verify_qa,
)
from agentrl.reward.verifier import CORRECT, INCORRECT, NO_ANSWER, PARTIAL, VerifyInput


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Beatles", "beatles"),
        ("U.S.A.", "usa"),
        ("  Barack   OBAMA ", "barack obama"),
        ("an apple a day", "apple day"),
        ("another theater", "another theater"),  # articles only as whole words
        ("1,000", "1000"),
        ("well-known", "wellknown"),  # SQuAD drops punctuation, it does not split on it
    ],
)
def test_normalization(text: str, normalized: str) -> None:
    assert normalize_answer(text) == normalized


@pytest.mark.parametrize(
    ("prediction", "gold", "em", "f1"),
    [
        ("The Beatles", "Beatles", 1.0, 1.0),
        ("New York City", "New York", 0.0, 0.8),  # P = 2/3, R = 1, F1 = 2PR/(P+R) = 0.8
        ("New York", "New York City", 0.0, 0.8),  # P = 1, R = 2/3
        ("the the cat cat", "cat", 0.0, 2 / 3),  # 1 shared token (multiplicity): P = 1/2, R = 1
        ("well-known author", "well known author", 0.0, 0.4),  # 1 shared of 2 and 3: P=1/2, R=1/3
        ("Paris", "London", 0.0, 0.0),
        ("the", "a", 1.0, 1.0),  # both normalise to nothing
    ],
)
def test_em_and_f1(prediction: str, gold: str, em: float, f1: float) -> None:
    assert exact_match(prediction, gold) == em
    assert token_f1(prediction, gold) == pytest.approx(f1)


@pytest.mark.parametrize(
    ("ground_truth", "aliases"),
    [
        ("Paris", ["Paris"]),
        ('["Paris", "City of Paris"]', ["Paris", "City of Paris"]),
        ('{"target": ["Paris"]}', ["Paris"]),
        ('{"aliases": ["a", " ", "b"]}', ["a", "b"]),
        ('"Paris"', ["Paris"]),
    ],
)
def test_aliases(ground_truth: str, aliases: list[str]) -> None:
    assert parse_aliases(ground_truth) == aliases


@pytest.mark.parametrize(
    ("ground_truth", "message"),
    [
        ('["Paris", ', "does not parse"),
        ('{"gold": ["Paris"]}', "one of the keys"),
        ("[1, 2]", "must be strings"),
        ('[" "]', "no non-empty"),
    ],
)
def test_bad_aliases(ground_truth: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_aliases(ground_truth)


def test_best_alias_wins_and_f1_gives_partial() -> None:
    item = VerifyInput("qa", "<answer>Paris, France</answer>", '["France", "Paris"]')
    result = verify_qa(item, "f1", apply_gate=True)
    # "paris france" vs "paris": P = 1/2, R = 1 -> 2/3; same for "france".
    assert result.verdict == PARTIAL and result.score == pytest.approx(2 / 3)
    assert verify_qa(item, "em", apply_gate=True).verdict == INCORRECT
    exact = VerifyInput("qa", "<answer>the city of Paris</answer>", '["Paris", "City of Paris"]')
    assert verify_qa(exact, "em", apply_gate=True).verdict == CORRECT


def test_no_answer_and_format_gate() -> None:
    assert verify_qa(VerifyInput("qa", "It is Paris.", "Paris"), "em", True).verdict == NO_ANSWER
    hedged = VerifyInput("qa", "<answer>Paris</answer><answer>Lyon</answer>", "Paris")
    assert verify_qa(hedged, "em", apply_gate=True).reason.startswith("format: 2 <answer> blocks")
    # Search results may hold any text; they are opaque to the gate and to extraction.
    searched = VerifyInput(
        "qa",
        "<search>q</search><information><answer>Lyon</information><answer>Paris</answer>",
        "Paris",
    )
    assert verify_qa(searched, "em", apply_gate=True).verdict == CORRECT
