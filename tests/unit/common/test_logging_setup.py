"""Structured logging: JSON lines and human lines with service, context and extra fields."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest

from agentrl.common.logging import (
    bind_context,
    get_context,
    get_logger,
    log_context,
    setup_logging,
    unbind_context,
)


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


def test_json_lines_carry_standard_context_and_extra_fields(restore_root_logger):
    stream = io.StringIO()
    setup_logging("sandbox", "INFO", json=True, stream=stream)
    log = get_logger("agentrl.sandbox.pool")
    with log_context(run_id="run-7"):
        log.info("started %d containers", 4, extra={"image": "agentrl-sandbox:1"})
    log.debug("hidden at INFO")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")

    entries = [json.loads(line) for line in _lines(stream)]
    assert len(entries) == 2
    first = entries[0]
    assert first["level"] == "INFO" and first["service"] == "sandbox"
    assert first["logger"] == "agentrl.sandbox.pool"
    assert first["msg"] == "started 4 containers"
    assert first["run_id"] == "run-7" and first["image"] == "agentrl-sandbox:1"
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert "run_id" not in entries[1]
    assert "RuntimeError: boom" in entries[1]["exc"]


def test_human_lines_show_message_and_fields(restore_root_logger):
    stream = io.StringIO()
    setup_logging("reward", "DEBUG", json=False, stream=stream)
    with log_context(request_id="req-1"):
        get_logger("agentrl.reward").debug("scored", extra={"reward": 1.0})
    (line,) = _lines(stream)
    assert " DEBUG " in line and " reward agentrl.reward: scored" in line
    assert line.endswith("request_id=req-1 reward=1.0")
    assert not line.lstrip().startswith("{")


def test_context_nests_and_unwinds():
    with log_context(run_id="a"):
        with log_context(request_id="b"):
            assert get_context() == {"run_id": "a", "request_id": "b"}
        assert get_context() == {"run_id": "a"}
    assert get_context() == {}


def test_context_does_not_leak_into_other_threads():
    token = bind_context(run_id="main-only")
    seen = []
    try:
        worker = threading.Thread(target=lambda: seen.append(get_context()))
        worker.start()
        worker.join()
    finally:
        unbind_context(token)
    assert seen == [{}]


def test_setting_up_twice_keeps_one_handler(restore_root_logger):
    first, second = io.StringIO(), io.StringIO()
    setup_logging("search", json=True, stream=first)
    setup_logging("search", json=True, stream=second)
    get_logger("agentrl.search").warning("once")
    assert _lines(first) == [] and len(_lines(second)) == 1


def test_unknown_level_is_rejected(restore_root_logger):
    with pytest.raises(ValueError, match="unknown log level"):
        setup_logging("search", "LOUD")
