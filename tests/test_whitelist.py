"""The agent's whitelist: exact entries, patterns, rewrites that cannot inject, shell opt-in."""

from __future__ import annotations

from pathlib import Path

import pytest

from pushy_appliance.agent.runtime import load_whitelist
from pushy_appliance.agent.whitelist import Resolved, Whitelist
from pushy_appliance.config import DEFAULT_ALLOW, AllowEntry
from pushy_appliance.errors import ConfigError


def _wl(*entries: AllowEntry) -> Whitelist:
    return Whitelist.from_entries(entries)


def _argv(*argv: str) -> Resolved:
    return Resolved(argv=argv, shell=False)


def test_default_whitelist_is_chef_client_only() -> None:
    wl = Whitelist.from_entries(DEFAULT_ALLOW)
    assert wl.resolve("chef-client") == _argv("chef-client")
    assert wl.resolve("chef-client -o recipe[x]") is None
    assert wl.resolve(" chef-client") is None
    assert wl.resolve("ls") is None
    assert len(wl) == 1


def test_exact_command_runs_as_written_split_into_argv() -> None:
    wl = _wl(AllowEntry(command="""chef-client -o 'recipe[a b]' --why "x y\""""))
    assert wl.resolve("""chef-client -o 'recipe[a b]' --why "x y\"""") == _argv(
        "chef-client", "-o", "recipe[a b]", "--why", "x y"
    )
    assert wl.resolve("chef-client") is None


def test_exact_command_with_run_rewrite() -> None:
    wl = _wl(AllowEntry(command="converge", run="/opt/chef/bin/chef-client --once"))
    assert wl.resolve("converge") == _argv("/opt/chef/bin/chef-client", "--once")


def test_exact_command_never_gets_a_shell_by_default() -> None:
    wl = _wl(AllowEntry(command="echo a; echo b"))
    assert wl.resolve("echo a; echo b") == _argv("echo", "a;", "echo", "b")


def test_pattern_must_match_the_whole_command() -> None:
    wl = _wl(AllowEntry(pattern="sleep [0-9]+"))
    assert wl.resolve("sleep 10") == _argv("sleep", "10")
    assert wl.resolve("sleep 10; rm -rf /") is None
    assert wl.resolve("xsleep 10") is None
    assert wl.resolve("sleep 10\n") is None


def test_anchored_pattern_rejects_trailing_newline() -> None:
    wl = _wl(AllowEntry(pattern="^sleep [0-9]+$"))
    assert wl.resolve("sleep 3") == _argv("sleep", "3")
    assert wl.resolve("sleep 3\n") is None


def test_first_matching_entry_wins() -> None:
    wl = _wl(
        AllowEntry(pattern="run (.*)", run="first \\1"),
        AllowEntry(pattern="run (.*)", run="second \\1"),
    )
    assert wl.resolve("run x") == _argv("first", "x")


def test_rewrite_groups_are_single_argv_items() -> None:
    wl = _wl(AllowEntry(pattern=r"^deploy (.+)$", run=r"/usr/local/bin/deploy --app \1"))
    assert wl.resolve("deploy web") == _argv("/usr/local/bin/deploy", "--app", "web")
    for evil in (
        "a b c",
        "x; rm -rf /",
        "'quoted' \"double\"",
        "$(reboot)",
        "`id`",
        "a\\ b",
        "*",
        "x && y || z > /etc/passwd",
        "'",
        '"',
    ):
        assert wl.resolve(f"deploy {evil}") == _argv("/usr/local/bin/deploy", "--app", evil)


def test_rewrite_group_inside_a_word_and_quoted_template() -> None:
    wl = _wl(
        AllowEntry(
            pattern=r"backup (?P<db>\S+) to (.+)",
            run=r"""backup --db=\g<db> --target "dir is \2" '\g<1>'""",
        )
    )
    assert wl.resolve("backup main to /srv/x y; rm -rf /") == _argv(
        "backup", "--db=main", "--target", "dir is /srv/x y; rm -rf /", "main"
    )


def test_rewrite_unmatched_optional_group_is_empty_item() -> None:
    wl = _wl(AllowEntry(pattern=r"go( now)?", run=r"go --when \1"))
    assert wl.resolve("go") == _argv("go", "--when", "")
    assert wl.resolve("go now") == _argv("go", "--when", " now")


