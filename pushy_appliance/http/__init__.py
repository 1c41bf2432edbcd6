"""The HTTP API adapter: Quart-trio routes over the engines (``API.md``)."""

from __future__ import annotations

import typing
from typing import Any

from ..services import Services
from ._app import ASGIApp, NormalizePaths, RequireValidHost, create_app
from ._openapi import openapi_document

__all__ = ["asgi_app", "create_app", "openapi_document"]


def asgi_app(svc: Services) -> Any:
    """The application as hypercorn serves it: ``Host`` checked, paths normalised, then the
    Quart app."""
    return RequireValidHost(NormalizePaths(typing.cast(ASGIApp, create_app(svc))))
