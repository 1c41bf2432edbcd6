"""The agent's several servers: ``server_urls`` in the configuration and the rotation of
``agent.failover`` as the connect loop runs it (autojump clock, a scripted ``_attempt``)."""

from __future__ import annotations

import argparse
import itertools
import random
from pathlib import Path

import pytest
import trio
import trio.testing

from pushy_appliance import chef_auth
from pushy_appliance.agent import connection
from pushy_appliance.agent.connection import ConnectSettings, SessionEnd
from pushy_appliance.agent.failover import Backoff, ServerRotation
from pushy_appliance.agent.main import connect_settings
from pushy_appliance.cli import _agent
from pushy_appliance.config import build_agent_config
from pushy_appliance.errors import ConfigError

A, B, C = (f"https://{h}:10003/organizations/o" for h in ("a", "b", "c"))

REFUSED = SessionEnd(False, 0.0, None, "refused")
LOST = SessionEnd(True, 5.0, 1006, "lost", 0.5)
GOING_AWAY = SessionEnd(True, 5.0, 1001, "going away", 0.5)
STABLE_LOST = SessionEnd(True, 61.0, 1006, "lost after a minute", 0.5)


# --- the rotation, pure ----------------------------------------------------------------------


def test_rotation_walks_the_list_and_backs_off_once_per_round() -> None:
    rotation = ServerRotation([A, B, C], Backoff(rng=random.Random(1)))
    seen = []
    for _ in range(9):
        url = rotation.current
        ceiling = rotation.backoff.ceiling()
        delay = rotation.after_attempt()
        seen.append((url, delay, ceiling))
    assert [url for url, _, _ in seen] == [A, B, C] * 3
    # within a round: switches of at most 1 s; the round's last attempt: the backoff step,
    # whose cap doubles from round to round
    caps = [1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 1.0, 1.0, 4.0]
    for (_, delay, _), cap in zip(seen, caps, strict=True):
        assert 0 <= delay <= cap
    assert rotation.backoff.attempt == 3
    assert [ceiling for url, _, ceiling in seen if url == C] == [1.0, 2.0, 4.0]


def test_one_url_is_the_plain_backoff() -> None:
    rotation = ServerRotation([A], Backoff(rng=random.Random(2)))
    reference = Backoff(rng=random.Random(2))
    for _ in range(8):
        assert rotation.current == A
        assert rotation.after_attempt() == reference.next_delay()
    assert rotation.backoff.ceiling() == reference.ceiling() == 60.0


def test_a_stable_connection_resets_the_backoff_and_starts_a_round() -> None:
    rotation = ServerRotation([A, B], Backoff(rng=random.Random(3)))
    for _ in range(6):  # three rounds: the cap is at 8 s
        rotation.after_attempt()
    assert rotation.backoff.ceiling() == 8.0
    assert rotation.current == A
    # A held a minute, then was lost: B next, within a switch; then the round ends at A
    assert rotation.after_attempt(stable=True) <= 1.0
    assert rotation.current == B
    assert rotation.backoff.ceiling() == 1.0
    assert rotation.after_attempt() <= 1.0
    assert rotation.current == A
    assert rotation.backoff.ceiling() == 2.0  # that was the new round's backoff step


def test_going_away_splays_within_the_interval_then_moves_on() -> None:
    rotation = ServerRotation([A, B], Backoff(rng=random.Random(4)))
    rotation.after_attempt()
    rotation.after_attempt()
    assert rotation.backoff.ceiling() == 2.0
    assert rotation.current == A
    splays = []
    for _ in range(50):
        splays.append(rotation.after_attempt(going_away=True, interval=0.5))
        assert rotation.backoff.ceiling() == 1.0  # started over
    assert all(0 <= s <= 0.5 for s in splays)
    assert rotation.current == A  # 50 moves over two URLs


def test_rotation_needs_a_url() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ServerRotation([], Backoff())


# --- the connect loop ------------------------------------------------------------------------


def _settings(*urls: str) -> ConnectSettings:
    return ConnectSettings(
        server_url=urls[0],
        node_name="n",
        key_file="n.pem",
        key=chef_auth.generate_private_key(),
        server_urls=urls,
    )


async def _run_script(
    monkeypatch: pytest.MonkeyPatch, settings: ConnectSettings, script: list[SessionEnd]
) -> list[tuple[float, str]]:
    """Run the connect loop with ``_attempt`` answering from ``script``; returns the time and
    URL of every attempt (one more than the script: the last blocks)."""
    attempts: list[tuple[float, str]] = []
    done = trio.Event()
    runtime = object()  # stands for the agent's one runtime, its job state with it

    async def attempt(given: object, at: ConnectSettings) -> SessionEnd:
        # every server gets the same runtime (so the hello names the same job) and the same
        # identity; only the URL changes
        assert given is runtime
        assert (at.node_name, at.key, at.urls) == (settings.node_name, settings.key, settings.urls)
        attempts.append((trio.current_time(), at.server_url))
        if len(attempts) > len(script):
            done.set()
            await trio.sleep_forever()
        return script[len(attempts) - 1]

    monkeypatch.setattr(connection, "_attempt", attempt)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: connection.maintain_connection(
                runtime,  # type: ignore[arg-type]
                settings,
                rng=random.Random(5),
            )
        )
        await done.wait()
        nursery.cancel_scope.cancel()
    return attempts


