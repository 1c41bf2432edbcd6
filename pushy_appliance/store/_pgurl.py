"""The PostgreSQL store's URL as it may be shown: without its password (no driver needed)."""

from __future__ import annotations

import urllib.parse

__all__ = ["redact_url"]


def redact_url(url: str) -> str:
    """``url`` without its password, for logs, reports and messages."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "postgresql://?"
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}@{host}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
