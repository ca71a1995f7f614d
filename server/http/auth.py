"""API keys: management routes (and, if asked, inference) need `Authorization: Bearer <key>`.

The key comes from OPTISERVE_API_KEY or, without one, from `<store>/api-key`, generated at the
first start with mode 0600. The Python client and the CLI read the same two places, so a local
server and its client agree without anyone copying a key.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from fastapi import Request

from optimizer_pipeline import atomic_write_text

from ..errors import ApiError

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
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise _unauthorized("this route needs 'Authorization: Bearer <key>'")
        if not hmac.compare_digest(given.strip().encode(), self._key):
            raise _unauthorized("the API key is wrong")


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
