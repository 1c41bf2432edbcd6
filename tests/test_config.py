"""Configuration: example file, precedence, unknown keys, types."""

from __future__ import annotations

from pathlib import Path

import pytest

from pushy_appliance.config import (
    AgentConfig,
    AllowEntry,
    ServerConfig,
    parse_host_port,
)
from pushy_appliance.config_files import load_agent_config, load_server_config
from pushy_appliance.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


def test_example_file_parses_to_exactly_the_defaults() -> None:
    assert load_server_config(CONFIG_DIR / "pushy.example.toml") == ServerConfig()


def test_agent_example_parses_and_keeps_default_fields() -> None:
    config = load_agent_config(CONFIG_DIR / "agent.example.toml")
    defaults = AgentConfig()
    assert config.working_dir == defaults.working_dir
    assert config.protected_env == defaults.protected_env
    assert AllowEntry(command="chef-client") in config.allow


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('listen = "127.0.0.1:1"\n[heartbeat]\ninterval = 2\noffline_threshold = 4\n')
    c = load_server_config(
        f,
        environ={"PUSHY_HEARTBEAT_INTERVAL": "0.5", "PUSHY_LISTEN": "127.0.0.1:2"},
        flags={"listen": "127.0.0.1:3", "data_dir": None},
    )
    assert c.listen == "127.0.0.1:3"
    assert c.heartbeat.interval == 0.5
    assert c.heartbeat.offline_threshold == 4


