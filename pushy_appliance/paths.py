"""The one normal form of a request path (pure).

The API routes it (``http.NormalizePaths``), the node listener matches it
(``nodesock``) and the Chef signature covers it (``chef_auth.canonical_path``): each asks
:func:`normalize_path`, so a path is the same path to all three.
"""

from __future__ import annotations

import re

__all__ = ["normalize_path"]

_SLASHES = re.compile(r"/{2,}")


def normalize_path(path: str) -> str:
    """Runs of ``/`` collapsed to one and a trailing ``/`` removed.

    Percent-escapes are left alone: given a decoded path (as the API's and the node
    listener's servers decode it) an escaped slash is a slash by now; given a raw path, ``%2F``
    stays three characters.

    Args:
        path: a path without its query string.

    Returns:
        The normal form; ``/`` (and the empty path) give ``/``.
    """
    path = _SLASHES.sub("/", path)
    if len(path) > 1:
        path = path.removesuffix("/")
    return path or "/"
