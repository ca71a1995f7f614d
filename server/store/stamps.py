"""Model ids and timestamps, as the store writes them."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_model_id() -> str:
    return uuid.uuid4().hex[:12]
