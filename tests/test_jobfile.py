"""One decoder for a job's ``file`` on both ends (issue 13 #9): whatever the server accepts in
``POST jobs``, the agent decodes to the same bytes, and whatever one refuses the other
refuses. Each input goes through the server's validation and the agent's ``decode_file``."""

from __future__ import annotations

import base64
import textwrap

import pytest

from pushy_appliance.agent.jobspec import decode_file
from pushy_appliance.errors import CommitRefused, ValidationError
from pushy_appliance.jobfile import (
    MSG_FILE_BASE64,
    MSG_FILE_PREFIX,
    MSG_FILE_TEXT,
    decode_job_file,
    valid_env_name,
)
from pushy_appliance.jobs.validation import validate_job_request

PAYLOAD = bytes(range(256)) * 40
ENCODED = base64.b64encode(PAYLOAD).decode()

ACCEPTED = [
    ("raw", "raw:héllo\n", "héllo\n".encode()),
    ("raw-empty", "raw:", b""),
    ("base64", "base64:AP/+", b"\x00\xff\xfe"),
    ("base64-empty", "base64:", b""),
    # knife and base64(1) wrap at 76 columns
    ("wrapped-76-lf", "base64:" + "\n".join(textwrap.wrap(ENCODED, 76)) + "\n", PAYLOAD),
    ("wrapped-76-crlf", "base64:" + "\r\n".join(textwrap.wrap(ENCODED, 76)), PAYLOAD),
    ("wrapped-64-tabs-spaces", "base64:\t" + " \n ".join(textwrap.wrap(ENCODED, 64)), PAYLOAD),
]

REFUSED = [
    ("no-prefix", "hello", MSG_FILE_PREFIX),
    ("upper-prefix", "BASE64:AAAA", MSG_FILE_PREFIX),
    ("not-base64", "base64:!!!!", MSG_FILE_BASE64),
    ("bad-padding", "base64:AAA", MSG_FILE_BASE64),
    ("urlsafe-alphabet", "base64:AP_-", MSG_FILE_BASE64),
    ("non-ascii-whitespace", "base64:AP/+\u2003AAAA", MSG_FILE_BASE64),
    ("non-ascii-digit", "base64:AP/\uff11", MSG_FILE_BASE64),
    ("data-after-padding", "base64:AA==AAAA", MSG_FILE_BASE64),
]


def job_body(file: object) -> dict[str, object]:
    return {"command": "chef-client", "nodes": ["n1"], "file": file}


@pytest.mark.parametrize(
    ("text", "expected"), [r[1:] for r in ACCEPTED], ids=[r[0] for r in ACCEPTED]
)
def test_server_and_agent_decode_the_same_bytes(text: str, expected: bytes) -> None:
    request = validate_job_request(job_body(text))
    assert request.file == text
    assert request.file_bytes == expected
    # the agent gets the file as the job stores it
    assert decode_file(request.file) == expected
    assert decode_job_file(text) == expected


@pytest.mark.parametrize(("text", "message"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_server_and_agent_refuse_the_same_files(text: str, message: str) -> None:
    with pytest.raises(ValidationError) as server:
        validate_job_request(job_body(text))
    assert server.value.message == message
    with pytest.raises(CommitRefused) as agent:
        decode_file(text)
    assert agent.value.reason == "bad_file"
    assert agent.value.detail == message


def test_raw_text_that_is_not_utf8_is_refused_on_both_ends() -> None:
    # JSON cannot carry a lone surrogate (jsonbody refuses it); the decoder refuses it anyway
    with pytest.raises(ValidationError) as server:
        decode_job_file("raw:\ud800")
    assert server.value.message == MSG_FILE_TEXT
    with pytest.raises(CommitRefused) as agent:
        decode_file("raw:\ud800")
    assert agent.value.detail == MSG_FILE_TEXT


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("PATH", True),
        ("my.var-1", True),
        ("Ünïcode", True),
        ("", False),
        ("A=B", False),
        ("A\nB", False),
        ("A\r", False),
        ("\0", False),
        ("A\x7f", False),
        ("A\x85", False),
        (5, False),
    ],
)
def test_env_names(name: object, valid: bool) -> None:
    assert valid_env_name(name) is valid
