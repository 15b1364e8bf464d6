"""Data set loading (JSONL, Parquet, bad rows) and the seeded, resumable epoch order."""

from __future__ import annotations

import json

import pytest

from agentrl.trainer.data import EpochOrder, PromptRow, load_prompts


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {
    "prompt": "What is 2+3?",
    "ground_truth": 5,
    "task_type": "math",
    "tools": ["python"],
    "difficulty": 1,
}


def test_jsonl_rows_are_parsed_with_ids_and_metadata(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [GOOD, "", {**GOOD, "id": "p7", "tools": None}])
    first, second = load_prompts(path)
    assert first == PromptRow(
        prompt_id="train-1",
        prompt="What is 2+3?",
        ground_truth="5",
        task_type="math",
        tools=("python",),
        metadata={"difficulty": "1"},
    )
    assert second.prompt_id == "p7" and second.tools == ()


@pytest.mark.parametrize(
    "row, message",
    [
        ({**GOOD, "prompt": None}, r"train.jsonl:2: field 'prompt' is missing"),
        (
            {k: v for k, v in GOOD.items() if k != "ground_truth"},
            r"train.jsonl:2: field 'ground_truth' is missing",
        ),
        ({**GOOD, "task_type": " "}, r"train.jsonl:2: field 'task_type' is empty"),
        ({**GOOD, "tools": "python"}, r"train.jsonl:2: field 'tools' must be a list"),
        ({**GOOD, "prompt": ["a"]}, r"train.jsonl:2: field 'prompt' must be a string, got list"),
        ("{not json", r"train.jsonl:2: not valid JSON"),
        ([1, 2], r"train.jsonl:2: expected an object"),
    ],
)
def test_bad_rows_name_the_line_and_field(tmp_path, row, message):
    path = write_jsonl(tmp_path / "train.jsonl", [GOOD, row])
    with pytest.raises(ValueError, match=message):
        load_prompts(path)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_prompts(tmp_path / "none.jsonl")
    (tmp_path / "x.csv").write_text("a\n")
    with pytest.raises(ValueError, match="unknown data format '.csv'"):
        load_prompts(tmp_path / "x.csv")


def test_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([GOOD, {**GOOD, "task_type": ""}])
    pq.write_table(table, tmp_path / "train.parquet")
    with pytest.raises(ValueError, match=r"train.parquet row 1: field 'task_type' is empty"):
        load_prompts(tmp_path / "train.parquet")
    pq.write_table(pa.Table.from_pylist([GOOD]), tmp_path / "ok.parquet")
    assert load_prompts(tmp_path / "ok.parquet")[0].tools == ("python",)


def test_every_epoch_is_a_permutation_and_epochs_differ():
    order = EpochOrder(list(range(10)), seed=3)
    epoch_0, epoch_1 = order.take(10), order.take(10)
    assert sorted(epoch_0) == sorted(epoch_1) == list(range(10))
    assert epoch_0 != epoch_1 and epoch_0 != list(range(10))
    assert EpochOrder(list(range(10)), seed=3).take(20) == epoch_0 + epoch_1  # seed fixes it
    assert EpochOrder(list(range(10)), seed=4).take(10) != epoch_0
    assert EpochOrder(list(range(4)), seed=0, shuffle=False).take(6) == [0, 1, 2, 3, 0, 1]


def test_a_restored_position_continues_exactly():
    uninterrupted = EpochOrder(list(range(7)), seed=11)
    first = uninterrupted.take(5)
    state = json.loads(json.dumps(uninterrupted.state_dict()))  # as it is checkpointed
    expected = uninterrupted.take(9)  # crosses into epoch 1 and 2
    resumed = EpochOrder(list(range(7)), seed=11)
    resumed.load_state_dict(state)
    assert resumed.take(9) == expected
    assert first + expected[:2] == EpochOrder(list(range(7)), seed=11).take(7)
    with pytest.raises(ValueError, match="same data file and run.seed"):
        EpochOrder(list(range(8)), seed=11).load_state_dict(state)
