"""The service's front door without Ray: the token rule at build time and the ASGI guard on hand-made requests."""

import asyncio
import json

import pytest

from kka_ray.config import ConfigError
from kka_ray.serve.config import AuthConfig
from kka_ray.serve.guard import Guard, Policy, digest, is_loopback, token_digest

TOKEN = "a-long-enough-test-token"


@pytest.mark.parametrize("value, message", [(None, "is not set"), ("", "is empty"), ("  ", "is empty"),
                                            ("short", "at least 16")])
def test_token_mode_refuses_to_start_without_a_usable_token(monkeypatch, value, message):
    if value is None:
        monkeypatch.delenv("KKA_T", raising=False)
    else:
        monkeypatch.setenv("KKA_T", value)
    with pytest.raises(ConfigError, match=message) as e:
        token_digest(AuthConfig(token_env="KKA_T"), "127.0.0.1")
    assert "KKA_T" in str(e.value)


def test_token_digest_and_open_mode_rules(monkeypatch):
    monkeypatch.setenv("KKA_T", TOKEN)
    assert token_digest(AuthConfig(token_env="KKA_T"), "0.0.0.0") == digest(TOKEN) != TOKEN
    assert token_digest(AuthConfig(mode="none"), "127.0.0.1") is None
    assert token_digest(AuthConfig(mode="none"), "::1") is None
    with pytest.raises(ConfigError, match="allow_open"):
        token_digest(AuthConfig(mode="none"), "0.0.0.0")
    assert token_digest(AuthConfig(mode="none", allow_open=True), "0.0.0.0") is None
    assert is_loopback("localhost") and not is_loopback("10.0.0.5") and not is_loopback("example.org")


class App:
    """Records whether it was reached and what body it read."""

    def __init__(self):
        self.bodies = []

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def call(policy, path="/v1/anomalies", headers=(), chunks=(b"{}",), method="POST"):
    """(status, headers, body, app) for one request through the guard; chunks arrive as separate messages."""
    app = App()
    Guard.install(policy)
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "method": method,
             "headers": [(k.encode(), v.encode()) for k, v in headers]}
    asyncio.run(Guard(app)(scope, receive, send))
    start = sent[0]
    return start["status"], dict(start["headers"]), sent[1]["body"], app


POLICY = Policy(digest(TOKEN), max_body_bytes=100)
AUTH = ("authorization", f"Bearer {TOKEN}")


@pytest.mark.parametrize("path", ["/v1/anomalies", "/v1/models", "/v1/datasets", "/docs", "/openapi.json",
                                  "/anything"])
def test_every_route_but_health_needs_the_token_before_the_body_is_read(path):
    status, headers, body, app = call(POLICY, path, chunks=(b"{not json",))
    assert status == 401 and headers[b"www-authenticate"] == b"Bearer" and app.bodies == []
    assert json.loads(body)["detail"] == "missing or wrong bearer token"
    for wrong in ("Bearer nope", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x"):
        assert call(POLICY, path, [("authorization", wrong)])[0] == 401
    assert call(POLICY, "/healthz", method="GET")[0] == 200  # probes carry no credentials


def test_only_the_page_and_the_probe_are_open_and_only_to_get():
    assert call(POLICY, "/", method="GET")[0] == 200  # static HTML and script: it asks for the token itself
    assert call(POLICY, "/", method="POST")[0] == 401
    assert call(POLICY, "/healthz", method="POST")[0] == 401
    assert call(POLICY, "/v1/datasets", method="GET")[0] == 401


def test_authorised_request_reaches_the_app_with_its_whole_body():
    status, _, _, app = call(POLICY, headers=[AUTH], chunks=(b'{"count":', b" 2}"))
    assert status == 200 and app.bodies == [b'{"count": 2}']
    assert call(Policy(None, 100))[0] == 200  # auth.mode none


def test_bodies_over_the_limit_get_413_declared_or_streamed():
    declared = call(POLICY, headers=[AUTH, ("content-length", "101")], chunks=(b"x" * 101,))
    streamed = call(POLICY, headers=[AUTH], chunks=(b"x" * 60, b"x" * 60))
    for status, _, body, app in (declared, streamed):
        assert status == 413 and app.bodies == [] and b"100 bytes" in body
    assert call(POLICY, headers=[AUTH, ("content-length", "-1")])[0] == 413  # not a length
    assert call(POLICY, headers=[AUTH], chunks=(b"x" * 100,))[0] == 200  # exactly the limit


def test_a_replica_without_its_policy_refuses_instead_of_serving_open():
    Guard.policy = None
    app, sent = App(), []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(m):
        sent.append(m)

    asyncio.run(Guard(app)({"type": "http", "path": "/v1/models", "headers": []}, receive, send))
    assert sent[0]["status"] == 503 and app.bodies == []