async def test_a_lost_server_is_left_for_the_next_within_a_second(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    # connected to A, A lost (kill -9): B at once (a switch); B refuses: C; C refuses: the
    # round is over, a backoff step, then A again
    attempts = await _run_script(monkeypatch, _settings(A, B, C), [LOST, REFUSED, REFUSED, LOST])
    assert [url for _, url in attempts] == [A, B, C, A, B]
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(attempts)]
    for gap, cap in zip(gaps, [1.0, 1.0, 1.0, 1.0], strict=True):
        assert 0 <= gap <= cap


async def test_every_server_down_costs_one_backoff_step_per_round(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    attempts = await _run_script(monkeypatch, _settings(A, B), [REFUSED] * 10)
    assert [url for _, url in attempts] == [A, B] * 5 + [A]
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(attempts)]
    caps = [1, 1, 1, 2, 1, 4, 1, 8, 1, 16]
    for gap, cap in zip(gaps, caps, strict=True):
        assert 0 <= gap <= cap
    # the backoff steps really grow (full jitter: the sum of four rounds' steps is not tiny)
    assert sum(gaps[1::2]) > 1.0


async def test_going_away_and_stable_connections_in_the_loop(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    script = [REFUSED, REFUSED, REFUSED, REFUSED, GOING_AWAY, REFUSED, STABLE_LOST, REFUSED]
    attempts = await _run_script(monkeypatch, _settings(A, B), script)
    assert [url for _, url in attempts] == [A, B, A, B, A, B, A, B, A]
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(attempts)]
    # rounds 1 and 2 (caps 1, 2); going away on A: splay ≤ 0.5, B refuses: the new round's
    # step (1); A lived a minute: B within a switch, B refuses: the round's step, from 1 again
    caps = [1, 1, 1, 2, 0.5, 1, 1, 1]
    for gap, cap in zip(gaps, caps, strict=True):
        assert 0 <= gap <= cap


# --- the configuration -----------------------------------------------------------------------


def test_server_urls_from_the_file_the_environment_and_the_flags() -> None:
    assert build_agent_config({"server_urls": [A, B]}).servers == (A, B)
    assert build_agent_config({"server_url": A}).servers == (A,)
    assert build_agent_config(None).servers == ()
    env = {"PUSHY_SERVER_URLS": f"{A}, {B},{C}"}
    assert build_agent_config(None, environ=env).servers == (A, B, C)
    # a later source replaces an earlier one, whichever of the two keys each gives
    assert build_agent_config({"server_urls": [A, B]}, environ={"PUSHY_SERVER_URL": C}).servers == (
        C,
    )
    assert build_agent_config({"server_url": C}, environ=env).servers == (A, B, C)
    assert build_agent_config(
        {"server_urls": [A, B]}, environ={"PUSHY_SERVER_URL": C}, flags={"server_urls": (B,)}
    ).servers == (B,)
    assert build_agent_config({"server_url": A}, environ=env, flags={"server_url": C}).servers == (
        C,
    )


@pytest.mark.parametrize(
    ("file", "environ", "flags", "source"),
    [
        ({"server_url": A, "server_urls": [B]}, {}, {}, "agent.toml"),
        ({}, {"PUSHY_SERVER_URL": A, "PUSHY_SERVER_URLS": B}, {}, "environment"),
        ({}, {}, {"server_url": A, "server_urls": (B,)}, "flags"),
    ],
)
def test_one_source_gives_one_of_the_two_keys(
    file: dict[str, object], environ: dict[str, str], flags: dict[str, object], source: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        build_agent_config(file, source="agent.toml", environ=environ, flags=flags)
    assert (refused.value.source, refused.value.key) == (source, "server_urls")
    assert "not both" in str(refused.value)


def _key(tmp_path: Path) -> str:
    key = tmp_path / "node.pem"
    key.write_text(chef_auth.private_key_pem(chef_auth.generate_private_key()))
    return str(key)


def test_connect_settings_carry_every_url(tmp_path: Path) -> None:
    config = build_agent_config({"server_urls": [A, B, C], "client_key": _key(tmp_path)})
    settings = connect_settings(config)
    assert (settings.server_url, settings.urls) == (A, (A, B, C))
    assert settings.at(B).credentials.server_url == B
    assert settings.at(B).urls == (A, B, C)
    assert settings.at(A) is settings


@pytest.mark.parametrize(
    ("urls", "key", "text"),
    [
        ([A, "https://b:10003/organizations/other"], "server_urls", "different orgs"),
        ([A, "https://b:10003/"], "server_urls[1]", "not an org URL"),
        ([], "server_url", "required"),
    ],
)
def test_connect_settings_refuse_bad_server_lists(
    tmp_path: Path, urls: list[str], key: str, text: str
) -> None:
    config = build_agent_config({"server_urls": urls, "client_key": _key(tmp_path)})
    with pytest.raises(ConfigError) as refused:
        connect_settings(config)
    assert refused.value.key == key
    assert text in str(refused.value)


def test_the_server_flag_repeats_into_server_urls(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="pushy")
    _agent.add_parsers(parser.add_subparsers(dest="command"))
    other = "https://b:10003/organizations/other"
    args = parser.parse_args(["agent", "--server", A, "--server", other, "--key", _key(tmp_path)])
    assert args.server == [A, other]
    # cmd_agent checks the list it built before it starts anything
    with pytest.raises(ConfigError) as refused:
        _agent.cmd_agent(args)
    assert refused.value.key == "server_urls"
    assert "different orgs (o, other)" in str(refused.value)
