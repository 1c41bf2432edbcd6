"""Interoperability with Chef's own signing library, Ruby's ``mixlib-authentication``.

Requests signed by the Ruby library must pass our verifier, and requests we sign must pass the
Ruby verifier. ``mixlib-authentication`` 3.0 implements protocols 1.0, 1.1 and 1.3; 1.2 exists
only in the Chef Server's Erlang ``chef_authn`` and is covered by ``test_chef_auth.py``.

Ruby is required, not optional: without it these tests fail (CI installs it with
``apt-get install ruby ruby-mixlib-authentication``).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from pushy_appliance import chef_auth
from pushy_appliance.errors import AuthError

RUBY_VERSIONS = ("1.0", "1.1", "1.3")

# Debian's Ruby 3.1 fails on ``require "openssl/digest"`` (which mixlib-authentication does)
# unless ``openssl`` itself is loaded first.
_PRELUDE = """
require "openssl"
require "json"
require "base64"
require "mixlib/authentication/signedheaderauth"
require "mixlib/authentication/signatureverification"
"""

# ARGV: private key file, request list file. Prints a JSON list of header hashes.
_SIGN_SCRIPT = (
    _PRELUDE
    + """
key = OpenSSL::PKey::RSA.new(File.read(ARGV[0]))
requests = JSON.parse(File.read(ARGV[1]))
out = requests.map do |r|
  obj = Mixlib::Authentication::SignedHeaderAuth.signing_object(
    http_method: r["method"].to_sym,
    path: r["path"],
    body: Base64.strict_decode64(r["body"]),
    timestamp: r["timestamp"],
    user_id: r["user_id"],
    proto_version: r["version"],
    headers: r["headers"],
  )
  obj.sign(key)
end
puts JSON.generate(out)
"""
)

# ARGV: public key file, request list file. Prints a JSON list: true, false or an error text.
_VERIFY_SCRIPT = (
    _PRELUDE
    + """
FakeRequest = Struct.new(:method, :path, :env, :params, :raw_post)
public_key = OpenSSL::PKey::RSA.new(File.read(ARGV[0]))
requests = JSON.parse(File.read(ARGV[1]))
out = requests.map do |r|
  env = { "HTTP_HOST" => "localhost" }
  r["headers"].each { |name, value| env["HTTP_" + name.upcase.tr("-", "_")] = value }
  request = FakeRequest.new(r["method"], r["path"], env, {}, Base64.strict_decode64(r["body"]))
  begin
    verifier = Mixlib::Authentication::SignatureVerification.new
    result = verifier.authenticate_user_request(request, public_key, 900)
    !result.nil? && result.name == r["expected_user"]
  rescue Mixlib::Authentication::AuthenticationError => e
    e.message
  end
