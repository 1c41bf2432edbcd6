"""The dashboard's HTTP side against the whole appliance in-process (``docs/DASHBOARD.md``):
its files and their headers, login links, the session cookie on the push-jobs routes (with the
same permissions as signed requests, and CSRF), logout. The browser tests drive the page;
these pin the contract exactly.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path, PurePosixPath

import httpx
import trio
import trio.testing

from pushy_appliance import chef_auth
from pushy_appliance.appliance import ServerInfo
from pushy_appliance.http._ui import CSP, STATIC_DIR
from pushy_appliance.websession import CSRF_HEADER, SESSION_COOKIE

from helpers import Signed, admin_client, running_server, test_config

ORG = "/organizations/default"


@asynccontextmanager
async def appliance(tmp_path: Path, **flags: object) -> AsyncIterator[tuple[ServerInfo, Signed]]:
    config = test_config(tmp_path / "data", **flags)
    async with running_server(config) as info, admin_client(info) as admin:
        yield info, admin


async def new_user(
    pivotal: Signed, name: str, org: str = "default", *, admin: bool = False
) -> Signed:
    """A user joined to ``org`` (and its admins group with ``admin``), as a signed client."""
    r = await pivotal.post(
        "/users", {"username": name, "display_name": name, "email": "", "create_key": True}
    )
    assert r.status_code == 201, r.text
    key = chef_auth.load_private_key(r.json()["chef_key"]["private_key"].encode())
    r = await pivotal.post(f"/organizations/{org}/users", {"username": name})
    assert r.status_code == 201, r.text
    if admin:
        r = await pivotal.get(f"/organizations/{org}/groups/admins")
        users = [*r.json()["users"], name]
        r = await pivotal.put(
            f"/organizations/{org}/groups/admins",
            {"groupname": "admins", "actors": {"users": users, "clients": [], "groups": []}},
        )
        assert r.status_code == 200, r.text
    return Signed(pivotal.http, pivotal.base, name, key)


async def login(client: Signed, org: str = "default") -> tuple[str, str]:
    """Mint a link as ``client`` and open it: the session id and its CSRF token."""
    r = await client.post(f"/organizations/{org}/pushy/ui/links")
    assert r.status_code == 201, r.text
    url = r.json()["url"]
    r = await client.http.get(url)
    assert r.status_code == 303, r.text
    sid = session_cookie(r)
    r = await client.http.get(f"{client.base}/ui/session", headers=cookie(sid))
    assert r.status_code == 200, r.text
    return sid, r.json()["csrf"]


def session_cookie(r: httpx.Response) -> str:
    header = r.headers["Set-Cookie"]
    match = re.match(rf"{SESSION_COOKIE}=([A-Za-z0-9_-]+);", header)
    assert match, header
    return match.group(1)


def cookie(sid: str, **more: str) -> dict[str, str]:
    return {"Cookie": f"{SESSION_COOKIE}={sid}", **more}


async def test_page_and_files_are_served_with_a_strict_policy(tmp_path: Path) -> None:
    async with appliance(tmp_path) as (info, admin):
        http = admin.http
        for path in ("/ui", "/ui/"):
            r = await http.get(info.url + path)
            assert r.status_code == 200
            assert r.headers["Content-Type"] == "text/html; charset=utf-8"
            assert r.headers["Content-Security-Policy"] == CSP
            assert CSP.startswith("default-src 'self';")
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["X-Frame-Options"] == "DENY"
            assert r.content == (STATIC_DIR / "index.html").read_bytes()
        files = sorted(p.relative_to(STATIC_DIR).as_posix() for p in STATIC_DIR.rglob("*.js"))
        assert "app.js" in files and "pages/job.js" in files
        for name in files:
            r = await http.get(f"{info.url}/ui/static/{name}")
            assert r.status_code == 200, name
            assert r.headers["Content-Type"] == "text/javascript; charset=utf-8"
            assert r.content == (STATIC_DIR / name).read_bytes()
        r = await http.get(f"{info.url}/ui/static/app.css")
        assert r.headers["Content-Type"] == "text/css; charset=utf-8"
        again = await http.get(
            f"{info.url}/ui/static/app.css", headers={"If-None-Match": r.headers["ETag"]}
        )
        assert (again.status_code, again.content) == (304, b"")
        for missing in ("nope.js", "../http/_ui.py", "%2e%2e/http/_ui.py", "pages"):
            r = await http.get(f"{info.url}/ui/static/{missing}")
            assert r.status_code == 404, missing
        # every file the page loads is the package's: no other origin anywhere
        for path in STATIC_DIR.rglob("*"):
            if path.is_file():
                assert not re.search(rb"https?://", path.read_bytes()), path


async def test_a_login_link_works_once_and_sets_a_strict_cookie(tmp_path: Path) -> None:
    async with appliance(tmp_path) as (info, admin):
        r = await admin.post(f"{ORG}/pushy/ui/links")
        assert r.status_code == 201
        doc = r.json()
        assert set(doc) == {"url", "expires_in"} and doc["expires_in"] == 60
        assert re.fullmatch(rf"{re.escape(info.url)}/ui/login/[A-Za-z0-9_-]{{43}}", doc["url"])
        r = await admin.http.get(doc["url"])
        assert r.status_code == 303 and r.headers["Location"] == "/ui/"
        attributes = {a.strip().lower() for a in r.headers["Set-Cookie"].split(";")[1:]}
        assert attributes == {"path=/", "secure", "httponly", "samesite=strict"}
        sid = session_cookie(r)
        reused = await admin.http.get(doc["url"])
        assert reused.status_code == 401
        assert "Set-Cookie" not in reused.headers
        assert "unknown, used or expired" in reused.text
        r = await admin.http.get(f"{info.url}/ui/session", headers=cookie(sid))
        assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
        session = r.json()
        assert session["csrf"] and session["csrf"] != sid
        assert {k: v for k, v in session.items() if k != "csrf"} == {
            "org": "default",
            "principal": {"kind": "user", "name": "admin"},
            "can_read": True,
            "can_write": True,
            "idle_timeout": 43200.0,
        }


async def test_links_need_a_signed_request_by_a_reader_of_the_org(tmp_path: Path) -> None:
    async with appliance(tmp_path) as (info, admin):
        r = await admin.http.post(f"{info.url}{ORG}/pushy/ui/links")
        assert r.status_code == 400  # no signing headers
        r = await admin.post(f"{ORG}/pushy/ui/links", {"extra": 1})
        assert (r.status_code, r.json()) == (400, {"error": "ui/links takes an empty body or {}"})
        r = await admin.post("/organizations/nowhere/pushy/ui/links")
        assert r.status_code == 404
        async with admin_client(info, "pivotal") as pivotal:
            outsider = await new_user(pivotal, "olga", "default")
            r = await pivotal.post(
                f"{ORG}/groups",
                {"groupname": "pushy_job_readers", "actors": {"users": ["admin"]}},
            )
            assert r.status_code == 201, r.text
            r = await outsider.post(f"{ORG}/pushy/ui/links")
            assert r.status_code == 403


async def test_an_expired_link_is_refused(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with appliance(tmp_path) as (_info, admin):
        r = await admin.post(f"{ORG}/pushy/ui/links")
        almost = r.json()["url"]
        # The clock moves only when the server is idle: a response's last bookkeeping runs
        # under a 5 s deadline (http._app._shield_end_of_response) that a jump must not cut.
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(59.9)
        assert (await admin.http.get(almost)).status_code == 303
        r = await admin.post(f"{ORG}/pushy/ui/links")
        expired = r.json()["url"]
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(60.0)
        r = await admin.http.get(expired)
        assert r.status_code == 401 and "Set-Cookie" not in r.headers


async def test_the_cookie_acts_as_its_principal_with_the_same_permissions(tmp_path: Path) -> None:
    async with appliance(tmp_path) as (info, admin), admin_client(info, "pivotal") as pivotal:
        http = admin.http
        reader = await new_user(pivotal, "rita")
        r = await pivotal.post("/organizations", {"name": "other", "full_name": "Other"})
        assert r.status_code == 201, r.text
        olga = await new_user(pivotal, "olga", "other", admin=True)
        admin_sid, admin_csrf = await login(admin)
        reader_sid, reader_csrf = await login(reader)
        olga_sid, olga_csrf = await login(olga, "other")

        jobs = f"{info.url}{ORG}/pushy/jobs"
        body = {"command": "uname", "nodes": ["web1"]}
        # reads need no CSRF token; writes do
        assert (await http.get(jobs, headers=cookie(admin_sid))).json() == []
        r = await http.post(jobs, json=body, headers=cookie(admin_sid))
        assert (r.status_code, r.json()) == (
            403,
            {"error": [f"missing or wrong {CSRF_HEADER} header"]},
        )
        r = await http.post(
            jobs, json=body, headers=cookie(admin_sid, **{CSRF_HEADER: reader_csrf})
        )
        assert r.status_code == 403
        r = await http.post(jobs, json=body, headers=cookie(admin_sid, **{CSRF_HEADER: admin_csrf}))
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        listed = (await http.get(jobs, headers=cookie(admin_sid))).json()
        assert [(j["id"], j["requester"]) for j in listed] == [(job_id, "admin")]

        # a reader reads and may not write, with the cookie as with its key
        r = await http.get(f"{jobs}/{job_id}", headers=cookie(reader_sid))
        assert r.status_code == 200 and r.json()["id"] == job_id
        forbidden = {
            "error": ["User or client 'rita' does not have access to that action on this server."]
        }
        r = await http.post(
            jobs, json=body, headers=cookie(reader_sid, **{CSRF_HEADER: reader_csrf})
        )
        assert (r.status_code, r.json()) == (403, forbidden)
        r = await reader.post(f"{ORG}/pushy/jobs", body)
        assert (r.status_code, r.json()) == (403, forbidden)
        r = await http.post(
            f"{jobs}/{job_id}/abort", headers=cookie(reader_sid, **{CSRF_HEADER: reader_csrf})
        )
        assert (r.status_code, r.json()) == (403, forbidden)
        r = await http.get(f"{info.url}/ui/session", headers=cookie(reader_sid))
        assert (r.json()["can_read"], r.json()["can_write"]) == (True, False)

        # another org's session sees nothing of this org
        r = await http.get(jobs, headers=cookie(olga_sid))
        assert (r.status_code, r.json()) == (
            403,
            {"error": ["this session is for organization 'other'"]},
        )
        r = await http.get(f"{jobs}/{job_id}", headers=cookie(olga_sid))
        assert r.status_code == 403
        r = await http.get(
            f"{info.url}{ORG}/pushy/job_status_feed/{job_id}",
            headers=cookie(olga_sid, Accept="text/event-stream"),
        )
        assert r.status_code == 403
        r = await http.get(
            f"{info.url}/organizations/other/pushy/jobs/{job_id}", headers=cookie(olga_sid)
        )
        assert r.status_code == 404
        assert (
            await http.get(f"{info.url}/organizations/other/pushy/jobs", headers=cookie(olga_sid))
        ).json() == []
        r = await http.post(
            f"{info.url}/organizations/other/pushy/jobs",
            json=body,
            headers=cookie(olga_sid, **{CSRF_HEADER: olga_csrf}),
        )
        assert r.status_code == 201

        # the feeds take the cookie (what EventSource sends); this job is over (its one node
        # is no client, so unavailable at once): its feed is its whole history, then the end
        r = await http.get(
            f"{info.url}{ORG}/pushy/job_status_feed/{job_id}",
            headers=cookie(admin_sid, Accept="text/event-stream"),
        )
        assert r.status_code == 200
        assert r.text.startswith("event: start\nid: job-1\n")
        assert "event: job_complete\n" in r.text

        # only the push-jobs routes take the cookie: identity routes want a signature
        r = await http.get(f"{info.url}{ORG}/clients", headers=cookie(admin_sid))
        assert r.status_code == 400
        # with signing headers, the signature decides (a bad one is refused whatever the cookie)
        r = await http.get(jobs, headers=cookie(admin_sid, **{"X-Ops-UserId": "admin"}))
        assert r.status_code == 400

        # logout: the CSRF token is needed, the session ends, the cookie is cleared
        r = await http.post(f"{info.url}/ui/logout", headers=cookie(admin_sid))
        assert r.status_code == 403
        r = await http.post(
            f"{info.url}/ui/logout", headers=cookie(admin_sid, **{CSRF_HEADER: admin_csrf})
        )
        assert r.status_code == 204
        assert r.headers["Set-Cookie"] == (
            f"{SESSION_COOKIE}=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Secure;"
            " HttpOnly; Path=/; SameSite=Strict"
        )
        r = await http.get(jobs, headers=cookie(admin_sid))
        assert r.status_code == 401
        r = await http.get(f"{info.url}/ui/session", headers=cookie(admin_sid))
        assert (r.status_code, r.json()) == (401, {"error": ["not signed in"]})


async def test_plain_http_serves_the_dashboard_too(tmp_path: Path) -> None:
    async with appliance(tmp_path, insecure_http=True) as (info, admin):
        assert info.url.startswith("http://")
        sid, _ = await login(admin)
        r = await admin.http.get(f"{info.url}{ORG}/pushy/node_states", headers=cookie(sid))
        assert (r.status_code, r.json()) == (200, [])


def test_the_package_and_the_executable_ship_every_dashboard_file() -> None:
    root = Path(__file__).resolve().parent.parent
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["pushy_appliance"]
    package = root / "pushy_appliance"
    files = [p.relative_to(package).as_posix() for p in STATIC_DIR.rglob("*") if p.is_file()]
    assert len(files) >= 10
    # a glob matches one directory level, as setuptools' do
    shipped = [
        f
        for f in files
        if any(len(f.split("/")) == len(g.split("/")) and PurePosixPath(f).match(g) for g in globs)
    ]
    assert sorted(shipped) == sorted(files)
    spec = (root / "pyinstaller.spec").read_text()
    assert '("pushy_appliance/ui/static", "pushy_appliance/ui/static")' in spec
