"""The fleet inventory end to end (issue 14): real ``pushy agent`` subprocesses with different
tags and attributes, matched by queries through the nodes API, the CLI and the Chef Server
search routes (requests shaped as knife and knife-push send them, signed by Chef's Ruby
library); a job by search with a percentage quorum, an offline match ending unavailable; a
facts change reported after SIGHUP; and an agent's facts taken from ohai equal ohai's own."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trio
from test_chef_auth_ruby import ruby  # noqa: F401  (the fixture)
from test_node_e2e import Proc, create_client, spawn, write_key

from pushy_appliance.appliance import ServerInfo

from helpers import Signed, admin_client, running_server, test_config

ORG = "/organizations/default"
NODES = f"{ORG}/pushy/nodes"
LIMIT = 60.0
AGENT = [sys.executable, "-m", "pushy_appliance.cli", "agent"]
PUSHY = [sys.executable, "-m", "pushy_appliance.cli"]
FINISHED = {"complete", "quorum_failed", "timed_out", "aborted", "crashed"}

# node → (top-level facts settings, [facts] table lines)
FLEET: dict[str, tuple[str, str]] = {
    "web-1": (
        'tags = ["web", "eu"]\nenvironment = "production"\nroles = ["base", "web"]\n',
        '[facts.attributes]\nrack = "r1"\napp = { name = "shop", ports = [80, 443] }\n',
    ),
    "web-2": (
        'tags = ["web"]\nenvironment = "staging"\n',
        '[facts.attributes]\nrack = "r2"\n',
    ),
    "db-1": ('tags = ["db"]\nenvironment = "production"\n', ""),
}

ALLOW = "\n[[allow]]\npattern = '^say ([a-z]+)$'\nrun = '/bin/echo \\1'\n"


def agent_config(
    path: Path, *, url: str, node: str, key: Path, state: Path, top: str, facts: str
) -> Path:
    """An agent config with the operator's facts (``top`` before any table)."""
    path.write_text(
        top
        + f"server_url = {json.dumps(url + ORG)}\n"
        + f"node_name = {json.dumps(node)}\n"
        + f"client_key = {json.dumps(str(key))}\n"
        + f"state_dir = {json.dumps(str(state))}\n"
        + f"working_dir = {json.dumps(str(path.parent))}\n"
        + '[log]\nlevel = "debug"\n'
        + facts
        + ALLOW
    )
    return path


async def names(admin: Signed, query: str | None = None) -> list[str]:
    params = "" if query is None else "?q=" + _quote(query)
    r = await admin.get(NODES + params)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["total"] == len(doc["rows"])
    return [row["name"] for row in doc["rows"]]


def _quote(text: str) -> str:
    return quote(text, safe="")


async def wait_rows(admin: Signed, query: str, expected: list[str]) -> None:
    """Poll ``GET pushy/nodes?q=`` until it finds exactly ``expected``."""
    while await names(admin, query) != expected:  # noqa: ASYNC110  (the API has no event)
        await trio.sleep(0.05)


async def wait_job(admin: Signed, job_id: str) -> dict[str, Any]:
    while True:
        r = await admin.get(f"{ORG}/pushy/jobs/{job_id}")
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        if doc["status"] in FINISHED:
            return doc
        await trio.sleep(0.05)


@asynccontextmanager
async def fleet(
    tmp_path: Path, info: ServerInfo, admin: Signed
) -> AsyncIterator[tuple[dict[str, Proc], dict[str, Path]]]:
    """The three agents of :data:`FLEET`, online; their processes and config files."""
    procs: dict[str, Proc] = {}
    configs: dict[str, Path] = {}
    async with AsyncExitStack() as stack:
        for node, (top, facts) in FLEET.items():
            pem = await create_client(admin, node)
            assert pem is not None
            home = tmp_path / node
            home.mkdir()
            key = write_key(home / "key.pem", pem)
            configs[node] = agent_config(
                home / "agent.toml",
                url=info.url,
                node=node,
                key=key,
                state=home / "state",
                top=top,
                facts=facts,
            )
            argv = [*AGENT, "--config", str(configs[node])]
            procs[node] = await stack.enter_async_context(spawn(node, argv))
        await wait_rows(admin, "status:online", sorted(FLEET))
        yield procs, configs