end
puts JSON.generate(out)
"""
)


@pytest.fixture(scope="module")
def ruby() -> str:
    """The ``ruby`` executable, checked to load mixlib-authentication; fails (never skips)."""
    exe = shutil.which("ruby")
    if exe is None:
        pytest.fail(
            "ruby is not installed: these interoperability tests need Ruby and Chef's "
            "signing library (apt-get install ruby ruby-mixlib-authentication)"
        )
    probe = subprocess.run(
        [exe, "-e", _PRELUDE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        pytest.fail(
            "ruby cannot load mixlib-authentication (apt-get install ruby-mixlib-authentication):"
            f"\n{probe.stderr}"
        )
    return exe


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return chef_auth.generate_private_key()


def run_ruby(
    ruby: str, script: str, key_pem: str, requests: list[dict[str, Any]], tmp: Path
) -> Any:
    key_file = tmp / "key.pem"
    key_file.write_text(key_pem)
    requests_file = tmp / "requests.json"
    requests_file.write_text(json.dumps(requests))
    done = subprocess.run(
        [ruby, "-e", script, str(key_file), str(requests_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"ruby failed:\n{done.stderr}"
    return json.loads(done.stdout)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


CASES = [
    ("POST", "/organizations/acme/pushy/jobs", b'{"command":"chef-client","nodes":["web1"]}'),
    ("GET", "/organizations//acme/pushy/jobs/", b""),
    ("PUT", "/users/alice", bytes(range(256))),
]


def test_ruby_signed_requests_pass_our_verifier(
    ruby: str, key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    requests: list[dict[str, Any]] = [
        {
            "method": method.lower(),
            "path": path,
            "body": b64(body),
            "timestamp": now.isoformat(),
            "user_id": "node-1.example.com",
            "version": version,
            "headers": {"X-Ops-Server-API-Version": api} if api else {},
            "api": api,
        }
        for version in RUBY_VERSIONS
        for method, path, body in CASES
        for api in ("", "1")
    ]
    signed = run_ruby(ruby, _SIGN_SCRIPT, chef_auth.private_key_pem(key), requests, tmp_path)
    assert len(signed) == len(requests)
    other = chef_auth.generate_private_key().public_key()
    for request, headers in zip(requests, signed, strict=True):
        assert headers["X-Ops-Sign"] == (
            f"algorithm={'sha256' if request['version'] == '1.3' else 'sha1'};"
            f"version={request['version']};"
        )
        if request["api"]:
            headers["X-Ops-Server-API-Version"] = request["api"]
        body = base64.b64decode(request["body"])
        req = chef_auth.parse_signed_headers(headers, now=now)
        assert req.user_id == "node-1.example.com"
        assert req.version == request["version"]
        chef_auth.verify_signature(
            req, request["method"], request["path"], body, [other, key.public_key()]
        )
        # And the same request with a changed body is refused.
        with pytest.raises(AuthError) as excinfo:
            chef_auth.verify_signature(
                req, request["method"], request["path"], body + b"!", [key.public_key()]
            )
        assert excinfo.value.status == 401


def test_our_signed_requests_pass_the_ruby_verifier(
    ruby: str, key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    requests: list[dict[str, Any]] = []
    for version in RUBY_VERSIONS:
        for method, path, body in CASES:
            for api in ("0", "1"):
                headers = chef_auth.sign_request(
                    method,
                    path,
                    body,
                    "node-1.example.com",
                    key,
                    version=version,
                    server_api_version=api,
                    timestamp=datetime.now(UTC),
                )
                requests.append(
                    {
                        "method": method,
                        "path": path,
                        "body": b64(body),
                        "headers": headers,
                        "expected_user": "node-1.example.com",
                    }
                )
    results = run_ruby(ruby, _VERIFY_SCRIPT, chef_auth.public_key_pem(key), requests, tmp_path)
    assert results == [True] * len(requests)


def test_ruby_verifier_refuses_our_tampered_requests(
    ruby: str, key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    """Guards the test above: the Ruby harness really can say no."""
    method, path, body = CASES[0]
    requests: list[dict[str, Any]] = []
    for version in RUBY_VERSIONS:
        headers = chef_auth.sign_request(
            method, path, body, "alice", key, version=version, timestamp=datetime.now(UTC)
        )
        good = {
            "method": method,
            "path": path,
            "body": b64(body),
            "headers": headers,
            "expected_user": "alice",
        }
        requests += [
            good,
            good | {"body": b64(body + b" ")},
            good | {"path": path + "/1"},
            good | {"method": "PUT"},
            good | {"headers": headers | {"X-Ops-UserId": "bob"}, "expected_user": "bob"},
        ]
    results = run_ruby(ruby, _VERIFY_SCRIPT, chef_auth.public_key_pem(key), requests, tmp_path)
    assert len(results) == len(requests)
    for index, result in enumerate(results):
        assert (result is True) is (index % 5 == 0), (index, result)

    wrong = chef_auth.public_key_pem(chef_auth.generate_private_key())
    results = run_ruby(ruby, _VERIFY_SCRIPT, wrong, requests[::5], tmp_path)
    assert True not in results
    assert len(results) == len(RUBY_VERSIONS)
