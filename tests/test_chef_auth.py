"""Chef request signing: canonical forms, round trips and every refusal of the verifier."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import Headers

from pushy_appliance import chef_auth
from pushy_appliance.errors import AuthError, KeyFormatError, PushyError

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
STAMP = "2024-05-01T12:00:00Z"
PATH = "/organizations/acme/pushy/jobs"
BODY = b'{"command":"chef-client","nodes":["web1"]}'


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return chef_auth.generate_private_key()


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return chef_auth.generate_private_key()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sign(
    key: rsa.RSAPrivateKey,
    version: str,
    *,
    method: str = "POST",
    path: str = PATH,
    body: bytes = BODY,
    user: str = "alice",
    when: datetime = NOW,
) -> dict[str, str]:
    return chef_auth.sign_request(method, path, body, user, key, version=version, timestamp=when)


def signature_of(headers: dict[str, str]) -> bytes:
    lines = []
    n = 1
    while f"X-Ops-Authorization-{n}" in headers:
        lines.append(headers[f"X-Ops-Authorization-{n}"])
        n += 1
    return base64.b64decode("".join(lines))


def auth_error(excinfo: pytest.ExceptionInfo[AuthError]) -> tuple[int, str]:
    return excinfo.value.status, excinfo.value.message


# --------------------------------------------------------------------------- canonical forms


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", "/"),
        ("", "/"),
        ("//", "/"),
        ("/organizations/acme/", "/organizations/acme"),
        ("/organizations//acme///pushy/jobs//", "/organizations/acme/pushy/jobs"),
        ("/organizations/acme/pushy/jobs?status=running&limit=2", "/organizations/acme/pushy/jobs"),
        ("/a/?x=/b//", "/a"),
        ("/?x=1", "/"),
    ],
)
def test_canonical_path(raw: str, expected: str) -> None:
    assert chef_auth.canonical_path(raw) == expected


def v1_canonical(*, user_line: str, method: str = "POST", path: str = PATH) -> bytes:
    return "\n".join(
        [
            f"Method:{method}",
            f"Hashed Path:{b64(hashlib.sha1(path.encode()).digest())}",
            f"X-Ops-Content-Hash:{b64(hashlib.sha1(BODY).digest())}",
            f"X-Ops-Timestamp:{STAMP}",
            f"X-Ops-UserId:{user_line}",
        ]
    ).encode()


def test_v1_0_is_raw_private_encryption_of_the_canonical_string(key: rsa.RSAPrivateKey) -> None:
    headers = sign(key, "1.0", method="post", path=PATH + "/")
    recovered = key.public_key().recover_data_from_signature(
        signature_of(headers), padding.PKCS1v15(), None
    )
    assert recovered == v1_canonical(user_line="alice")


def test_v1_1_hashes_the_user_id(key: rsa.RSAPrivateKey) -> None:
    headers = sign(key, "1.1")
    recovered = key.public_key().recover_data_from_signature(
        signature_of(headers), padding.PKCS1v15(), None
    )
    assert recovered == v1_canonical(user_line=b64(hashlib.sha1(b"alice").digest()))


def test_v1_2_is_an_rsa_sha1_signature_over_the_1_1_string(key: rsa.RSAPrivateKey) -> None:
    headers = sign(key, "1.2")
    expected = v1_canonical(user_line=b64(hashlib.sha1(b"alice").digest()))
    key.public_key().verify(signature_of(headers), expected, padding.PKCS1v15(), hashes.SHA1())


def test_v1_3_is_an_rsa_sha256_signature(key: rsa.RSAPrivateKey) -> None:
    headers = chef_auth.sign_request(
        "put", PATH + "?x=1", BODY, "alice", key, timestamp=NOW, server_api_version="1"
    )
    expected = "\n".join(
        [
            "Method:PUT",
            f"Path:{PATH}",
            f"X-Ops-Content-Hash:{b64(hashlib.sha256(BODY).digest())}",
            "X-Ops-Sign:version=1.3",
            f"X-Ops-Timestamp:{STAMP}",
            "X-Ops-UserId:alice",
            "X-Ops-Server-API-Version:1",
        ]
    ).encode()
    key.public_key().verify(signature_of(headers), expected, padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize("version", chef_auth.SUPPORTED_VERSIONS)
def test_signed_header_shape(key: rsa.RSAPrivateKey, version: str) -> None:
    headers = sign(key, version)
    digest = hashlib.sha256 if version == "1.3" else hashlib.sha1
    algorithm = "sha256" if version == "1.3" else "sha1"
    assert headers["X-Ops-Sign"] == f"algorithm={algorithm};version={version}"
    assert headers["X-Ops-UserId"] == "alice"
    assert headers["X-Ops-Timestamp"] == STAMP
    assert headers["X-Ops-Content-Hash"] == b64(digest(BODY).digest())
    lines = [v for k, v in headers.items() if k.startswith("X-Ops-Authorization-")]
    assert len(lines) == 6  # 344 base64 characters of a 2048-bit signature
    assert all(len(line) == 60 for line in lines[:-1])
    assert 0 < len(lines[-1]) <= 60
    assert ("X-Ops-Server-API-Version" in headers) is (version == "1.3")


def test_signing_timestamp_is_utc_whole_seconds(key: rsa.RSAPrivateKey) -> None:
    local = datetime(2024, 5, 1, 14, 0, 0, 999_999, tzinfo=timezone(timedelta(hours=2)))
    assert sign(key, "1.3", when=local)["X-Ops-Timestamp"] == STAMP
    naive = datetime(2024, 5, 1, 12, 0, 0)
    assert sign(key, "1.3", when=naive)["X-Ops-Timestamp"] == STAMP


def test_unsupported_signing_version_is_a_programming_error(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError, match=r"1\.4"):
        sign(key, "1.4")


def test_v1_0_with_a_user_id_too_long_for_the_key(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(KeyFormatError, match=r"use protocol 1\.3"):
        sign(key, "1.0", user="u" * 255)
    # 1.1 hashes the user id, so the same name fits.
    headers = sign(key, "1.1", user="u" * 255)
    req = chef_auth.parse_signed_headers(headers, now=NOW)
    chef_auth.verify_signature(req, "POST", PATH, BODY, [key.public_key()])


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("version", chef_auth.SUPPORTED_VERSIONS)
def test_round_trip_accepts_any_matching_key(
    key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey, version: str
) -> None:
    headers = sign(key, version, path="/organizations//acme/pushy/jobs/")
    req = chef_auth.parse_signed_headers(headers, now=NOW + timedelta(seconds=899))
    assert req.user_id == "alice"
    assert req.version == version
    assert req.timestamp == NOW
    assert req.server_api_version == "0"
    chef_auth.verify_signature(
        req, "post", PATH + "?ignored=1", BODY, [other_key.public_key(), key.public_key()]
    )


@pytest.mark.parametrize("version", chef_auth.SUPPORTED_VERSIONS)
def test_header_names_are_case_insensitive(key: rsa.RSAPrivateKey, version: str) -> None:
    headers = sign(key, version)
    lower = {k.lower(): v for k, v in headers.items()}
    upper = Headers([(k.upper(), v) for k, v in headers.items()])
    for variant in (lower, upper):
        req = chef_auth.parse_signed_headers(variant, now=NOW)
        chef_auth.verify_signature(req, "POST", PATH, BODY, [key.public_key()])


@pytest.mark.parametrize(
    "sign_value",
    [
        "algorithm=sha1;version=1.0;",
        "version=1.0",
        " algorithm=SHA1 ; version=1.0 ",
        "version=1.0;",
    ],
)
def test_sign_header_forms_of_ruby_and_erlang(key: rsa.RSAPrivateKey, sign_value: str) -> None:
    headers = sign(key, "1.0") | {"X-Ops-Sign": sign_value}
    req = chef_auth.parse_signed_headers(headers, now=NOW)
    assert req.version == "1.0"
    chef_auth.verify_signature(req, "POST", PATH, BODY, [key.public_key()])


def test_v1_3_without_algorithm_is_sha256(key: rsa.RSAPrivateKey) -> None:
    headers = sign(key, "1.3") | {"X-Ops-Sign": "version=1.3"}
    req = chef_auth.parse_signed_headers(headers, now=NOW)
    chef_auth.verify_signature(req, "POST", PATH, BODY, [key.public_key()])


def test_v1_3_signs_the_server_api_version(key: rsa.RSAPrivateKey) -> None:
    headers = chef_auth.sign_request(
        "GET", PATH, b"", "alice", key, timestamp=NOW, server_api_version="1"
    )
    req = chef_auth.parse_signed_headers(headers, now=NOW)
    assert req.server_api_version == "1"
    chef_auth.verify_signature(req, "GET", PATH, b"", [key.public_key()])
    forged = chef_auth.parse_signed_headers(headers | {"X-Ops-Server-API-Version": "2"}, now=NOW)
    with pytest.raises(AuthError):
        chef_auth.verify_signature(forged, "GET", PATH, b"", [key.public_key()])


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    version=st.sampled_from(chef_auth.SUPPORTED_VERSIONS),
    body=st.binary(max_size=512),
    segments=st.lists(st.from_regex(r"[A-Za-z0-9_.:-]{1,12}", fullmatch=True), max_size=5),
    user=st.from_regex(r"[A-Za-z0-9_.:-]{1,40}", fullmatch=True),
    flip=st.integers(min_value=0),
)
def test_property_round_trip_and_any_body_change_is_refused(
    key: rsa.RSAPrivateKey,
    version: str,
    body: bytes,
    segments: list[str],
    user: str,
    flip: int,
) -> None:
    path = "/" + "/".join(segments)
    headers = chef_auth.sign_request("POST", path, body, user, key, version=version, timestamp=NOW)
    req = chef_auth.parse_signed_headers(headers, now=NOW)
    chef_auth.verify_signature(req, "POST", path, body, [key.public_key()])
    tampered = bytearray(body or b"\x00")
    tampered[flip % len(tampered)] ^= 0x01
    if not body:
        tampered = bytearray(b"x")
    with pytest.raises(AuthError) as excinfo:
        chef_auth.verify_signature(req, "POST", path, bytes(tampered), [key.public_key()])
    assert excinfo.value.status == 401


# --------------------------------------------------------------------------- refusals


def invalid(user: str = "alice") -> tuple[int, str]:
    return 401, f"Invalid signature for user or client '{user}'"


@pytest.mark.parametrize("version", chef_auth.SUPPORTED_VERSIONS)
def test_wrong_key(key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey, version: str) -> None:
    req = chef_auth.parse_signed_headers(sign(key, version), now=NOW)
    with pytest.raises(AuthError) as excinfo:
        chef_auth.verify_signature(req, "POST", PATH, BODY, [other_key.public_key()])
    assert auth_error(excinfo) == invalid()
    assert excinfo.value.headers == {"WWW-Authenticate": chef_auth.WWW_AUTHENTICATE}
    assert excinfo.value.body() == {"error": ["Invalid signature for user or client 'alice'"]}


@pytest.mark.parametrize("version", chef_auth.SUPPORTED_VERSIONS)
def test_no_keys_at_all(key: rsa.RSAPrivateKey, version: str) -> None:
    req = chef_auth.parse_signed_headers(sign(key, version), now=NOW)
    with pytest.raises(AuthError) as excinfo:
        chef_auth.verify_signature(req, "POST", PATH, BODY, [])
    assert auth_error(excinfo) == invalid()


@pytest.mark.parametrize("version", chef_auth.SUPPORTED_VERSIONS)
def test_tampered_body(key: rsa.RSAPrivateKey, version: str) -> None:
    req = chef_auth.parse_signed_headers(sign(key, version), now=NOW)
    with pytest.raises(AuthError) as excinfo:
        chef_auth.verify_signature(req, "POST", PATH, BODY + b" ", [key.public_key()])
    assert auth_error(excinfo) == invalid()


@pytest.mark.parametrize("version", chef_auth.SUPPORTED_VERSIONS)
def test_tampered_content_hash_header_matching_a_forged_body(
    key: rsa.RSAPrivateKey, version: str
) -> None:
    forged_body = b'{"command":"rm -rf /","nodes":["web1"]}'
    digest = hashlib.sha256 if version == "1.3" else hashlib.sha1
    headers = sign(key, version) | {"X-Ops-Content-Hash": b64(digest(forged_body).digest())}
    req = chef_auth.parse_signed_headers(headers, now=NOW)
    with pytest.raises(AuthError) as excinfo:
        chef_auth.verify_signature(req, "POST", PATH, forged_body, [key.public_key()])
    assert auth_error(excinfo) == invalid()


@pytest.mark.parametrize("version", chef_auth.SUPPORTED_VERSIONS)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/organizations/acme/pushy/jobs/1"),
        ("POST", "/organizations/evil/pushy/jobs"),
        ("PUT", PATH),
    ],
)
def test_tampered_path_or_method(
    key: rsa.RSAPrivateKey, version: str, method: str, path: str
) -> None:
    req = chef_auth.parse_signed_headers(sign(key, version), now=NOW)
    with pytest.raises(AuthError) as excinfo:
        chef_auth.verify_signature(req, method, path, BODY, [key.public_key()])
    assert auth_error(excinfo) == invalid()


@pytest.mark.parametrize("version", chef_auth.SUPPORTED_VERSIONS)
def test_other_user_id(key: rsa.RSAPrivateKey, version: str) -> None:
    headers = sign(key, version) | {"X-Ops-UserId": "mallory"}
    req = chef_auth.parse_signed_headers(headers, now=NOW)
    with pytest.raises(AuthError) as excinfo:
        chef_auth.verify_signature(req, "POST", PATH, BODY, [key.public_key()])
    assert auth_error(excinfo) == invalid("mallory")


@pytest.mark.parametrize("version", chef_auth.SUPPORTED_VERSIONS)
def test_timestamp_header_changed_after_signing(key: rsa.RSAPrivateKey, version: str) -> None:
    headers = sign(key, version) | {"X-Ops-Timestamp": "2024-05-01T12:00:01Z"}
    req = chef_auth.parse_signed_headers(headers, now=NOW)
    with pytest.raises(AuthError) as excinfo:
        chef_auth.verify_signature(req, "POST", PATH, BODY, [key.public_key()])
    assert auth_error(excinfo) == invalid()


@pytest.mark.parametrize("version", chef_auth.SUPPORTED_VERSIONS)
def test_missing_authorization_lines_fail_in_verify(key: rsa.RSAPrivateKey, version: str) -> None:
    headers = {k: v for k, v in sign(key, version).items() if "Authorization" not in k}
    req = chef_auth.parse_signed_headers(headers, now=NOW)
    assert req.signature == b""
    with pytest.raises(AuthError) as excinfo:
        chef_auth.verify_signature(req, "POST", PATH, BODY, [key.public_key()])
    assert auth_error(excinfo) == invalid()


@pytest.mark.parametrize("version", chef_auth.SUPPORTED_VERSIONS)
def test_truncated_or_garbled_signature(key: rsa.RSAPrivateKey, version: str) -> None:
    headers = sign(key, version)
    truncated = {k: v for k, v in headers.items() if k != "X-Ops-Authorization-6"}
    garbled = headers | {"X-Ops-Authorization-2": "!!!not base64!!!"}
    for variant in (truncated, garbled):
        req = chef_auth.parse_signed_headers(variant, now=NOW)
        with pytest.raises(AuthError) as excinfo:
            chef_auth.verify_signature(req, "POST", PATH, BODY, [key.public_key()])
        assert auth_error(excinfo) == invalid()


@pytest.mark.parametrize("offset", [timedelta(minutes=16), timedelta(minutes=-16)])
def test_timestamp_sixteen_minutes_off(key: rsa.RSAPrivateKey, offset: timedelta) -> None:
    headers = sign(key, "1.3", when=NOW - offset)
    with pytest.raises(AuthError) as excinfo:
        chef_auth.parse_signed_headers(headers, now=NOW)
    assert auth_error(excinfo) == (
        401,
        "Failed to authenticate as alice. Synchronize the clock on your host.",
    )


def test_clock_skew_boundary(key: rsa.RSAPrivateKey) -> None:
    headers = sign(key, "1.3")
    chef_auth.parse_signed_headers(headers, now=NOW + timedelta(seconds=899))
    chef_auth.parse_signed_headers(headers, now=NOW - timedelta(seconds=899))
    with pytest.raises(AuthError) as excinfo:
        chef_auth.parse_signed_headers(headers, now=NOW + timedelta(seconds=900))
    assert excinfo.value.status == 401


@pytest.mark.parametrize(
    "stamp",
    ["yesterday", "2024-05-01", "2024-05-01T12:00:00", "2024-13-01T12:00:00Z", "1714564800", "Z"],
)
def test_malformed_timestamp(key: rsa.RSAPrivateKey, stamp: str) -> None:
    headers = sign(key, "1.3") | {"X-Ops-Timestamp": stamp}
    with pytest.raises(AuthError) as excinfo:
        chef_auth.parse_signed_headers(headers, now=NOW)
    assert auth_error(excinfo) == (401, "bad header(s) 'X-Ops-Timestamp'")


def test_timestamp_with_an_offset_is_read_as_that_instant(key: rsa.RSAPrivateKey) -> None:
    headers = sign(key, "1.3") | {"X-Ops-Timestamp": "2024-05-01T14:00:00+02:00"}
    req = chef_auth.parse_signed_headers(headers, now=NOW)
    assert req.timestamp == NOW
    # The signed form is the canonical UTC text, as mixlib-authentication re-canonicalizes it.
    chef_auth.verify_signature(req, "POST", PATH, BODY, [key.public_key()])


REQUIRED = ["X-Ops-UserId", "X-Ops-Timestamp", "X-Ops-Sign", "X-Ops-Content-Hash"]


@pytest.mark.parametrize(
    "missing",
    [[name] for name in REQUIRED]
    + [["X-Ops-UserId", "X-Ops-Sign"], ["X-Ops-Timestamp", "X-Ops-Content-Hash"], REQUIRED],
)
@pytest.mark.parametrize("how", ["absent", "empty", "blank"])
def test_missing_headers_are_all_listed_in_order(
    key: rsa.RSAPrivateKey, missing: list[str], how: str
) -> None:
    headers = sign(key, "1.3")
    # Drop in reverse order, so the message order cannot come from the dict's order.
    for name in reversed(missing):
        if how == "absent":
            del headers[name]
        else:
            headers[name] = "" if how == "empty" else "   "
    with pytest.raises(AuthError) as excinfo:
        chef_auth.parse_signed_headers(headers, now=NOW)
    listed = ", ".join(f"'{name}'" for name in missing)
    assert auth_error(excinfo) == (400, f"missing required authentication header(s) {listed}")
    assert excinfo.value.body() == {
        "error": [f"missing required authentication header(s) {listed}"]
    }


def test_missing_headers_take_precedence_over_other_problems(key: rsa.RSAPrivateKey) -> None:
    headers = sign(key, "1.3", when=NOW - timedelta(hours=2)) | {"X-Ops-Sign": "version=9"}
    del headers["X-Ops-Content-Hash"]
    with pytest.raises(AuthError) as excinfo:
        chef_auth.parse_signed_headers(headers, now=NOW)
    assert auth_error(excinfo) == (
        400,
        "missing required authentication header(s) 'X-Ops-Content-Hash'",
    )


@pytest.mark.parametrize(
    "sign_value",
    [
        "version=1.4",
        "version=2.0",
        "algorithm=sha256;version=1.0",
        "algorithm=sha1;version=1.3",
        "algorithm=md5;version=1.1",
        "algorithm=sha1",
        "garbage",
        "version",
    ],
)
def test_unsupported_version(key: rsa.RSAPrivateKey, sign_value: str) -> None:
    # The timestamp is also bad: the version is checked first.
    headers = sign(key, "1.3") | {"X-Ops-Sign": sign_value, "X-Ops-Timestamp": "bad"}
    with pytest.raises(AuthError) as excinfo:
        chef_auth.parse_signed_headers(headers, now=NOW)
    assert auth_error(excinfo) == (400, "Unsupported authentication protocol version")


def test_bad_timestamp_is_checked_before_clock_skew(key: rsa.RSAPrivateKey) -> None:
    headers = sign(key, "1.3") | {"X-Ops-Timestamp": "1999-99-99T00:00:00Z"}
    with pytest.raises(AuthError) as excinfo:
        chef_auth.parse_signed_headers(headers, now=NOW)
    assert excinfo.value.message == "bad header(s) 'X-Ops-Timestamp'"


def test_unknown_principal() -> None:
    err = chef_auth.unknown_principal("ghost")
    assert isinstance(err, AuthError)
    assert err.status == 401
    assert err.body() == {
        "error": [
            "Failed to authenticate as 'ghost'. "
            "Ensure that your node_name and client key are correct."
        ]
    }
    assert err.headers == {
        "WWW-Authenticate": 'X-Ops-Sign version="1.0" version="1.1" version="1.2" version="1.3"'
    }


# --------------------------------------------------------------------------- keys


def test_private_key_pem_is_pkcs1_and_round_trips(key: rsa.RSAPrivateKey) -> None:
    pem = chef_auth.private_key_pem(key)
    assert pem.startswith("-----BEGIN RSA PRIVATE KEY-----\n")
    loaded = chef_auth.load_private_key(pem)
    assert loaded.private_numbers() == key.private_numbers()
    assert chef_auth.load_private_key(pem.encode()).private_numbers() == key.private_numbers()


def test_pkcs8_private_key_is_accepted(key: rsa.RSAPrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert chef_auth.load_private_key(pem).private_numbers() == key.private_numbers()


def test_generate_private_key_size() -> None:
    assert chef_auth.generate_private_key(1024).key_size == 1024


def self_signed_cert(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_public_key_forms(key: rsa.RSAPrivateKey) -> None:
    expected = key.public_key().public_numbers()
    spki = chef_auth.public_key_pem(key)
    assert spki.startswith("-----BEGIN PUBLIC KEY-----\n")
    assert chef_auth.public_key_pem(key.public_key()) == spki
    pkcs1 = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
    assert pkcs1.startswith(b"-----BEGIN RSA PUBLIC KEY-----")
    for pem in (spki, spki.encode(), pkcs1, self_signed_cert(key), "\n  " + spki + "\n\n"):
        assert chef_auth.load_public_key(pem).public_numbers() == expected


def test_encrypted_private_key_is_refused(key: rsa.RSAPrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(KeyFormatError, match="encrypted"):
        chef_auth.load_private_key(pem)


def ec_private_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize(
    ("pem", "match"),
    [
        ("", "no -----BEGIN"),
        ("hello", "no -----BEGIN"),
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a private key"),
        ("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n", "cannot read"),
        (ec_private_pem(), "not an RSA key"),
    ],
)
def test_bad_private_keys(pem: str | bytes, match: str) -> None:
    with pytest.raises(KeyFormatError, match=match) as excinfo:
        chef_auth.load_private_key(pem)
    assert isinstance(excinfo.value, PushyError)


@pytest.mark.parametrize(
    ("pem", "match"),
    [
        ("nope", "no -----BEGIN"),
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "cannot read"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "cannot read"),
        (ec_private_pem(), "private key was given"),
        (
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "not an RSA key",
        ),
    ],
)
def test_bad_public_keys(pem: str | bytes, match: str) -> None:
    with pytest.raises(KeyFormatError, match=match):
        chef_auth.load_public_key(pem)


def test_private_key_pem_of_a_loaded_key_is_stable(key: rsa.RSAPrivateKey) -> None:
    pem = chef_auth.private_key_pem(key)
    assert chef_auth.private_key_pem(chef_auth.load_private_key(pem)) == pem