# Ruby: ARGV = base URL, org, user, key file, request list file. Each request is sent as
# Chef's search client sends it (Chef::Search::Query#create_query_string: q, start and rows
# escaped with Addressable's query class; a POST with a JSON body is partial search),
# knife-push's query escaped first as its job start does (URI.escape of all but unreserved),
# signed by mixlib-authentication over the path without the query string, as Chef's HTTP
# authenticator does. Prints the answers as a JSON list.
_RUBY_SEARCH = """
require "openssl"
require "json"
require "time"
require "uri"
require "net/http"
require "addressable/uri"
require "mixlib/authentication/signedheaderauth"

base, org, user, key_file, requests_file = ARGV
key = OpenSSL::PKey::RSA.new(File.read(key_file))
uri = URI(base)
http = Net::HTTP.new(uri.host, uri.port)
query_class = Addressable::URI::CharacterClasses::QUERY + "\\\\&\\\\;"
out = JSON.parse(File.read(requests_file)).map do |r|
  q = r["q"]
  if r["knife_push"]
    q = URI::DEFAULT_PARSER.escape(q, Regexp.new("[^#{URI::PATTERN::UNRESERVED}]"))
  end
  path = "/organizations/#{org}/search/node"
  full = "#{path}?q=#{Addressable::URI.encode_component(q, query_class)}"
  full += "&start=#{r["start"]}" if r["start"]
  full += "&rows=#{r["rows"]}"
  body = r["body"] ? JSON.generate(r["body"]) : ""
  method = r["body"] ? :post : :get
  signed = Mixlib::Authentication::SignedHeaderAuth.signing_object(
    http_method: method, path: path, body: body, timestamp: Time.now.utc.iso8601,
    user_id: user, proto_version: "1.1",
  ).sign(key)
  req = method == :post ? Net::HTTP::Post.new(full) : Net::HTTP::Get.new(full)
  req["Accept"] = "application/json"
  req["X-Chef-Version"] = "16.12.3"
  req["X-Ops-Server-API-Version"] = "1"
  signed.each { |name, value| req[name.to_s] = value }
  if method == :post
    req["Content-Type"] = "application/json"
    req.body = body
  end
  res = http.request(req)
  { "sent" => full, "status" => res.code.to_i, "body" => JSON.parse(res.body) }
end
puts JSON.generate(out)
"""


