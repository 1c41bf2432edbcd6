"""What the browser tests share: an appliance (or a sandbox) running in a background thread
while Playwright drives Debian's Chromium from the test thread, a synchronous signed client,
and pages that collect their own console errors and save screenshots.

Playwright's synchronous API runs its own event loop in the test thread, so the appliance
cannot share it: it runs under ``trio.run`` in a thread of its own, and the tests reach into
it only through ``trio.from_thread`` (:meth:`TrioThread.run_sync`).
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from pushy_appliance import chef_auth

from helpers import signing_time

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 20_000
"""Longest wait for anything a page should show (a loaded 2-core machine is slow)."""


class TrioThread:
    """Runs ``fn(task_status=…)`` under ``trio.run`` in a daemon thread.

    Args:
        fn: an async function that calls ``task_status.started(value)`` once it serves.
        clock: a trio clock for the thread's run (a ``MockClock`` lets a test move time).
    """

    def __init__(self, fn: Callable[..., Awaitable[None]], clock: trio.abc.Clock | None = None):
        self._fn = fn
        self._clock = clock
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="appliance", daemon=True)
        self._scope: trio.CancelScope | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.value: Any = None
        self.error: BaseException | None = None

    def _main(self) -> None:
        async def main() -> None:
            self.token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    self.value = await nursery.start(self._fn)
                    self._ready.set()

        try:
            trio.run(main, clock=self._clock)
        except BaseException as e:  # reported to the test thread by start()
            self.error = e
        finally:
            self._ready.set()

    def start(self, timeout: float = 90.0) -> Any:
        """Start the thread; return what ``fn`` reported once it serves."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the appliance did not start")
        if self.error is not None:
            raise RuntimeError("the appliance failed to start") from self.error
        return self.value

    def run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call ``fn(*args)`` in the appliance's thread (between its tasks) and return."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self.token)

    def run(self, afn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``await afn(*args)`` in the appliance's thread and return its result."""
        return trio.from_thread.run(afn, *args, trio_token=self.token)

    def stop(self) -> None:
        """Cancel everything (a hard stop, as the in-process tests do) and join."""
        if self._scope is not None and self._thread.is_alive():
            self.run_sync(self._scope.cancel)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the appliance thread did not stop"


class SyncSigned:
    """A Chef-signed JSON client for one principal (synchronous, for the test thread)."""

    def __init__(self, base: str, user: str, key: rsa.RSAPrivateKey) -> None:
        self.base = base
        self.user = user
        self.key = key
        self.http = httpx.Client(timeout=30)

    @classmethod
    def from_file(cls, base: str, user: str, path: Path) -> SyncSigned:
        return cls(base, user, chef_auth.load_private_key(path.read_bytes()))

    def request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        data = b"" if body is None else json.dumps(body).encode()
        headers = chef_auth.sign_request(
            method,
            path,
            data,
            self.user,
            self.key,
            timestamp=signing_time(self.user, method, path, data),
        )
        if data:
            headers["Content-Type"] = "application/json"
        return self.http.request(method, self.base + path, content=data or None, headers=headers)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        """The decoded body of a 2xx response (anything else fails the test)."""
        r = self.request(method, path, body)
        assert 200 <= r.status_code < 300, (method, path, r.status_code, r.text)
        return r.json() if r.content else None

    def new_user(self, name: str, org: str = "default", *, admin: bool = False) -> SyncSigned:
        """As pivotal: a user with a new key, joined to ``org`` (and its admins)."""
        made = self.ok(
            "POST",
            "/users",
            {"username": name, "display_name": name, "email": "", "create_key": True},
        )
        key = chef_auth.load_private_key(made["chef_key"]["private_key"].encode())
        self.ok("POST", f"/organizations/{org}/users", {"username": name})
        if admin:
            group = self.ok("GET", f"/organizations/{org}/groups/admins")
            actors = {"users": [*group["users"], name], "clients": [], "groups": []}
            self.ok(
                "PUT",
                f"/organizations/{org}/groups/admins",
                {"groupname": "admins", "actors": actors},
            )
        return SyncSigned(self.base, name, key)

    def login_link(self, org: str = "default") -> str:
        return str(self.ok("POST", f"/organizations/{org}/pushy/ui/links")["url"])

    def close(self) -> None:
        self.http.close()


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium under Playwright (never a downloaded browser)."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is missing: apt-get install chromium (scripts/test does)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


class Tab:
    """A page in a fresh browser context (its own cookies), recording console errors."""

    def __init__(self, browser: Browser, shots: Path) -> None:
        self.context: BrowserContext = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page: Page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.shots = shots
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def login(self, link: str) -> Page:
        """Open a login link; wait for the signed-in dashboard."""
        self.page.goto(link)
        self.page.wait_for_selector("body[data-session=ok]")
        return self.page

    def shot(self, name: str, *, full_page: bool = True) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def close(self, *, expect_errors: tuple[str, ...] = ()) -> None:
        """Close; fail if the page logged an error other than those expected (substrings)."""
        self.context.close()
        unexpected = [e for e in self.errors if not any(x in e for x in expect_errors)]
        assert unexpected == [], unexpected
