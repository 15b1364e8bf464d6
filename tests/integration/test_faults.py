"""The fault suite (issue #20 item 7): a short RL run through the real local stack (`agentrl up`:
its own redis-server with AOF on a port of its own, vLLM on CPU, sandbox, reward, rollout worker;
`agentrl train`) while an injector SIGKILLs, each at a random moment of the run, the rollout
worker, the reward service, the sandbox, Redis, vLLM and the trainer (a new `agentrl train`
resumes from the checkpoint). Then, from the recorded group ids (`<run dir>/groups.jsonl`):

- the run finished: every step 1..N trained once in the run's history;
- every group trained was trained exactly once in that history (a step replayed from a
  checkpoint replaces the lost one);
- no prompt was dropped silently: every admitted prompt was trained (kept or reported as
  dropped in groups.jsonl) or is still queued in Redis (a task, or a group not yet consumed);
- no orphan: once the run has recovered from a kill, nothing of the killed process's group is
  left (vLLM's EngineCore and workers, the reward's verifier processes); and no process of any
  service, Redis or trainer is left after `agentrl down`.

It prints, per fault, how long the run paused (from the kill to the next step's record) and
what was redone: the figures of docs/streams.md's fault table. Not exercised: search (the run
uses no search tool); the tiny model calls python in a few episodes only, so a sandbox kill
meets few calls in flight (tests/integration/test_rollout_outages.py covers a sandbox outage
under episodes that all call it).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import yaml

from agentrl.common.inference.launcher import free_port
from agentrl.common.models import default_corpus, init_tiny_model
from agentrl.common.run_layout import GROUPS_GROUP, PROMPTS_GROUP, RunLayout
from agentrl.trainer.intake import read_group_history, trained_keys

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
AGENTRL = [sys.executable, "-m", "agentrl.common.cli"]
STEPS, CHECKPOINT_EVERY = 36, 2
# One fault at a time, in this order: each once the run has recovered from the previous one (a
# step record written since), at a random moment of the step after that.
FAULTS = ["rollout", "reward", "trainer", "sandbox", "redis", "vllm"]
SEED = 20


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


def recipe(root: Path, model_dir: Path) -> Path:
    ports = iter(free_port() for _ in range(10))
    data = root / "train.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {"prompt": f"What is {a} + {b}?", "ground_truth": str(a + b), "task_type": "math"}
            )
            + "\n"
            for a, b in ((i % 9 + 1, i // 9 + 2) for i in range(64))
        )
    )
    config = {
        "run": {"run_id": f"faults-{os.getpid()}", "output_dir": str(root / "run"), "seed": 0},
        "model": {"path": str(model_dir)},
        "data": {"train_path": str(data)},
        # A port nothing answers on: `agentrl up` starts its own redis-server there, with AOF
        # (`always`: the suite checks that no admitted prompt is lost; everysec may lose 1 s).
        "redis": {
            "url": f"redis://127.0.0.1:{next(ports)}/0",
            "visibility_timeout_s": 10,
            "reconnect_deadline_s": 60,
            "local_appendfsync": "always",
        },
        "sandbox": {"grpc_port": next(ports), "http_port": next(ports), "max_concurrency": 2},
        "reward": {"grpc_port": next(ports), "http_port": next(ports), "num_verifier_workers": 1},
        "inference": {
            "urls": [f"http://127.0.0.1:{next(ports)}"],
            # vLLM restarts in 30-90 s on a loaded CPU machine: generation waits that out.
            "reconnect_deadline_s": 600,
            "health_check_interval_s": 1,
            "server": {"max_model_len": 256, "max_num_seqs": 16, "kv_cache_gib": 1},
        },
        "rollout": {
            "grpc_port": next(ports),
            "http_port": next(ports),
            "max_concurrent_episodes": 8,
            "shutdown_grace_s": 5,
            "max_turns": 1,
            "max_response_tokens": 32,
        },
        "trainer": {
            "batch_size": 2,
            "max_staleness": 1,
            "device": "cpu",
            "micro_batch_tokens": 512,
            "total_steps": STEPS,
            "checkpoint_interval_steps": CHECKPOINT_EVERY,
            "drift_check": False,
            "grpc_port": next(ports),
            "http_port": next(ports),
        },
        "algorithm": {"group_size": 4, "learning_rate": 1e-3, "dynamic_sampling": False},
    }
    path = root / "faults.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


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

    def kill(self, name: str) -> int:
        """SIGKILL the process `name` (its leader only, as a crash would); returns its pid."""
        if name == "trainer":
            pid = self.trainer.pid
            os.kill(pid, signal.SIGKILL)
            self.trainer.wait(30)
            self.start_trainer()
            return pid
        state = self.stack()
        pid = state["redis_pid"] if name == "redis" else state["services"][name]["pid"]
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait_for_records(self, count: int, timeout_s: float) -> None:
        """Until metrics.jsonl holds `count` step records (the trainer alive meanwhile)."""
        deadline = time.monotonic() + timeout_s
        while len(steps_written(self.run_dir)) < count:
            if self.trainer.poll() == 2 and self.trainer_starts < 5:
                # `agentrl train` refuses to start while a service is down (exit 2, naming it):
                # start it again, as its pod's restart policy would.
                time.sleep(5)
                self.start_trainer()
            assert self.trainer.poll() is None, self.trainer_tail()
            assert time.monotonic() < deadline, f"no record {count}\n{self.trainer_tail()}"
            time.sleep(0.3)

    def trainer_tail(self) -> str:
        return self.trainer_log.read_text(errors="replace")[-4000:]


def test_the_run_rides_through_every_kill_and_trains_each_group_once(tmp_path) -> None:
    model_dir = init_tiny_model(tmp_path / "model", default_corpus(500), seed=1)
    run = Run(recipe(tmp_path, model_dir))
    rng = random.Random(SEED)
    up = run.cli("up", "--services", "vllm,sandbox,reward,rollout")
    assert up.returncode == 0, up.stdout + up.stderr
    measured = []  # (fault, step reached when killed, seconds until the next new step)
    try:
        run.stack()
        run.start_trainer()
        for name in FAULTS:
            run.wait_for_records(len(steps_written(run.run_dir)) + 1, 900)
            time.sleep(rng.uniform(0.0, 1.5))  # a random moment of the step that follows
            written = steps_written(run.run_dir)
            assert written[-1] < STEPS, f"the run ended before the {name} fault: {measured}"
            killed_at = time.monotonic()
            pid = run.kill(name)
            run.wait_for_records(len(written) + 1, 900)  # recovered: a step written since
            # The dead process's group goes with it (vLLM's EngineCore and workers, the
            # reward's verifier processes): no orphan holds memory or ports. Queued groups can
            # make the next step before the supervisor has seen the death, so allow it time.
            assert group_gone(pid, 120) == [], (name, pid, group_members(pid))
            measured.append((name, written[-1], time.monotonic() - killed_at, len(written)))
            print(f"killed {name} after step {written[-1]}: {measured[-1][2]:.1f} s", flush=True)
        assert run.trainer.wait(900) == 0, run.trainer_tail()
        state = run.stack()
        client = redis.Redis.from_url(run.config["redis"]["url"])
        layout = RunLayout(run.config["run"]["run_id"])
        # Queued: a task no worker completed, or a group the trainer has not consumed.
        queued = set()
        for stream, group in ((layout.prompts, PROMPTS_GROUP), (layout.groups, GROUPS_GROUP)):
            done = {k.decode() for k in client.zrange(f"{stream}:{group}:done", 0, -1)}
            queued |= {f[b"key"].decode() for _i, f in client.xrange(stream)} - done
        client.close()
    finally:
        if run.trainer is not None and run.trainer.poll() is None:
            os.killpg(run.trainer.pid, signal.SIGKILL)
        down = run.cli("down")
    assert down.returncode == 0, down.stdout + down.stderr

    records = [
        json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    for name, reached, seconds, index in measured:
        after = records[index]  # the first step record written after the kill
        print(
            f"fault {name:8s} after step {reached:2d}: next step {seconds:6.1f} s later; that "
            f"step: waited {after['time_waiting_s']:.1f} s, groups consumed "
            f"{after['groups_consumed']}, samples dropped stale {after['samples_dropped_stale']} "
            f"error {after['samples_dropped_error']}, servers caught up "
            f"{after['weight_sync_servers_caught_up']}"
        )
    # The run finished, every step once in its history, every group trained once in it.
    history = read_group_history(run.run_dir)
    assert [r["step"] for r in history if r["trained"]] == list(range(1, STEPS + 1))
    keys = trained_keys(history)
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)
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
    assert all(s["restarts"] >= 1 for s in state["services"].values())
    # No prompt dropped silently: admitted (its key from the data order) means trained or queued.
    admitted = records[-1]["prompts_admitted"]
    run_id = run.config["run"]["run_id"]
    epoch_size = len((tmp_path / "train.jsonl").read_text().splitlines())
    # The trainer's key is (epoch, offset) before the take, and an epoch rolls over lazily: the
    # 65th prompt of a 64-prompt set is `:0:64`, the 66th `:1:1` (rl_loop.admit, EpochOrder).
    admitted_keys = {f"{run_id}:0:0"} | {
        f"{run_id}:{(i - 1) // epoch_size}:{(i - 1) % epoch_size + 1}" for i in range(1, admitted)
    }
    missing = admitted_keys - set(keys) - queued
    assert not missing, sorted(missing)
    # Nothing left behind: no process of any service, Redis or trainer group ever started.
    assert not [pid for pgid in run.groups_seen for pid in group_gone(pgid, 60)]
