"""Shared-token auth: where the token comes from, how it is compared, the HTTP middleware."""

from __future__ import annotations

import hmac

import pytest
from fastapi.testclient import TestClient

from agentrl.common import auth, http

TOKEN = "s3cret-token-for-tests"


def test_load_token_is_none_when_nothing_is_configured():
    assert auth.load_token({}) is None
    assert auth.load_token({auth.TOKEN_ENV: ""}) is None


def test_load_token_from_environment():
    assert auth.load_token({auth.TOKEN_ENV: TOKEN}) == TOKEN


def test_load_token_reads_process_environment_by_default(monkeypatch):
    monkeypatch.delenv(auth.TOKEN_FILE_ENV, raising=False)
    monkeypatch.setenv(auth.TOKEN_ENV, TOKEN)
    assert auth.load_token() == TOKEN
    monkeypatch.delenv(auth.TOKEN_ENV)
    assert auth.load_token() is None


def test_load_token_from_secret_file_strips_the_trailing_newline(tmp_path):
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    assert auth.load_token({auth.TOKEN_FILE_ENV: str(secret)}) == TOKEN


def test_both_sources_set_is_an_error(tmp_path):
    secret = tmp_path / "token"
    secret.write_text(TOKEN)
    with pytest.raises(ValueError, match="set only one"):
        auth.load_token({auth.TOKEN_ENV: TOKEN, auth.TOKEN_FILE_ENV: str(secret)})


@pytest.mark.parametrize("content", [None, "", "  \n"])
def test_missing_or_empty_secret_file_is_an_error_not_auth_off(tmp_path, content):
    secret = tmp_path / "token"
    if content is not None:
        secret.write_text(content)
    with pytest.raises(ValueError, match=auth.TOKEN_FILE_ENV):
        auth.load_token({auth.TOKEN_FILE_ENV: str(secret)})


@pytest.mark.parametrize("bad", ["two words", "tab\there", "n\u00e9e"])
def test_tokens_that_cannot_travel_in_a_header_are_rejected(bad):
    with pytest.raises(ValueError, match="printable ASCII"):
        auth.load_token({auth.TOKEN_ENV: bad})


def test_resolve_token_distinguishes_env_default_from_explicit_none(monkeypatch):
    monkeypatch.setenv(auth.TOKEN_ENV, TOKEN)
    monkeypatch.delenv(auth.TOKEN_FILE_ENV, raising=False)
    assert auth.resolve_token(auth.FROM_ENV) == TOKEN
    assert auth.resolve_token(None) is None
    assert auth.resolve_token("other-token") == "other-token"


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),
        (f"Bearer {TOKEN}".encode(), True),
        ("Bearer wrong", False),
        (f"Bearer {TOKEN[:-1]}", False),
        (f"Bearer {TOKEN}x", False),
        (TOKEN, False),
        (f"Basic {TOKEN}", False),
        ("Bearer ", False),
        ("", False),
        (None, False),
    ],
)
def test_check_bearer_accepts_only_the_exact_token(value, accepted):
    assert auth.check_bearer(value, TOKEN) is accepted


def test_check_bearer_compares_in_constant_time(monkeypatch):
    seen = []
    compare_digest = hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert auth.check_bearer("Bearer guess", TOKEN) is False
    assert seen == [(b"guess", TOKEN.encode())]


@pytest.mark.parametrize(
    ("method", "exempt"),
    [
        ("/grpc.health.v1.Health/Check", True),
        ("/grpc.health.v1.Health/Watch", True),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True),
        ("/grpc.health.v1.HealthAdmin/Set", False),
        ("/agentrl.trainer.v1.TrainerStatusService/GetStatus", False),
    ],
)
def test_only_health_and_reflection_are_exempt_on_grpc(method, exempt):
    assert auth.is_exempt_grpc_method(method) is exempt


def _client(**kwargs) -> TestClient:
    app = http.create_app("test", **kwargs)

    @app.get("/v1/status")
    def status() -> dict[str, str]:
        return {"phase": "training"}

    return TestClient(app)


def test_http_requests_without_the_token_get_401():
    client = _client(token=TOKEN)
    missing = client.get("/v1/status")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/status", headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = client.get("/v1/status", headers=auth.auth_headers(TOKEN))
    assert ok.status_code == 200 and ok.json() == {"phase": "training"}


def test_http_probes_and_metrics_are_open_by_default():
    client = _client(token=TOKEN)
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200, path


def test_http_metrics_can_require_the_token():
    client = _client(token=TOKEN, metrics_public=False)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=auth.auth_headers(TOKEN)).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_http_auth_is_off_without_a_token(monkeypatch):
    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    monkeypatch.delenv(auth.TOKEN_FILE_ENV, raising=False)
    assert _client().get("/v1/status").status_code == 200


def test_http_app_takes_the_token_from_the_environment(monkeypatch):
    monkeypatch.delenv(auth.TOKEN_FILE_ENV, raising=False)
    monkeypatch.setenv(auth.TOKEN_ENV, TOKEN)
    client = _client()
    assert client.get("/v1/status").status_code == 401
    assert client.get("/v1/status", headers=auth.auth_headers(TOKEN)).status_code == 200
