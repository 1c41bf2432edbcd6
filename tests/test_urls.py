"""The public URL rule (``urls``): what a ``Host`` may hold and what the API answers with."""

from __future__ import annotations

import pytest

from pushy_appliance.urls import parse_host, public_base_url


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("example.com", ("example.com", None)),
        ("example.com.", ("example.com.", None)),
        ("Example.COM:10003", ("Example.COM", 10003)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("[::1]", ("::1", None)),
        ("[0:0::1]:443", ("::1", 443)),
        ("h_1", ("h_1", None)),
        ("a" * 63, ("a" * 63, None)),
        ("a" * 64, None),
        ("a..b", None),
        ("", None),
        (".", None),
        ("-a", None),
        ("a-", None),
        ("host:0", None),
        ("host:65536", None),
        ("host:+1", None),
        ("host:\uff11", None),
        ("host:", None),
        ("[::1]x", None),
        ("[::1]:", None),
        ("[v6]", None),
        ("javascript://x", None),
        ("a/b", None),
        ("user@host", None),
        ("h\u00e9", None),
        (".".join(["a" * 63] * 4), None),  # 255 characters
    ],
)
def test_parse_host(value: str, expected: tuple[str, int | None] | None) -> None:
    assert parse_host(value) == expected


@pytest.mark.parametrize(
    ("server_name", "host", "proto", "expected"),
    [
        (None, "pushy.example.com:10003", None, "https://pushy.example.com:10003"),
        (None, "pushy.example.com", "http", "http://pushy.example.com"),
        (None, "pushy.example.com", "javascript", "https://pushy.example.com"),
        (None, "pushy.example.com", " HTTP , https", "http://pushy.example.com"),
        (None, "javascript://x", None, "https://10.0.0.1:10003"),
        (None, None, None, "https://10.0.0.1:10003"),
        (None, "[::1]:8443", None, "https://[::1]:8443"),
        ("pushy.example.com", "evil.example:8443", None, "https://pushy.example.com:8443"),
        ("pushy.example.com", "evil.example", None, "https://pushy.example.com"),
        ("pushy.example.com", "evil/x", None, "https://pushy.example.com:10003"),
        ("pushy.example.com", None, "http", "http://pushy.example.com:10003"),
    ],
)
def test_public_base_url(
    server_name: str | None, host: str | None, proto: str | None, expected: str
) -> None:
    url = public_base_url(
        server_name=server_name,
        host_header=host,
        forwarded_proto=proto,
        scheme="https",
        listener=("10.0.0.1", 10003),
    )
    assert url == expected
