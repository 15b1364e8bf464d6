"""The fault suite's injector and its checks (tests/integration/test_faults.py): one run of the
real local stack (`agentrl up`) and `agentrl train`, signals sent to its processes one at a
time, and what the run's records must show afterwards.

- `Run.inject(fault)`: SIGKILL (a crash) or SIGTERM (a pod evicted: the process must drain by
  itself) to a service's leader, the stack's Redis or the trainer, each once the run has
  recovered from the previous fault (a step record written since), at a random moment of the
  step after that. A service is restarted by the supervisor; the trainer by the injector, as
  its Job would (`agentrl train` again resumes from the checkpoint).
- After each: the process left nothing of its group behind (vLLM's EngineCore, the reward's
  verifiers), SIGTERMed it exited by itself within its stop grace (a service 0, recorded by
  the supervisor; the trainer 143), SIGKILLed the supervisor saw -9.
- `check_history`: every step trained once in the run's history, every group exactly once,
  every admitted prompt trained or still queued.

Waits are bounded and generous (a 2-core CI machine under load); nothing asserts a duration
except the stop grace, the bound a SIGTERMed process must meet on Kubernetes too.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis
import yaml

from agentrl.common import local_stack
from agentrl.common.config import load_config
from agentrl.common.run_layout import GROUPS_GROUP, PROMPTS_GROUP, RunLayout
from agentrl.trainer.intake import read_group_history, trained_keys
from agentrl.trainer.shutdown import TrainingInterrupted

REPO = Path(__file__).resolve().parents[2]
AGENTRL = [sys.executable, "-m", "agentrl.common.cli"]
KILL, TERM = signal.SIGKILL, signal.SIGTERM
# The trainer's pod gets 60 s after SIGTERM (helm trainer.yaml); it needs about a second.
TRAINER_STOP_GRACE_S = 60.0
# A step may wait this long after a fault (vLLM restarts in 30-130 s on a loaded CPU machine).
RECOVERY_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Fault:
    target: str
    """A stack service (`rollout`, `vllm`...), `redis` or `trainer`."""
    signum: int

    def __str__(self) -> str:
        return f"{self.target} {signal.Signals(self.signum).name}"


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def group_gone(pgid: int, timeout_s: float) -> list[int]:
    """Live members of process group `pgid` once it is empty or `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    while (members := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return members


def steps_written(run_dir: Path) -> list[int]:
    """Steps of every record of metrics.jsonl, in order (a replayed step appears again)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            continue
    return steps


class Run:
    """The stack and the trainer of one run, and every process group they ever had."""

    def __init__(self, recipe_path: Path) -> None:
        self.recipe = recipe_path
        self.config = yaml.safe_load(recipe_path.read_text())
        self.run_dir = Path(self.config["run"]["output_dir"])
        self.groups_seen: set[int] = set()
        self.trainer: subprocess.Popen | None = None
        self.trainer_log = self.run_dir.parent / "trainer.log"
        self.trainer_starts = 0

    def cli(self, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*AGENTRL, *args, "--recipe", str(self.recipe)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def stack(self) -> dict:
        state = json.loads((self.run_dir / "stack.json").read_text())
        self.groups_seen.update(s["pid"] for s in state["services"].values() if s["pid"])
        self.groups_seen.add(state["redis_pid"])
        return state

    def start_trainer(self) -> None:
        self.trainer_starts += 1
        with self.trainer_log.open("ab") as log:
            self.trainer = subprocess.Popen(
                [*AGENTRL, "train", "--recipe", str(self.recipe)],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.groups_seen.add(self.trainer.pid)

    def wait_for_records(self, count: int, timeout_s: float = RECOVERY_TIMEOUT_S) -> None:
        """Until metrics.jsonl holds `count` step records (the trainer alive meanwhile)."""
        deadline = time.monotonic() + timeout_s
        while len(steps_written(self.run_dir)) < count:
            if self.trainer.poll() == 2 and self.trainer_starts < 8:
                # `agentrl train` refuses to start while a service is down (exit 2, naming it):
                # start it again, as its pod's restart policy would.
                time.sleep(5)
                self.start_trainer()
            assert self.trainer.poll() is None, self.trainer_tail()
            assert time.monotonic() < deadline, f"no record {count}\n{self.trainer_tail()}"
            time.sleep(0.3)

    def trainer_tail(self) -> str:
        return self.trainer_log.read_text(errors="replace")[-4000:]

    def inject(self, fault: Fault) -> int:
        """Send the fault's signal to its process; for the trainer, wait for its exit and start
        it again. Returns the pid signalled (its process group's id)."""
        if fault.target == "trainer":
            pid = self.trainer.pid
            os.kill(pid, fault.signum)
            code = self.trainer.wait(TRAINER_STOP_GRACE_S)
            if fault.signum == TERM:  # stopped cleanly: not 0, so its Job restarts it
                assert code == TrainingInterrupted(TERM).code, (code, self.trainer_tail())
            self.start_trainer()
            return pid
        state = self.stack()
        pid = (
            state["redis_pid"]
            if fault.target == "redis"
            else state["services"][fault.target]["pid"]
        )
        os.kill(pid, fault.signum)
        return pid

    def check_gone(self, fault: Fault, pid: int, signalled_at: float) -> None:
        """The signalled process and its group are gone; a service was restarted, and a
        SIGTERMed one drained and exited 0 by itself within its stop grace."""
        if fault.signum == TERM and fault.target != "trainer":
            config = load_config(self.recipe, env={})
            grace_s = local_stack.stop_grace_s(config, fault.target)
            left = group_gone(pid, max(0.0, signalled_at + grace_s - time.monotonic()))
            assert left == [], f"{fault}: still running {grace_s:g} s after SIGTERM: {left}"
        # Queued groups can make the next step before the supervisor has seen the death.
        assert group_gone(pid, 120) == [], (str(fault), pid, group_members(pid))
        if fault.target in ("trainer", "redis"):
            return
        deadline = time.monotonic() + 120
        while (service := self.stack()["services"][fault.target])["pid"] == pid:
            assert time.monotonic() < deadline, f"{fault}: not restarted: {service}"
            time.sleep(0.5)
        expected = 0 if fault.signum == TERM else -KILL
        assert service["exit_code"] == expected, (str(fault), service)

    def ride_through(self, faults: list[Fault], rng: random.Random, total_steps: int) -> list:
        """Inject each fault in turn; per fault (fault, step reached, seconds until the next
        step record, index of that record)."""
        measured = []
        for fault in faults:
            self.wait_for_records(len(steps_written(self.run_dir)) + 1)
            time.sleep(rng.uniform(0.0, 1.5))  # a random moment of the step that follows
            written = steps_written(self.run_dir)
            assert written[-1] < total_steps, f"the run ended before {fault}: {measured}"
            signalled_at = time.monotonic()
            pid = self.inject(fault)
            self.wait_for_records(len(written) + 1)  # recovered: a step written since
            pause_s = time.monotonic() - signalled_at
            self.check_gone(fault, pid, signalled_at)
            measured.append((fault, written[-1], pause_s, len(written)))
            print(f"{fault} after step {written[-1]}: next step {pause_s:.1f} s later", flush=True)
        return measured

    def queued_keys(self) -> set[str]:
        """Keys still queued in Redis: a task no worker completed, a group not consumed."""
        client = redis.Redis.from_url(self.config["redis"]["url"])
        layout = RunLayout(self.config["run"]["run_id"])
        queued = set()
        for stream, group in ((layout.prompts, PROMPTS_GROUP), (layout.groups, GROUPS_GROUP)):
            done = {k.decode() for k in client.zrange(f"{stream}:{group}:done", 0, -1)}
            queued |= {f[b"key"].decode() for _i, f in client.xrange(stream)} - done
        client.close()
        return queued


def check_history(run: Run, total_steps: int, queued: set[str]) -> list[dict]:
    """Every step once in the run's history, every group trained once in it, every admitted
    prompt trained or `queued`; returns the step records."""
    records = [
        json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    history = read_group_history(run.run_dir)
    assert [r["step"] for r in history if r["trained"]] == list(range(1, total_steps + 1))
    keys = trained_keys(history)
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)
    # No prompt dropped silently: admitted (its key from the data order) means trained or queued.
    admitted = records[-1]["prompts_admitted"]
    run_id = run.config["run"]["run_id"]
    epoch_size = len(Path(run.config["data"]["train_path"]).read_text().splitlines())
    # The trainer's key is (epoch, offset) before the take, and an epoch rolls over lazily: the
    # 65th prompt of a 64-prompt set is `:0:64`, the 66th `:1:1` (rl_loop.admit, EpochOrder).
    admitted_keys = {f"{run_id}:0:0"} | {
        f"{run_id}:{(i - 1) // epoch_size}:{(i - 1) % epoch_size + 1}" for i in range(1, admitted)
    }
    missing = admitted_keys - set(keys) - queued
    assert not missing, sorted(missing)
    return records


def report(measured: list, records: list[dict], run: Run, state: dict) -> None:
    """What each fault cost (docs/streams.md's fault table) and the run's totals."""
    for fault, reached, seconds, index in measured:
        after = records[index]  # the first step record written after the fault
        print(
            f"fault {fault!s:16s} after step {reached:2d}: next step {seconds:6.1f} s later; "
            f"that step: waited {after['time_waiting_s']:.1f} s, groups consumed "
            f"{after['groups_consumed']}, samples dropped stale {after['samples_dropped_stale']} "
            f"error {after['samples_dropped_error']}, servers caught up "
            f"{after['weight_sync_servers_caught_up']}"
        )
    print(
        "duplicates skipped:",
        sum(r.get("groups_duplicate_skipped", 0) for r in records),
        "trainer starts:",
        run.trainer_starts,
        "step records:",
        len(records),
        "restarts:",
        {n: s["restarts"] for n, s in state["services"].items()},
    )
