"""A rollout worker's view of the policy version, against real Redis at 127.0.0.1:6379 and the
trainer's real publisher: the key is read at start, events update it, and a version published
while the subscription is down is picked up from the key after the reconnect."""

from __future__ import annotations

import time

import redis

from agentrl.common.policy_version import PolicyVersionPublisher, PolicyVersionSubscriber
from agentrl.common.run_layout import RunLayout

REDIS_URL = "redis://127.0.0.1:6379/0"


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s} s")
        time.sleep(0.05)


def test_subscriber_follows_published_versions_across_a_lost_connection(run_id) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    publisher = PolicyVersionPublisher(REDIS_URL, run_id)
    publisher.publish(2, "/weights/v2", "sha-2")  # before the worker starts: only the key holds it
    seen: list[int] = []
    subscriber = PolicyVersionSubscriber(REDIS_URL, run_id, on_version=seen.append)
    subscriber.start()
    try:
        assert subscriber.connected.is_set() and subscriber.latest == 2
        publisher.publish(5, "/weights/v5", "sha-5")
        wait_until(lambda: subscriber.latest == 5, 10, "version 5 from the event")

        # A version set while nobody listens (its event lost), then the connection dropped:
        # the reconnect reads the key.
        client.set(RunLayout(run_id).policy_version, "7")
        time.sleep(0.5)
        assert subscriber.latest == 5  # no event was sent for 7
        ids = [c["id"] for c in client.client_list() if c["name"] == subscriber.client_name]
        assert ids
        for client_id in ids:
            client.client_kill_filter(_id=client_id)
        wait_until(lambda: subscriber.latest == 7, 10, "version 7 after the reconnect")
        publisher.publish(8, "/weights/v8", "sha-8")
        wait_until(lambda: subscriber.latest == 8, 10, "version 8 on the new subscription")
        assert seen[0] == 2 and seen[-1] == 8 and {5, 7} <= set(seen)
    finally:
        subscriber.stop()
        publisher.close()
    assert not subscriber._thread.is_alive()
