"""The trainer's group intake: each idempotency key trained once, and the record of what was.

    intake = GroupIntake(groups_queue, run_dir)
    if intake.admit(entry):            # False: a copy of a group already consumed; acked, counted
        ...use the group...
    intake.record_step(step, version, consumed)   # one line in <run dir>/groups.jsonl
    intake.committed()                 # after the checkpoint completed the window's entries

Exactly once, in two layers (docs/streams.md):
- across checkpoints, the consumer group's done set: `complete()` records a key once the update
  that used it is checkpointed; a later copy is found `is_done` and acked.
- within a checkpoint window (the done set is not written yet), the keys consumed since the last
  checkpoint, held here: a second delivery of the same key (a rollout worker killed between
  publishing its group and completing its task, so its task ran twice) is acked and skipped,
  and counted (`duplicates_skipped`, the `groups_duplicate_skipped` step metric). The original
  stays pending until the checkpoint, so a crash before it replays the original, not the copy.
- between a checkpoint and its `complete()`: the checkpoint stores the window's keys
  (`state()`); a run resumed from it completes (records and acks) a replayed entry with one of
  those keys instead of training it a second time (`load_state`).

The group log, `<run dir>/groups.jsonl`: one record per collection of groups, in order,
`{"step", "policy_version", "trained", "groups": [{"group_id", "key", "entry_id", "kept",
"delivery"}], "duplicates": [{"key", "entry_id"}]}` (`step` is the step the groups were read
for; `trained` false when none of them had a usable sample and no step was taken), and a
`{"resumed_from_step": S}` line each time a run resumes from the checkpoint of step S.
`read_group_history` replays the file: a resume drops the records of steps after S written
before it (their updates were lost with the crash, and the replayed step replaces them), so
what it returns is the run's history as the weights saw it. Written and flushed on rank 0 per
step; a line torn by a kill is skipped on read.

Not covered: several trainer replicas consuming one stream (the window is one process's).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agentrl.common.logging import get_logger
from agentrl.common.streams import StreamEntry, StreamQueue

log = get_logger(__name__)

GROUP_LOG_FILE = "groups.jsonl"


class GroupIntake:
    """Dedupe of group entries within a checkpoint window, and the per-step group log."""

    def __init__(self, queue: StreamQueue, run_dir: str | Path | None) -> None:
        self.queue = queue
        self.window: set[str] = set()  # keys consumed since the last checkpoint
        self.checkpointed: set[str] = set()  # keys the restored checkpoint had trained on
        self.duplicates: list[StreamEntry] = []  # skipped since the last record_step
        self.duplicates_skipped = 0  # over the process's life
        self.path = Path(run_dir) / GROUP_LOG_FILE if run_dir is not None else None
        self._file = None

    def admit(self, entry: StreamEntry) -> bool:
        """True when `entry`'s key is new to the run: the caller consumes it. A copy of a key
        completed at an earlier checkpoint, or consumed in this window, is acked and False."""
        if entry.key in self.window:
            log.warning(
                "a second copy of a group consumed in this checkpoint window was skipped",
                extra={"key": entry.key, "entry": entry.id, "delivery": entry.delivery_count},
            )
            self.queue.ack(entry)
            self.duplicates.append(entry)
            self.duplicates_skipped += 1
            return False
        if entry.key in self.checkpointed:  # trained before the checkpoint, not completed
            self.queue.complete(entry)
            return False
        if self.queue.is_done(entry):  # completed at an earlier checkpoint
            self.queue.ack(entry)
            return False
        self.window.add(entry.key)
        return True

    def state(self) -> list[str]:
        """What a checkpoint keeps: the keys its update consumed since the previous one."""
        return sorted(self.window)

    def load_state(self, keys: Iterable[str]) -> None:
        """Resuming from a checkpoint that stored `keys` (`state()`)."""
        self.checkpointed = set(keys)

    def committed(self) -> None:
        """The window's entries were completed (their keys are in the done set now)."""
        self.window.clear()  # `checkpointed` stays: a replayed entry may still sit in carry

    # ---- the group log -----------------------------------------------------------------------

    def _open(self):
        if self._file is None and self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torn = (
                self.path.exists()
                and self.path.stat().st_size > 0
                and not self.path.read_bytes().endswith(b"\n")
            )
            self._file = self.path.open("a")
            if torn:  # a kill mid-write left half a line: start on a fresh one
                self._file.write("\n")
        return self._file

    def _write(self, record: dict[str, Any]) -> None:
        handle = self._open()
        if handle is not None:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

    def record_resume(self, step: int) -> None:
        """The run restarts from the checkpoint of `step` (0: from scratch after a crash)."""
        self._write({"resumed_from_step": step})

    def record_step(
        self,
        step: int,
        policy_version: int,
        consumed: Iterable[tuple[Any, StreamEntry, bool]],
        *,
        trained: bool,
    ) -> int:
        """Log the groups read for `step`: (Group, its entry, kept) triples. Returns how many
        duplicates were skipped since the previous record (the step metric)."""
        duplicates, self.duplicates = self.duplicates, []
        self._write(
            {
                "step": step,
                "policy_version": policy_version,
                "trained": trained,
                "groups": [
                    {
                        "group_id": group.group_id,
                        "key": entry.key,
                        "entry_id": entry.id,
                        "kept": kept,
                        "delivery": entry.delivery_count,
                    }
                    for group, entry, kept in consumed
                ],
                "duplicates": [{"key": e.key, "entry_id": e.id} for e in duplicates],
            }
        )
        return len(duplicates)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_group_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The step records of `<run_dir>/groups.jsonl` as the run's weights saw them: records of
    steps after a resume point, written before that resume, are dropped (replayed since)."""
    path = Path(run_dir) / GROUP_LOG_FILE
    if not path.is_file():
        return []
    records: list[dict[str, Any]] = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # torn by a kill
            continue
        if "resumed_from_step" in record:
            resumed = record["resumed_from_step"]
            records = [r for r in records if r["step"] <= resumed]
        else:
            records.append(record)
    return records


def trained_keys(history: list[dict[str, Any]]) -> list[str]:
    """The idempotency key of every group consumed by the history's steps, with repeats (a
    key listed twice was trained twice)."""
    return [g["key"] for record in history for g in record["groups"]]
