"""``pushy ui``: a one-time login link to the web dashboard, printed (and opened)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import webbrowser
from typing import Any

from ._common import EXIT_OK, add_credentials, run_client

__all__ = ["add_parser", "cmd_ui", "has_display"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``pushy ui``."""
    p = sub.add_parser(
        "ui",
        help="print a one-time login link to the web dashboard (and open a browser)",
        description="Ask the server for a login link to its web dashboard, signed with your "
        "credentials (any user or client key): the dashboard then acts as you, in the org of "
        "your server URL, with your permissions. The link works once, for 60 seconds by "
        "default; it is printed on stdout and opened in a browser when there is a display.",
    )
    p.add_argument(
        "--no-browser", action="store_true", help="only print the link, do not open a browser"
    )
    add_credentials(p)
    p.set_defaults(handler=cmd_ui)


def has_display(environ: dict[str, str] | None = None, platform: str = sys.platform) -> bool:
    """Whether a graphical browser can be opened: macOS and Windows always, elsewhere with
    ``$DISPLAY`` or ``$WAYLAND_DISPLAY`` (without them :mod:`webbrowser` would pick a text
    browser that takes over the terminal)."""
    env = os.environ if environ is None else environ
    if platform == "darwin" or platform.startswith("win"):
        return True
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def cmd_ui(args: argparse.Namespace) -> int:
    async def mint(client: Any) -> Any:
        return await client.json("POST", client.org_path("pushy/ui/links"))

    doc = run_client(args, mint)
    url = str(doc["url"])
    sys.stdout.write(url + "\n")
    sys.stdout.flush()
    sys.stderr.write(f"pushy: this link works once, for {doc['expires_in']} s\n")
    if not args.no_browser and has_display():
        with contextlib.suppress(webbrowser.Error):
            webbrowser.open(url)
    return EXIT_OK
