"""The service's front door: who may call it and how much they may send, decided before any route (FastAPI's
`/docs` and `/openapi.json` included) reads or parses a body.

The replicas hold only the token's SHA-256 digest, never the token: what reaches them (bound arguments, a
Serve config) can be shown by Ray's dashboard and state API."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
from dataclasses import dataclass

from kka_ray.config import ConfigError
from kka_ray.serve.config import AuthConfig

# Liveness probes carry no credentials and learn nothing; the page is static HTML and script, no data (it asks
# for the token and sends it with every API call).
OPEN = frozenset({("GET", "/healthz"), ("HEAD", "/healthz"), ("GET", "/")})


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_digest(auth: AuthConfig, host: str) -> str | None:
    """The digest the ingress checks (None: mode none), or a ConfigError that names the way out. Runs where
    the app is built, so a misconfigured service refuses to start instead of starting open."""
    if auth.mode == "none":
        if not (is_loopback(host) or auth.allow_open):
            raise ConfigError(f"serve: auth.mode=none on host {host!r} would let anyone who reaches the port use "
                              "the service; use auth.mode=token, host=127.0.0.1, or set auth.allow_open=true")
        return None
    token = os.environ.get(auth.token_env)
    if token is None or not token.strip():
        state = "is not set" if token is None else "is empty"
        raise ConfigError(f"serve: auth.mode=token but the environment variable {auth.token_env} {state}; set it "
                          f"to a secret (e.g. export {auth.token_env}=$(openssl rand -hex 32)), or choose "
                          "auth.mode=none on a loopback host")
    if len(token) < auth.min_token_chars:
        raise ConfigError(f"serve: the token in {auth.token_env} has {len(token)} characters; at least "
                          f"{auth.min_token_chars} are needed (auth.min_token_chars)")
    return digest(token)


@dataclass(frozen=True)
class Policy:
    token_digest: str | None  # None: no token needed
    max_body_bytes: int


class Guard:
    """Pure ASGI middleware: 401 without the bearer token, 413 for a body over the limit (declared or streamed),
    both answered before the application sees the request. The policy is set per replica process (`install`);
    until then every request but the open paths is refused."""

    policy: Policy | None = None

    def __init__(self, app):
        self.app = app

    @classmethod
    def install(cls, policy: Policy) -> None:
        cls.policy = policy

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or (scope.get("method"), scope["path"]) in OPEN:
            return await self.app(scope, receive, send)
        policy = Guard.policy
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if policy is None:
            return await _reply(send, 503, "service starting", {"retry-after": "5"})
        if policy.token_digest is not None and not _authorised(headers.get("authorization", ""), policy):
            return await _reply(send, 401, "missing or wrong bearer token", {"www-authenticate": "Bearer"})
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > policy.max_body_bytes):
            return await _reply(send, 413, f"request body over {policy.max_body_bytes} bytes")
        body = await _read_body(receive, policy.max_body_bytes)
        if body is None:
            return await _reply(send, 413, f"request body over {policy.max_body_bytes} bytes")
        return await self.app(scope, _replay(body, receive), send)


def _authorised(header: str, policy: Policy) -> bool:
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(digest(token.strip()), policy.token_digest)


async def _read_body(receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes `limit` (a chunked body declares no length)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: disconnect notices

    return replay


async def _reply(send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
