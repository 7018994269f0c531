"""A destination: the host:port of a URL, the unit of concurrency limits, rate limits and
circuit breakers (pure)."""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlsplit

__all__ = ["destination_key"]


@lru_cache(maxsize=4096)
def destination_key(url: str) -> str:
    """host:port of a URL: the unit of concurrency limits, rate limits and breakers."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"
