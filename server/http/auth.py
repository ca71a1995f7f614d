"""API keys: management routes (and, if asked, inference) need `Authorization: Bearer <key>`.

The key comes from OPTISERVE_API_KEY or, without one, from `<store>/api-key`, generated at the
first start with mode 0600. The Python client and the CLI read the same two places, so a local
server and its client agree without anyone copying a key.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from fastapi import Request
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from optimizer_pipeline import atomic_write_text

from ..errors import ApiError, from_api_error

KEY_FILENAME = "api-key"


def key_path(store: Path) -> Path:
    return store / KEY_FILENAME


def resolve_key(configured: str | None, store: Path) -> tuple[str, str]:
    """(key, where it came from): the configured one, or the store's, generated if missing."""
    if configured:
        return configured, "from OPTISERVE_API_KEY"
    path = key_path(store)
    if not path.exists():
        atomic_write_text(path, secrets.token_urlsafe(32) + "\n")
        os.chmod(path, 0o600)
        return path.read_text().strip(), f"generated in {path.resolve()} (mode 0600)"
    return path.read_text().strip(), f"in {path.resolve()}"


class BearerKey:
    """A FastAPI dependency: 401 unless the request carries the key (compared in constant time)."""

    def __init__(self, key: str) -> None:
        self._key = key.encode()

    def __reduce__(self) -> tuple:
        # LitServe pickles each LitAPI, with its `authorize` hook (this), into the inference workers
        # it spawns; they never check a key, so theirs is one that refuses everything.
        return (_refuse_all, ())

    def __copy__(self) -> BearerKey:
        return self  # a copy in this process (not a pickle) keeps working

    def __deepcopy__(self, memo: dict) -> BearerKey:
        return self

    def __call__(self, request: Request) -> None:
        self.check(request.headers.get("authorization", ""))

    def check(self, authorization: str) -> None:
        """The same check on an Authorization value from elsewhere (gRPC metadata)."""
        refusal = self.refusal(authorization)
        if refusal is not None:
            raise refusal

    def refusal(self, authorization: str) -> ApiError | None:
        """The 401 for this Authorization value, or None when it carries the key."""
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return _unauthorized("this route needs 'Authorization: Bearer <key>'")
        if not hmac.compare_digest(given.strip().encode(), self._key):
            return _unauthorized("the API key is wrong")
        return None


class KeyBeforeBodyMiddleware:
    """401 as a request arrives, before its body is read, on the routes that need the key.

    FastAPI reads and parses a route's body (JSON, multipart) before it runs the route's dependencies,
    the key check among them. Measured: a stranger's 300 MB JSON PUT to /models/x/routing held the
    API server's event loop for 8.3 s (a /health call waited that long) and got a 422; a 500 MB
    upload was spooled to disk before its 401. The routes keep their dependency (OpenAPI shows it,
    and it answers a request with no body alike).

    `keyed` are the (method, path template) pairs of the management routes that need the key;
    with `guarded_inference` (--auth-inference) every inference path needs it too."""

    def __init__(
        self, app: ASGIApp, guard: BearerKey, keyed: list[tuple[str, str]], guarded_inference: bool, is_inference_path: Callable[[str], bool]
    ) -> None:
        self.app = app
        self.guard = guard
        self.keyed = [(method, compile_path(path)[0]) for method, path in keyed]
        self.guarded_inference = guarded_inference
        self.is_inference_path = is_inference_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._needs_key(scope["method"], scope["path"]):
            refusal = self.guard.refusal(_header(scope, b"authorization"))
            if refusal is not None:
                await from_api_error(refusal, path=scope["path"])(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _needs_key(self, method: str, path: str) -> bool:
        if self.is_inference_path(path):
            return self.guarded_inference
        return any(method == keyed_method and pattern.match(path) for keyed_method, pattern in self.keyed)


def _header(scope: Scope, name: bytes) -> str:
    return next((value.decode("latin-1") for key, value in scope.get("headers", ()) if key == name), "")


def _refuse_all() -> BearerKey:
    guard = BearerKey.__new__(BearerKey)
    guard._key = b""  # compare_digest of a non-empty key with b"" is False; an empty one is refused above
    return guard


def _unauthorized(reason: str) -> ApiError:
    return ApiError(
        401,
        "unauthorized",
        f"{reason}; the key is OPTISERVE_API_KEY or the file {KEY_FILENAME} in the server's store "
        "(the Python client and the CLI read both)",
    )
