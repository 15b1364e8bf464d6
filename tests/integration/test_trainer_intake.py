"""The trainer's group intake against a real Redis: one key is trained once per run, even when
two copies arrive inside one checkpoint window, and groups.jsonl replays across a resume."""

from __future__ import annotations

import json

import redis

from agentrl.common.run_layout import GROUPS_GROUP, RunLayout
from agentrl.common.streams import StreamQueue
from agentrl.proto.core.v1 import group_pb2
from agentrl.trainer.intake import GroupIntake, read_group_history, trained_keys


def _queue(redis_url: str, run_id: str) -> StreamQueue:
    layout = RunLayout(run_id)
    queue = StreamQueue(redis_url, layout.groups, GROUPS_GROUP, consumer=layout.trainer_consumer)
    queue.ensure_group()
    return queue


def _group(key: str, group_id: str) -> group_pb2.Group:
    return group_pb2.Group(group_id=group_id, idempotency_key=key)


def test_a_second_copy_in_one_window_is_skipped_acked_and_counted(redis_url, tmp_path) -> None:
    queue = _queue(redis_url, "intake-window")
    intake = GroupIntake(queue, tmp_path)
    # A worker killed between publish and complete: its task ran again elsewhere, so the same
    # key arrives twice (different group ids), with another group between them.
    for key, group_id in (("k1", "first"), ("k2", "other"), ("k1", "again")):
        queue.publish(_group(key, group_id))
    entries = queue.read(10, 100)
    admitted = [e for e in entries if intake.admit(e)]
    assert [e.decode(group_pb2.Group).group_id for e in admitted] == ["first", "other"]
    assert intake.duplicates_skipped == 1
    # The copy is acked (not pending, so never replayed); the originals wait for the checkpoint.
    assert queue.stats().pending == 2
    consumed = [(e.decode(group_pb2.Group), e, True) for e in admitted]
    assert intake.record_step(1, 0, consumed, trained=True) == 1

    # The checkpoint completes the window; a later copy is caught by the done set, not counted
    # as a window duplicate.
    queue.complete(admitted)
    intake.committed()
    queue.publish(_group("k1", "late"))
    (late,) = queue.read(10, 100)
    assert not intake.admit(late)
    assert intake.duplicates_skipped == 1
    assert queue.stats().pending == 0
    intake.close()

    (record,) = [json.loads(line) for line in (tmp_path / "groups.jsonl").read_text().splitlines()]
    assert [g["group_id"] for g in record["groups"]] == ["first", "other"]
    assert [d["key"] for d in record["duplicates"]] == ["k1"]
    queue.delete()
    queue.close()


def test_keys_of_a_checkpoint_not_yet_completed_are_not_trained_again(redis_url, tmp_path) -> None:
    """A trainer killed after saving a checkpoint but before complete(): the resumed run gets the
    window's entries back from its pending list and must complete them, not train them."""
    queue = _queue(redis_url, "intake-resume")
    queue.publish(_group("k1", "trained-before-the-kill"))
    queue.publish(_group("k2", "not-yet-trained"))
    first = GroupIntake(queue, tmp_path)
    assert all(first.admit(e) for e in queue.read(10, 100))
    saved = ["k1"]  # the checkpoint's window (k2 was read for the next step)

    layout = RunLayout("intake-resume")
    restarted = StreamQueue(
        redis_url, layout.groups, GROUPS_GROUP, consumer=layout.trainer_consumer
    )
    resumed = GroupIntake(restarted, tmp_path)
    resumed.load_state(saved)
    replayed = restarted.read(10, 100)
    assert [e.key for e in replayed] == ["k1", "k2"]
    assert [e.key for e in replayed if resumed.admit(e)] == ["k2"]
    client = redis.Redis.from_url(redis_url)
    assert client.zscore(restarted.done_key, "k1") is not None  # completed, not retrained
    assert restarted.stats().pending == 1
    client.close()
    restarted.delete()
    for q in (queue, restarted):
        q.close()


def test_group_history_drops_steps_lost_to_a_crash(tmp_path) -> None:
    lines = [
        {"step": 1, "policy_version": 0, "trained": True, "groups": [{"key": "a"}]},
        {"step": 2, "policy_version": 1, "trained": True, "groups": [{"key": "b"}]},
        {"step": 3, "policy_version": 2, "trained": False, "groups": [{"key": "c"}]},
        {"step": 3, "policy_version": 2, "trained": True, "groups": [{"key": "d"}]},
        {"resumed_from_step": 2},  # checkpoint of step 2: step 3 is replayed
        {"step": 3, "policy_version": 2, "trained": True, "groups": [{"key": "c"}, {"key": "d"}]},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"step": 4, "gro'  # torn
    (tmp_path / "groups.jsonl").write_text(text)
    history = read_group_history(tmp_path)
    assert [r["step"] for r in history] == [1, 2, 3]
    assert trained_keys(history) == ["a", "b", "c", "d"]
