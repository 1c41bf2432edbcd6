"""Schemathesis against a running appliance: the shared runner of ``tests/test_api_fuzz.py``
(a bounded CI run) and ``benchmarks/fuzz_api.py`` (a longer one).

* The server is a real ``pushy serve`` subprocess on 127.0.0.1 (TLS, port 0), its data
  directory in a temporary directory; requests are checked against its CA.
* The document is the one the server serves (``GET /pushy/openapi.json``). Only one thing is
  changed before generating: the ``org`` path parameter is narrowed to the organization that
  exists (``default``), so generated requests get past the organization lookup and reach the
  routes' own rules (an unknown organization is 404 everywhere, tested elsewhere).
* Every request is signed with Chef's scheme (protocol 1.3) as ``pivotal`` by a ``requests``
  auth hook (:class:`ChefAuth`), over the exact bytes sent: the path as sent, the body as
  serialized. The same state-changing request signed again gets a timestamp a second later
  (the server refuses a replayed signature).
* ``deleteOrg`` is left out: deleting ``default`` would end every later case at the
  organization lookup.
* Checks: no 5xx, and every response as the document says (status, content type, headers,
  body schema).
* Stateless: each operation with ``examples_per_operation`` generated cases, valid by the
  document (positive) or not (negative).
* Stateful: schemathesis' state machine over the document's links (start a job, then get,
  abort, read its output and feed; create a client, then get and delete it).

Failures are collected, not raised at the first one, so a run reports every distinct failure.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import hypothesis
import hypothesis.errors
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pushy_appliance import chef_auth

ROOT = Path(__file__).resolve().parent.parent
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
SKIPPED_OPERATIONS = frozenset({"deleteOrg"})
FEED_TIMEOUT = 1.0
"""Seconds a feed is read before the client stops (the org feed never ends on its own)."""


class ChefAuth(requests.auth.AuthBase):
    """Signs each prepared request as ``user`` (Chef protocol 1.3)."""

    def __init__(self, user: str, key: Any) -> None:
        self.user = user
        self.key = key
        self._last: dict[tuple[str, str, bytes], int] = {}

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body or b""
        if isinstance(body, str):
            body = body.encode("utf-8")
        assert isinstance(body, bytes)
        method = (r.method or "GET").upper()
        # the server verifies the percent-decoded path it received
        path = unquote(urlsplit(r.url or "/").path)
        now = datetime.now(UTC)
        if method not in ("GET", "HEAD", "OPTIONS"):
            second = int(now.timestamp())
            key = (method, path, hashlib.sha256(body).digest())
            last = self._last.get(key)
            if last is not None and last >= second:
                second = last + 1
            self._last[key] = second
            now = datetime.fromtimestamp(second, UTC)
        for name in [h for h in r.headers if h.lower().startswith("x-ops-")]:
            del r.headers[name]
        r.headers.update(chef_auth.sign_request(method, path, body, self.user, self.key,
                                                timestamp=now))  # fmt: skip
        return r


@dataclass
class Server:
    """A running ``pushy serve``."""

    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]

    @property
    def ca_file(self) -> str:
        return str(self.data_dir / "tls" / "ca.pem")

    def key(self, user: str) -> Any:
        return chef_auth.load_private_key((self.data_dir / "keys" / f"{user}.pem").read_bytes())


@contextmanager
def running_pushy(within: float = 60.0) -> Iterator[Server]:
    """``pushy serve`` on 127.0.0.1, port 0, in a temporary data directory; stopped on exit."""
    data = Path(tempfile.mkdtemp(prefix="pushy-fuzz-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PUSHY_LOG_LEVEL": "warning"}
    log = (data.parent / f"{data.name}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "pushy_appliance.cli", "serve", "--data-dir", str(data),
         "--listen", "127.0.0.1:0"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        server_json = data / "run" / "server.json"
        deadline = time.monotonic() + within
        while not server_json.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pushy serve did not start: see {log.name}")
            time.sleep(0.05)  # polling a file another process writes
        url = json.loads(server_json.read_text())["url"]
        yield Server(url, data, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(data, ignore_errors=True)


def load_schema(server: Server) -> Any:
    """The served document, ``org`` narrowed to ``default`` (module docstring)."""
    r = requests.get(server.url + "/pushy/openapi.json", verify=server.ca_file, timeout=30)
    r.raise_for_status()
    doc = copy.deepcopy(r.json())
    for item in doc["paths"].values():
        for param in item.get("parameters", []):
            if param["name"] == "org":
                param["schema"] = {"type": "string", "enum": ["default"]}
    schema = schemathesis.openapi.from_dict(doc)
    return schema.exclude(operation_id=list(SKIPPED_OPERATIONS))


@dataclass
class FuzzReport:
    """What a run tried and found."""

    cases: int = 0
    stateful_steps: int = 0
    stateful_stopped_early: bool = False
    failures: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    def summary(self) -> str:
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        early = " (stopped early by hypothesis)" if self.stateful_stopped_early else ""
        return (
            f"{self.cases} cases tried ({self.stateful_steps} in stateful scenarios{early}), "
            f"{len(self.failures)} failures found; statuses {shown}"
        )


def _call_kwargs(server: Server, auth: ChefAuth, case: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"base_url": server.url, "auth": auth, "verify": server.ca_file}
    kwargs["timeout"] = FEED_TIMEOUT if "status_feed" in case.operation.path else 30
    return kwargs


def _describe(case: Any, error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{case.operation.label}: {' / '.join(text[:6])[:600]}"


def run_fuzz(
    server: Server,
    *,
    examples_per_operation: int,
    stateful_examples: int,
    stateful_steps: int,
    seed: int | None = None,
    deadline: float | None = None,
) -> FuzzReport:
    """Run the stateless then the stateful phase against ``server``.

    Args:
        server: the running appliance.
        examples_per_operation: generated cases per operation (stateless phase).
        stateful_examples: state-machine scenarios.
        stateful_steps: most calls in one scenario.
        seed: the random seed (``None``: random).
        deadline: a ``time.monotonic()`` after which no new operation or scenario starts.

    Returns:
        The report; ``failures`` lists one line per failing case.
    """
    schema = load_schema(server)
    auth = ChefAuth("pivotal", server.key("pivotal"))
    report = FuzzReport()
    seen: set[str] = set()

    def record(case: Any, response: Any, error: BaseException | None) -> None:
        report.cases += 1
        if response is not None:
            report.statuses[response.status_code] = report.statuses.get(response.status_code, 0) + 1
        if error is not None:
            line = _describe(case, error)
            if line not in seen:
                seen.add(line)
                report.failures.append(line)

    settings = hypothesis.settings(
        max_examples=examples_per_operation,
        deadline=None,
        database=None,
        derandomize=seed is not None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
        print_blob=False,
    )
    for result in schema.get_all_operations():
        if deadline is not None and time.monotonic() > deadline:
            break
        operation = result.ok()

        strategy = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(
            GenerationMode.NEGATIVE
        )

        @settings
        @hypothesis.given(case=strategy)
        def one(case: Any) -> None:
            response = None
            try:
                response = case.call(**_call_kwargs(server, auth, case))
                case.validate_response(response, checks=CHECKS)
            except Exception as error:
                record(case, response, error)
            else:
                record(case, response, None)

        if seed is not None:
            one = hypothesis.seed(seed)(one)
        one()

    machine = schema.as_state_machine()

    class Machine(machine):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return _call_kwargs(server, auth, case)

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            error = None
            try:
                case.validate_response(response, checks=CHECKS)
            except Exception as e:
                error = e
            report.stateful_steps += 1
            record(case, response, error)

    if deadline is None or time.monotonic() < deadline:
        # Not derandomized, and generation only: the scenarios depend on the server's answers
        # (the links' bundles), which hypothesis' replay of a scenario would not reproduce.
        try:
            Machine.run(
                settings=hypothesis.settings(
                    max_examples=stateful_examples,
                    stateful_step_count=stateful_steps,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                    phases=[Phase.generate],
                    print_blob=False,
                )
            )
        except hypothesis.errors.FlakyStrategyDefinition:
            # hypothesis stops when a replayed scenario draws differently (the server's
            # answers changed its bundles); the steps run until then were checked and recorded
            report.stateful_stopped_early = True
    return report
