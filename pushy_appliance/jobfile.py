"""A job's ``file`` and ``env`` as both ends read them, pure.

The server validates a ``POST jobs`` body (``jobs.validation``) and the agent prepares the
job it was sent (``agent.jobspec``): each asks this module, so a file or an environment name
that one end accepts, the other does too.

``file`` is ``raw:TEXT`` (the text, UTF-8 encoded) or ``base64:DATA``. Base64 may be wrapped:
ASCII whitespace (space, tab, CR, LF, VT, FF) carries no data and is dropped, as knife and the
``base64`` tool wrap at 76 columns; what is left must be strict standard base64 (alphabet
``A-Z a-z 0-9 + /``, ``=`` padding to a multiple of four). Anything else is refused with the
contract's message.

An environment variable's name is a non-empty string without ``=`` (which ends a name in
``NAME=VALUE``) and without control characters (Unicode category ``Cc``: NUL, newline, DEL,
…), which no shell reads as part of a name and which would split a ``NAME=VALUE`` listing.
"""

from __future__ import annotations

import base64
import binascii
import unicodedata
from typing import Final

from .errors import ValidationError

__all__ = [
    "MSG_FILE_BASE64",
    "MSG_FILE_PREFIX",
    "MSG_FILE_TEXT",
    "decode_job_file",
    "valid_env_name",
]

MSG_FILE_PREFIX: Final = "invalid file contents (expected 'base64:...' or 'raw:...')"
MSG_FILE_BASE64: Final = "invalid file contents (couldn't decode base64 string)"
MSG_FILE_TEXT: Final = "invalid file contents (raw text is not valid UTF-8 text)"


def decode_job_file(value: object) -> bytes:
    """The bytes of a job's ``file``.

    Args:
        value: the ``file`` as the API and the ``commit`` frame carry it.

    Returns:
        The decoded file.

    Raises:
        ValidationError: :data:`MSG_FILE_PREFIX` for a value that is not a string with one of
            the two prefixes, :data:`MSG_FILE_BASE64` for data that is not base64 by the rule
            of the module docstring, :data:`MSG_FILE_TEXT` for raw text that cannot be UTF-8
            encoded (a lone surrogate).
    """
    if not isinstance(value, str):
        raise ValidationError(MSG_FILE_PREFIX)
    if value.startswith("raw:"):
        try:
            return value[len("raw:") :].encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(MSG_FILE_TEXT) from None
    if value.startswith("base64:"):
        text = value[len("base64:") :]
        if not text.isascii():
            raise ValidationError(MSG_FILE_BASE64)
        # bytes.split() splits on exactly the ASCII whitespace named in the docstring
        compact = b"".join(text.encode("ascii").split())
        try:
            return base64.b64decode(compact, validate=True)
        except binascii.Error:
            raise ValidationError(MSG_FILE_BASE64) from None
    raise ValidationError(MSG_FILE_PREFIX)


def valid_env_name(name: object) -> bool:
    """Whether ``name`` may name an environment variable of a job (module docstring)."""
    return (
        isinstance(name, str)
        and name != ""
        and "=" not in name
        and not any(unicodedata.category(c) == "Cc" for c in name)
    )