async def chef_search(
    exe: str, info: ServerInfo, tmp_path: Path, requests: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Send ``requests`` to the Chef search routes from Ruby, as admin (see the script)."""
    requests_file = tmp_path / "requests.json"
    requests_file.write_text(json.dumps(requests))
    done = await trio.run_process(
        [
            exe,
            "-e",
            _RUBY_SEARCH,
            info.url,
            "default",
            "admin",
            str(info.data_dir / "keys" / "admin.pem"),
            str(requests_file),
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    answers: list[dict[str, Any]] = json.loads(done.stdout)
    return answers


async def pushy(info: ServerInfo, *args: str) -> tuple[int, str, str]:
    """Run the CLI as admin against the server; its exit code, stdout and stderr."""
    env = {
        **os.environ,
        "PUSHY_SERVER": info.url + ORG,
        "PUSHY_USER": "admin",
        "PUSHY_KEY": str(info.data_dir / "keys" / "admin.pem"),
    }
    done = await trio.run_process(
        [*PUSHY, *args], env=env, capture_stdout=True, capture_stderr=True, check=False
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_agents_are_found_by_their_facts_through_api_cli_and_chef_search(
    tmp_path: Path,
    ruby: str,  # noqa: F811  (the fixture imported above)
) -> None:
    data = tmp_path / "data"
    with trio.fail_after(LIMIT * 2):
        async with (
            running_server(test_config(data, insecure_http=True)) as info,
            admin_client(info) as admin,
            fleet(tmp_path, info, admin) as (procs, configs),
        ):
            # --- the nodes API -----------------------------------------------------------
            assert await names(admin) == ["db-1", "web-1", "web-2"]
            assert await names(admin, "tags:web") == ["web-1", "web-2"]
            assert await names(admin, "app_name:shop") == ["web-1"]
            assert await names(admin, "app.ports:443 OR rack:r2") == ["web-1", "web-2"]
            assert await names(admin, "chef_environment:production AND tags:db") == ["db-1"]
            assert await names(admin, "tags:web -chef_environment:staging") == ["web-1"]
            assert await names(admin, "roles:web AND name:web-*") == ["web-1"]
            assert await names(admin, "pushy_agent_version:* AND os:linux") == sorted(FLEET)
            r = await admin.get(f"{NODES}?q=tags:web&start=1&rows=5")
            assert (r.json()["total"], [x["name"] for x in r.json()["rows"]]) == (2, ["web-2"])
            timing = re.fullmatch(r"search;dur=(\d+\.\d\d), app;dur=(\d+\.\d\d)",
                                  r.headers["server-timing"])  # fmt: skip
            assert timing is not None and float(timing[1]) <= float(timing[2])
            r = await admin.get(f"{NODES}?q={_quote('tags:(web')}")
            assert r.status_code == 400
            assert r.json() == {"error": ["invalid search query: unclosed '(' at position 5"]}
            r = await admin.get(f"{NODES}/web-1")
            assert r.status_code == 200, r.text
            row = r.json()
            assert (row["name"], row["status"], row["availability"]) == (
                "web-1",
                "online",
                "available",
            )
            assert row["last_seen"].endswith(" GMT")
            facts = row["facts"]
            assert facts["tags"] == ["web", "eu"]
            assert facts["roles"] == ["base", "web"]
            assert facts["chef_environment"] == "production"
            assert facts["app"] == {"name": "shop", "ports": [80, 443]}
            assert facts["rack"] == "r1"
            assert "uptime_seconds" not in facts  # never kept stale (docs/SEARCH.md)
            assert (await admin.get(f"{NODES}/nobody")).status_code == 404

            # --- Chef's search routes, as knife and knife-push ask them -------------------
            answers = await chef_search(
                ruby,
                info,
                tmp_path,
                [
                    {"q": "tags:web", "knife_push": True, "start": 0, "rows": 1000},
                    {"q": "chef_environment:production", "start": 0, "rows": 1000},
                    {"q": "tags:web", "start": 1, "rows": 1},
                    {
                        "q": "tags:web OR tags:db",
                        "start": 0,
                        "rows": 1000,
                        "body": {
                            "__display_name": ["name"],
                            "ip": ["ipaddress"],
                            "env": ["chef_environment"],
                            "machine": ["kernel", "machine"],
                            "rack": ["rack"],
                            "tags": ["tags"],
                        },
                    },
                    {"q": "tags:web AND", "start": 0, "rows": 1000},
                    {"q": "*:*", "start": 0, "rows": "x"},
                ],
            )
            assert [a["status"] for a in answers] == [200, 200, 200, 200, 400, 400]
            knife_push = answers[0]
            assert "q=tags%253Aweb" in knife_push["sent"]  # escaped twice, decoded twice
            assert knife_push["body"]["total"] == 2
            node = knife_push["body"]["rows"][0]
            assert node["name"] == "web-1"
            assert (node["json_class"], node["chef_type"]) == ("Chef::Node", "node")
            assert node["chef_environment"] == "production"
            assert node["run_list"] == ["role[base]", "role[web]"]
            assert node["normal"] == {"tags": ["web", "eu"]}
            assert node["automatic"]["rack"] == "r1"
            assert (node["default"], node["override"]) == ({}, {})
            assert [n["name"] for n in answers[1]["body"]["rows"]] == ["db-1", "web-1"]
            page = answers[2]["body"]
            assert (page["total"], page["start"]) == (2, 1)
            assert [n["name"] for n in page["rows"]] == ["web-2"]
            partial = answers[3]["body"]
            assert partial["total"] == 3
            first = partial["rows"][0]
            assert first["url"] == f"{info.url}{ORG}/nodes/db-1"
            ip = (await admin.get(f"{NODES}/db-1")).json()["facts"].get("ipaddress")
            assert first["data"] == {
                "__display_name": "db-1",
                "ip": ip,
                "env": "production",
                "machine": os.uname().machine,
                "rack": None,
                "tags": ["db"],
            }
            assert [x["data"]["rack"] for x in partial["rows"]] == [None, "r1", "r2"]
            assert answers[4]["body"] == {
                "error": ["invalid search query: unexpected end of query, expected a term at"
                          " position 12"]
            }  # fmt: skip
            assert answers[5]["body"] == {"error": ["invalid 'rows' value: 'x'"]}

            # --- the CLI ----------------------------------------------------------------
            code, out, err = await pushy(info, "node", "list", "--search", "tags:web", "--json")
            assert code == 0, err
            assert [x["name"] for x in json.loads(out)["rows"]] == ["web-1", "web-2"]
            code, out, err = await pushy(info, "node", "list", "--search", "rack:r2")
            assert code == 0, err
            lines = out.splitlines()
            assert lines[0].split() == ["NODE", "STATUS", "PLATFORM", "IPADDRESS", "TAGS"]
            assert lines[1].split()[:2] == ["web-2", "online"]
            assert lines[1].split()[-1] == "web"
            assert lines[-1] == "1 node match 'rack:r2': 1 online, 0 offline"
            code, out, err = await pushy(
                info, "job", "start", "say hi", "--search", "tags:web", "--dry-run"
            )
            assert code == 0, err
            assert out.splitlines()[0] == "search 'tags:web' matches 2 nodes"
            assert [line.split()[0] for line in out.splitlines()[2:]] == ["web-1", "web-2"]
            assert await names(admin, "name:*") == sorted(FLEET)  # nothing started
            code, out, err = await pushy(info, "node", "show", "web-2")
            assert code == 0, err
            assert ["rack", "r2"] in [line.split() for line in out.splitlines()]

            # --- an offline match: still found, and unavailable in a job by search ------
            procs["web-2"].process.send_signal(signal.SIGKILL)
            await wait_rows(admin, "status:offline", ["web-2"])
            assert await names(admin, "tags:web") == ["web-1", "web-2"]
            assert await names(admin, "tags:web AND availability:available") == ["web-1"]
            r = await admin.post(
                f"{ORG}/pushy/jobs", {"command": "say hi", "search": "tags:web", "quorum": "50%"}
            )
            assert r.status_code == 201, r.text
            doc = await wait_job(admin, r.json()["id"])
            assert doc["status"] == "complete"
            assert doc["nodes"] == {"succeeded": ["web-1"], "unavailable": ["web-2"]}
            assert (doc["search"], doc["quorum"]) == ("tags:web", 1)
            # the whole match count: 100% of 2 is 2, one is offline
            r = await admin.post(f"{ORG}/pushy/jobs", {"command": "say hi", "search": "tags:web"})
            assert r.status_code == 201, r.text
            doc = await wait_job(admin, r.json()["id"])
            assert (doc["status"], doc["quorum"]) == ("quorum_failed", 2)
            r = await admin.post(f"{ORG}/pushy/jobs", {"command": "say hi", "search": "tags:x"})
            assert (r.status_code, r.json()) == (400, {"error": ["no nodes match the search"]})
            r = await admin.post(
                f"{ORG}/pushy/jobs", {"command": "say hi", "search": "tags:web", "quorum": 3}
            )
            assert (r.status_code, r.json()) == (400, {"error": "invalid quorum (must be 0 .. 2)"})
            code, out, err = await pushy(
                info, "job", "start", "say hi", "--search", "chef_environment:production"
            )
            assert code == 0, out + err
            assert out.splitlines()[0] == "search 'chef_environment:production' matched 2 nodes"

            # --- a facts change after SIGHUP: one facts frame, found by the new tag ------
            text = configs["web-1"].read_text()
            configs["web-1"].write_text(
                text.replace('tags = ["web", "eu"]', 'tags = ["web", "canary"]')
            )
            procs["web-1"].process.send_signal(signal.SIGHUP)
            await wait_rows(admin, "tags:canary", ["web-1"])
            assert await names(admin, "tags:eu") == []
            assert procs["web-1"].count("facts changed, sent") == 1


async def test_an_agents_facts_from_ohai_are_ohais_own(tmp_path: Path) -> None:
    """With ``facts.ohai = "on"`` the node's ``platform``, ``platform_version``,
    ``ipaddress`` and ``fqdn``, as the API serves them, are what ohai says on this machine."""
    ohai = shutil.which("ohai")
    assert ohai is not None, "ohai is not installed (apt-get install ohai; scripts/test does)"
    data = tmp_path / "data"
    with trio.fail_after(LIMIT * 2):
        async with (
            running_server(test_config(data, insecure_http=True)) as info,
            admin_client(info) as admin,
        ):
            pem = await create_client(admin, "ohai-node")
            assert pem is not None
            key = write_key(tmp_path / "key.pem", pem)
            config = agent_config(
                tmp_path / "agent.toml",
                url=info.url,
                node="ohai-node",
                key=key,
                state=tmp_path / "state",
                top="",
                facts="",
            )
            argv = [*AGENT, "--config", str(config)]
            async with spawn("ohai-node", argv, env={"PUSHY_FACTS_OHAI": "on"}) as agent:
                await wait_rows(admin, "status:online", ["ohai-node"])
                served = (await admin.get(f"{NODES}/ohai-node")).json()["facts"]
                own = json.loads(
                    (await trio.run_process([ohai, "-l", "fatal"], capture_stdout=True)).stdout
                )
                for name in ("platform", "platform_version", "ipaddress", "fqdn"):
                    assert served[name] == own[name], name
                assert agent.count("facts collected (ohai") == 1
