"""The agent's whitelist: which commands a job may run, and what actually runs (pure).

Entries (``[[allow]]`` in the agent's config, ``APPLIANCE.md`` §3) are tried in order; the
first that matches decides.

* ``command = "chef-client"`` matches exactly that string. It runs as written (or as ``run``
  when given), split into an argument vector with POSIX word rules (:func:`shlex.split`:
  quotes honoured, no expansion, no globbing, no redirection).
* ``pattern = '^sleep [0-9]+$'`` is a regular expression that must match the whole command.
  Without ``run`` the command itself is split and run. With ``run`` the rewrite template is
  split into words *first*, and the match's groups (``\\1``, ``\\g<1>``, ``\\g<name>``) are
  then substituted inside those words: a group's value always lands inside exactly one
  argument, never split and never seen by a shell, whatever quotes, spaces or ``;`` it holds.
* ``shell = true`` (explicit opt-in) runs the command, or its rewrite, under ``/bin/sh -c``.
  Group values substituted into a shell rewrite are shell-quoted first, so they still cannot
  inject anything: write ``\\1`` in the template without quotes around it.
* For compatibility with the original's whitelist, a ``command`` written ``/regex/`` is
  treated as a ``pattern``.

A command that cannot be split (unbalanced quotes) or that holds a NUL character is not
whitelisted.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Sequence

from ..config import AllowEntry
from ..errors import ConfigError

__all__ = ["Resolved", "Whitelist"]

SHELL = "/bin/sh"

# A group reference in a rewrite template, or any other backslash pair (left for shlex).
_TEMPLATE_TOKEN = re.compile(r"\\(?:g<([^>]*)>|([1-9][0-9]?)|(.))", re.DOTALL)
# Placeholders stand in for group references while the template goes through shlex. NUL
# cannot occur in a command (it is rejected) nor in a template (checked when compiling).
_PLACEHOLDER = re.compile("\x00([0-9]+)\x00")


@dataclasses.dataclass(frozen=True, slots=True)
class Resolved:
    """What a whitelisted command runs.

    Attributes:
        argv: the argument vector; for shell entries ``("/bin/sh", "-c", text)``.
        shell: whether a shell interprets the command.
    """

    argv: tuple[str, ...]
    shell: bool


@dataclasses.dataclass(frozen=True, slots=True)
class _Exact:
    command: str
    resolved: Resolved


@dataclasses.dataclass(frozen=True, slots=True)
class _Pattern:
    regex: re.Pattern[str]
    # Without a rewrite: None. With one: for argv entries, the template's words with
    # placeholders; for shell entries, the single template text with placeholders.
    template: tuple[str, ...] | None
    # Placeholder number -> group reference (an int index or a group name).
    groups: tuple[int | str, ...]
    shell: bool


_Rule = _Exact | _Pattern


class Whitelist:
    """Compiled whitelist entries; :meth:`resolve` maps a command to what runs."""

    __slots__ = ("_rules",)

    def __init__(self, rules: Sequence[_Rule]) -> None:
        self._rules = tuple(rules)

    @classmethod
    def from_entries(cls, entries: Sequence[AllowEntry]) -> Whitelist:
        """Compile whitelist entries.

        Args:
            entries: the ``[[allow]]`` entries, in order.

        Returns:
            The whitelist.

        Raises:
            ConfigError: for an entry with neither or both of ``command`` and ``pattern``, an
                invalid regular expression, a template naming a group the pattern lacks, or a
                command or template that cannot be split into words.
        """
        return cls([_compile(i, entry) for i, entry in enumerate(entries)])

    def __len__(self) -> int:
        return len(self._rules)

    def resolve(self, command: str) -> Resolved | None:
        """Find what ``command`` runs.

        Args:
            command: the job's command, as the server sent it.

        Returns:
            What to run, or ``None`` when the command is not whitelisted.
        """
        if "\x00" in command:
            return None
        for rule in self._rules:
            if isinstance(rule, _Exact):
                if rule.command == command:
                    return rule.resolved
                continue
            match = rule.regex.fullmatch(command)
            if match is None:
                continue
            resolved = _apply(rule, match, command)
            if resolved is not None:
                return resolved
        return None


# --- compiling ------------------------------------------------------------------------------


def _split(text: str, source: str, key: str) -> tuple[str, ...]:
    try:
        words = tuple(shlex.split(text))
    except ValueError as exc:
        raise ConfigError(source, key, f"cannot split {text!r} into words: {exc}") from None
    if not words:
        raise ConfigError(source, key, "empty command")
    return words


def _compile(index: int, entry: AllowEntry) -> _Rule:
    key = f"allow[{index}]"
    source = "whitelist"
    command, pattern = entry.command, entry.pattern
    if (
        command is not None
        and pattern is None
        and len(command) > 2
        and command.startswith("/")
        and command.endswith("/")
    ):
        pattern = command[1:-1]
        command = None
    if (command is None) == (pattern is None):
        raise ConfigError(source, key, "needs exactly one of command and pattern")
    if command is not None:
        text = entry.run if entry.run is not None else command
        if "\x00" in text:
            raise ConfigError(source, key, "NUL character in command")
        if entry.shell:
            return _Exact(command, Resolved((SHELL, "-c", text), shell=True))
        return _Exact(command, Resolved(_split(text, source, f"{key}.command"), shell=False))
    assert pattern is not None
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(source, f"{key}.pattern", f"invalid regex: {exc}") from None
    if entry.run is None:
        return _Pattern(regex, None, (), entry.shell)
    if "\x00" in entry.run:
        raise ConfigError(source, f"{key}.run", "NUL character in template")
    marked, groups = _mark_groups(entry.run, regex, source, f"{key}.run")
    if entry.shell:
        return _Pattern(regex, (marked,), groups, shell=True)
    return _Pattern(regex, _split(marked, source, f"{key}.run"), groups, shell=False)


def _mark_groups(
    template: str, regex: re.Pattern[str], source: str, key: str
) -> tuple[str, tuple[int | str, ...]]:
    """Replace the group references in ``template`` with numbered NUL-delimited placeholders."""
    groups: list[int | str] = []

    def mark(m: re.Match[str]) -> str:
        ref_text = m.group(1) if m.group(1) is not None else m.group(2)
        if ref_text is None:
            return m.group(0)  # another backslash pair: shlex's business
        ref: int | str = int(ref_text) if ref_text.isdigit() else ref_text
        if isinstance(ref, int) and not 0 <= ref <= regex.groups:
            raise ConfigError(source, key, f"no group {ref} in the pattern")
        if isinstance(ref, str) and ref not in regex.groupindex:
            raise ConfigError(source, key, f"no group named {ref!r} in the pattern")
        groups.append(ref)
        return f"\x00{len(groups) - 1}\x00"

    return _TEMPLATE_TOKEN.sub(mark, template), tuple(groups)


# --- resolving ------------------------------------------------------------------------------


def _apply(rule: _Pattern, match: re.Match[str], command: str) -> Resolved | None:
    if rule.template is None:
        if rule.shell:
            return Resolved((SHELL, "-c", command), shell=True)
        try:
            argv = tuple(shlex.split(command))
        except ValueError:
            return None
        return Resolved(argv, shell=False) if argv else None
    values = [match.group(ref) or "" for ref in rule.groups]
    if rule.shell:
        quoted = [shlex.quote(v) for v in values]
        text = _PLACEHOLDER.sub(lambda m: quoted[int(m.group(1))], rule.template[0])
        return Resolved((SHELL, "-c", text), shell=True)
    argv = tuple(_PLACEHOLDER.sub(lambda m: values[int(m.group(1))], w) for w in rule.template)
    return Resolved(argv, shell=False)
