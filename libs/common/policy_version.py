"""The run's policy version in Redis: the trainer publishes it, rollout workers follow it.

    PolicyVersionPublisher(redis_url, run_id).publish(v, weights_uri, checksum)   # trainer
    versions = PolicyVersionSubscriber(redis_url, run_id)                          # rollout
    versions.start()           # reads the key, then listens in a thread
    versions.latest            # the last version the trainer published (0 before the first)

The trainer publishes each version twice (`PolicyVersionPublisher`, one MULTI), after the
weight transport made every server serve it: `SET agentrl:{run_id}:policy_version v` and a
`PolicyVersionEvent` on the pub/sub channel `agentrl:{run_id}:events`. The subscriber thread
subscribes first and reads the key second, so a version published in between is seen by one of
the two; pub/sub drops what is sent while the connection is down, so after every reconnect the
key is read again. Reconnects back off from RECONNECT_INITIAL_S to RECONNECT_MAX_S and go on for
as long as the worker lives (a worker without Redis has no tasks either).

Why the worker only follows the version and does not pause the vLLM pool on the event: see
docs/rollout.md, "Policy versions" (the trainer's weight sync pauses, reloads and resumes the
servers itself, before it publishes).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis
from google.protobuf.message import DecodeError

from agentrl.common.logging import get_logger
from agentrl.common.run_layout import RunLayout
from agentrl.common.streams import RETRY_DEADLINE_S, call_with_deadline
from agentrl.proto.core.v1 import events_pb2

log = get_logger(__name__)

# First retry soon (a dropped connection usually reconnects at once), then at most every 30 s.
RECONNECT_INITIAL_S, RECONNECT_MAX_S = 0.5, 30.0
# How often the thread looks at its stop flag while no message arrives.
POLL_S = 0.5
# An idle subscription PINGs this often, so a dead server is noticed instead of waited on.
HEALTH_CHECK_INTERVAL_S = 10.0
SOCKET_TIMEOUT_S = 10.0


class PolicyVersionPublisher:
    """Publishes the current policy version of a run (key + pub/sub event, one MULTI).

    A Redis outage shorter than `retry_deadline_s` (`redis.reconnect_deadline_s`) is a pause:
    the publish is retried with backoff (streams.call_with_deadline, the one retry policy of
    every Redis client here); a longer one is one error naming the URL and the setting."""

    def __init__(
        self, redis_url: str, run_id: str, retry_deadline_s: float = RETRY_DEADLINE_S
    ) -> None:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url, self.retry_deadline_s = redis_url, retry_deadline_s
        # Retries are call_with_deadline's, bounded by the deadline, not redis-py's.
        self.client = redis.Redis.from_url(
            redis_url,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        layout = RunLayout(run_id)
        self.version_key, self.events_channel = layout.policy_version, layout.events

    def publish(self, version: int, weights_uri: str, checksum: str) -> None:
        event = events_pb2.PolicyVersionEvent(
            version=version,
            weights_uri=weights_uri,
            checksum=checksum,
            published_at_unix_s=time.time(),
        )

        def send() -> None:
            # SET is idempotent and the event only a wake-up: a retried MULTI is harmless.
            pipe = self.client.pipeline(transaction=True)
            pipe.set(self.version_key, str(version))
            pipe.publish(self.events_channel, event.SerializeToString())
            pipe.execute()

        call_with_deadline(send, self.url, self.retry_deadline_s)

    def latest(self) -> int | None:
        value = call_with_deadline(
            lambda: self.client.get(self.version_key), self.url, self.retry_deadline_s
        )
        return None if value is None else int(value)

    def close(self) -> None:
        self.client.close()


class PolicyVersionSubscriber:
    def __init__(
        self, redis_url: str, run_id: str, on_version: Callable[[int], None] | None = None
    ) -> None:
        self.redis_url = redis_url
        layout = RunLayout(run_id)
        self.version_key, self.channel = layout.policy_version, layout.events
        self.on_version = on_version
        self.client_name = f"agentrl-policy-version-{run_id}"  # in CLIENT LIST, for operators
        self.latest = 0
        """The last published version; 0 (the initial policy) until the trainer publishes."""
        self.connected = threading.Event()  # set once subscribed and the key read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, wait_s: float = 5.0) -> None:
        """Start the thread; wait at most `wait_s` for the first read of the key."""
        self._thread = threading.Thread(target=self._run, name="policy-version", daemon=True)
        self._thread.start()
        if not self.connected.wait(wait_s):
            log.warning(
                "policy version not read yet; following it in the background",
                extra={"key": self.version_key, "wait_s": wait_s},
            )

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _set(self, version: int) -> None:
        if version != self.latest:
            log.info("policy version", extra={"version": version, "previous": self.latest})
        self.latest = version
        if self.on_version is not None:
            self.on_version(version)

    def _run(self) -> None:
        backoff_s = RECONNECT_INITIAL_S
        while not self._stop.is_set():
            client = redis.Redis.from_url(
                self.redis_url,
                socket_timeout=SOCKET_TIMEOUT_S,
                socket_connect_timeout=SOCKET_TIMEOUT_S,
                health_check_interval=HEALTH_CHECK_INTERVAL_S,
                client_name=self.client_name,
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                value = client.get(self.version_key)
                if value is not None:
                    self._set(int(value))
                self.connected.set()
                backoff_s = RECONNECT_INITIAL_S
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=POLL_S)
                    if message is not None and message["type"] == "message":
                        self._on_message(message["data"])
            except (redis.RedisError, OSError, ValueError) as exc:  # ValueError: a bad key
                self.connected.clear()
                log.warning(
                    "policy version subscription lost; reconnecting",
                    extra={"error": repr(exc), "backoff_s": backoff_s},
                )
                self._stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, RECONNECT_MAX_S)
            finally:
                pubsub.close()
                client.close()

    def _on_message(self, data: bytes) -> None:
        try:
            event = events_pb2.PolicyVersionEvent.FromString(data)
        except DecodeError as exc:
            log.error("malformed policy version event ignored", extra={"error": str(exc)})
            return
        self._set(event.version)