def test_rewrite_keeps_escaped_backslashes_for_shlex() -> None:
    wl = _wl(AllowEntry(pattern=r"p (\w+)", run=r"tool a\\\1 b\ c"))
    assert wl.resolve("p x") == _argv("tool", "a\\x", "b c")


def test_rewrite_whole_match_group_zero() -> None:
    wl = _wl(AllowEntry(pattern=r"ping \S+", run=r"/bin/echo \g<0>"))
    assert wl.resolve("ping host") == _argv("/bin/echo", "ping host")


def test_pattern_without_run_splits_the_command() -> None:
    wl = _wl(AllowEntry(pattern=r"echo .*"))
    assert wl.resolve("echo 'a b' c") == _argv("echo", "a b", "c")
    assert wl.resolve("echo a; reboot") == _argv("echo", "a;", "reboot")


def test_unbalanced_quotes_are_not_whitelisted() -> None:
    wl = _wl(AllowEntry(pattern=r"echo .*"), AllowEntry(pattern=r".*", run="fallback"))
    # the first entry cannot split it, so the next entry gets a chance
    assert wl.resolve("echo 'unterminated") == _argv("fallback")
    assert _wl(AllowEntry(pattern=r"echo .*")).resolve('echo "open') is None


def test_nul_in_command_is_not_whitelisted() -> None:
    assert _wl(AllowEntry(pattern=r"(?s).*")).resolve("echo a\x00b") is None


def test_shell_opt_in_for_exact_and_pattern() -> None:
    wl = _wl(
        AllowEntry(command="uptime | tee /tmp/u", shell=True),
        AllowEntry(pattern=r"count (\d+)", shell=True),
    )
    assert wl.resolve("uptime | tee /tmp/u") == Resolved(
        ("/bin/sh", "-c", "uptime | tee /tmp/u"), shell=True
    )
    assert wl.resolve("count 5") == Resolved(("/bin/sh", "-c", "count 5"), shell=True)


def test_shell_rewrite_quotes_group_values() -> None:
    wl = _wl(AllowEntry(pattern=r"say (.*)", run=r"echo \1 | logger", shell=True))
    resolved = wl.resolve("say it's; rm -rf /")
    assert resolved == Resolved(
        ("/bin/sh", "-c", "echo 'it'\"'\"'s; rm -rf /' | logger"), shell=True
    )


def test_slash_form_is_a_pattern() -> None:
    wl = _wl(AllowEntry(command=r"/^sleep (\d+)$/", run=r"sleep \1"))
    assert wl.resolve("sleep 42") == _argv("sleep", "42")
    assert wl.resolve("sleep x") is None
    assert wl.resolve(r"/^sleep (\d+)$/") is None


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        (AllowEntry(), "allow[0]"),
        (AllowEntry(command="a", pattern="b"), "allow[0]"),
        (AllowEntry(pattern="("), "allow[0].pattern"),
        (AllowEntry(command="/(/"), "allow[0].pattern"),
        (AllowEntry(pattern="a(b)", run=r"x \2"), "allow[0].run"),
        (AllowEntry(pattern="a(b)", run=r"x \g<name>"), "allow[0].run"),
        (AllowEntry(pattern="a", run="x 'open"), "allow[0].run"),
        (AllowEntry(pattern="a", run="x \\"), "allow[0].run"),
        (AllowEntry(pattern="a", run="   "), "allow[0].run"),
        (AllowEntry(pattern="a", run="x\x00"), "allow[0].run"),
        (AllowEntry(command="echo 'open"), "allow[0].command"),
    ],
)
def test_invalid_entries_are_config_errors(entry: AllowEntry, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Whitelist.from_entries([entry])
    assert info.value.key == key


def test_load_whitelist_reads_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        """
[[allow]]
pattern = '^deploy ([a-z0-9-]+)$'
run = '/usr/local/bin/deploy --app \\1'
"""
    )
    wl = load_whitelist(path)
    assert wl.resolve("deploy web-1") == _argv("/usr/local/bin/deploy", "--app", "web-1")
    assert wl.resolve("chef-client") is None


def test_load_whitelist_without_file_is_the_default() -> None:
    assert load_whitelist(None).resolve("chef-client") == _argv("chef-client")


def test_load_whitelist_bad_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[[allow]]\npattern = '('\n")
    with pytest.raises(ConfigError):
        load_whitelist(path)