def test_integer_accepted_for_float_durations(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[jobs]\nvoting_timeout = 5\n")
    assert load_server_config(f).jobs.voting_timeout == 5.0


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('listn = "x"\n', "unknown key(s): listn"),
        ('server_name = "javascript://x"\n', "server_name: expected a host name or IPv4"),
        ("[heartbeat]\nintervall = 1\n", "unknown key(s): heartbeat.intervall"),
        ('[heartbeat]\ninterval = "fast"\n', "heartbeat.interval: expected a number"),
        ("[jobs]\ndefault_run_timeout = 1.5\n", "jobs.default_run_timeout: expected an integer"),
        ("insecure_http = 1\n", "insecure_http: expected a boolean"),
        ('[log]\nformat = "xml"\n', "log.format"),
        ('listen = "nowhere"\n', "expected HOST:PORT"),
        ("[limits]\nmax_body_bytes = 0\n", "limits.max_body_bytes"),
        ("[ui]\nlink_ttl = 0\n", "ui.link_ttl: must be positive"),
        ("[ui]\nsession_idle_timeout = -1\n", "ui.session_idle_timeout: must be positive"),
        ("[ui]\nmax_sessions = 0\n", "ui.max_sessions: must be positive"),
        ("[ui]\ncookie = 1\n", "unknown key(s): ui.cookie"),
        ("[limits]\nnode_handshakes = 0\n", "limits.node_handshakes"),
        ("[limits]\nhandshake_timeout = 0\n", "limits.handshake_timeout"),
        ("[jobs]\nlate_result_timeout = -1\n", "jobs.late_result_timeout"),
        ("[limits]\nnode_send_buffer = -1\n", "limits.node_send_buffer"),
        ("[limits]\nmax_live_jobs = 0\n", "limits.max_live_jobs: must be positive"),
        ("[limits]\nmax_live_job_nodes = 0\n", "limits.max_live_job_nodes: must be positive"),
        ("[limits]\nmax_nodes_per_job = 100001\n", "limits.max_nodes_per_job: must be 1"),
        ("[jobs]\nhistory_cache_bytes = -1\n", "jobs.history_cache_bytes: must be 0 or more"),
        ("not toml [", "invalid TOML"),
        ('[store]\nurl = "mysql://db/x"\n', "store.url: expected a postgresql:// URL"),
        ("[audit]\nretention_days = -1\n", "audit.retention_days: must be 0 or more"),
        ("[audit]\nmax_entries = 0\n", "audit.max_entries: must be positive"),
        ("[audit]\nrefusals_per_minute = 0\n", "audit.refusals_per_minute: must be positive"),
        ('[audit]\ntrusted_proxies = ["proxy.local"]\n', "audit.trusted_proxies[0]"),
        ('[webhooks]\nallow = ["not a host"]\n', "webhooks.allow[0]"),
        ('[webhooks]\nallow_http_orgs = ["Bad Org"]\n', "webhooks.allow_http_orgs[0]"),
        ("[webhooks]\nworkers = 0\n", "webhooks.workers: must be positive"),
        ("[webhooks]\nper_receiver = 0\n", "webhooks.per_receiver: must be positive"),
        ("[webhooks]\nmax_payload_bytes = 100\n", "webhooks.max_payload_bytes"),
        ("[webhooks]\ntimeout = 0\n", "webhooks.timeout: must be positive"),
        ("[webhooks]\nsecret = 1\n", "unknown key(s): webhooks.secret"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_server_config(f)
    assert needle in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_server_config(tmp_path / "absent.toml")


def test_environment_typo_inside_a_section_is_an_error() -> None:
    with pytest.raises(ConfigError, match="PUSHY_HEARTBEAT_INTERVL"):
        load_server_config(environ={"PUSHY_HEARTBEAT_INTERVL": "1"})


def test_environment_bad_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="PUSHY_HEARTBEAT_INTERVAL: expected a number"):
        load_server_config(environ={"PUSHY_HEARTBEAT_INTERVAL": "soon"})


def test_cli_variables_are_not_config_keys() -> None:
    c = load_server_config(environ={"PUSHY_SERVER": "https://x", "PUSHY_USER": "u"})
    assert c == ServerConfig()


def test_config_is_frozen() -> None:
    c = ServerConfig()
    with pytest.raises(AttributeError):
        c.listen = "x"  # type: ignore[misc]


def test_ui_keys_from_the_environment() -> None:
    c = load_server_config(
        environ={"PUSHY_UI_LINK_TTL": "5", "PUSHY_UI_SESSION_IDLE_TIMEOUT": "600"}
    )
    assert (c.ui.link_ttl, c.ui.session_idle_timeout, c.ui.max_sessions) == (5.0, 600.0, 1000)


def test_store_url_from_file_environment_and_flag(tmp_path: Path) -> None:
    assert ServerConfig().store.url is None
    f = tmp_path / "c.toml"
    f.write_text('[store]\nurl = "postgresql://file/db"\n')
    assert load_server_config(f).store.url == "postgresql://file/db"
    env = {"PUSHY_STORE_URL": "postgres://env/db"}
    assert load_server_config(f, environ=env).store.url == "postgres://env/db"
    flags = {"store.url": "postgresql://flag/db"}
    assert load_server_config(f, environ=env, flags=flags).store.url == "postgresql://flag/db"


def test_cluster_lease_ttl_from_file_and_environment_and_validated(tmp_path: Path) -> None:
    assert load_server_config().cluster.lease_ttl == 15.0
    f = tmp_path / "c.toml"
    f.write_text("[cluster]\nlease_ttl = 3\n")
    assert load_server_config(f).cluster.lease_ttl == 3.0
    env = {"PUSHY_CLUSTER_LEASE_TTL": "4.5"}
    assert load_server_config(f, environ=env).cluster.lease_ttl == 4.5
    for bad in ("0", "-1"):
        with pytest.raises(ConfigError, match=r"cluster\.lease_ttl"):
            load_server_config(environ={"PUSHY_CLUSTER_LEASE_TTL": bad})


def test_reconnect_grace_default_follows_interval() -> None:
    c = load_server_config(environ={"PUSHY_HEARTBEAT_INTERVAL": "0.5"})
    assert c.reconnect_grace == 11.0
    c = load_server_config(environ={"PUSHY_JOBS_RECONNECT_GRACE": "3"})
    assert c.reconnect_grace == 3.0


def test_agent_whitelist_entries_validated(tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    f.write_text('[[allow]]\ncommand = "x"\npattern = "^y$"\n')
    with pytest.raises(ConfigError, match=r"allow\[0\]"):
        load_agent_config(f)
    f.write_text('[[allow]]\npattern = "^(unclosed$"\n')
    with pytest.raises(ConfigError, match="invalid regex"):
        load_agent_config(f)
    f.write_text(
        '[[allow]]\npattern = "^sleep [0-9]+$"\n[[allow]]\ncommand = "true"\nshell = true\n'
    )
    c = load_agent_config(f)
    assert c.allow == (AllowEntry(pattern="^sleep [0-9]+$"), AllowEntry(command="true", shell=True))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:10003", ("::1", 10003)), ("h:1", ("h", 1))],
)
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


def test_parse_host_port_rejects_bad_port() -> None:
    with pytest.raises(ConfigError, match="out of range"):
        parse_host_port("h:70000")


@pytest.mark.parametrize("entry", ["L*D_", "A=B", "", "WITH SPACE", "TAB\tX", "**"])
def test_protected_env_entries_are_names_or_prefixes(tmp_path: Path, entry: str) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(f"protected_env = [{entry!r}]\n".replace("'", '"').replace("\t", "\\t"))
    with pytest.raises(ConfigError, match=r"protected_env\[0\]"):
        load_agent_config(f)


def test_protected_env_takes_names_and_prefixes(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text('protected_env = ["PATH", "LD_*", "*"]\n')
    assert load_agent_config(f).protected_env == ("PATH", "LD_*", "*")


def test_audit_and_webhook_keys_from_file_and_environment(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(
        '[audit]\nretention_days = 7\ntrusted_proxies = ["10.0.0.0/8"]\n'
        '[webhooks]\nallow = ["*.example.com", "192.0.2.0/24"]\nworkers = 3\n'
    )
    c = load_server_config(
        f, environ={"PUSHY_WEBHOOKS_ALLOW_HTTP_ORGS": "default,lab", "PUSHY_AUDIT_MAX_ENTRIES": "9"}
    )
    assert (c.audit.retention_days, c.audit.trusted_proxies, c.audit.max_entries) == (
        7.0,
        ("10.0.0.0/8",),
        9,
    )
    assert c.webhooks.allow == ("*.example.com", "192.0.2.0/24")
    assert c.webhooks.allow_http_orgs == ("default", "lab")
    assert (c.webhooks.workers, c.webhooks.per_receiver) == (3, 2)
