"""BrokerSettings: MAPLEVERSE_BROKER_* variables, and errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.errors import SettingsError
from broker.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("MAPLEVERSE_BROKER_"):
            monkeypatch.delenv(key)


def test_defaults_bind_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAPLEVERSE_BROKER_USERS_FILE", "/x/users.yaml")
    s = load_settings()
    assert (s.host, s.port, s.ws_port, s.root) == ("127.0.0.1", 1883, 9001, "mv")
    assert s.users_file == Path("/x/users.yaml")
    assert s.port_fallback and s.max_packet_size == 65536 and s.ws_enabled


def test_environment_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "USERS_FILE": "u.yaml",
        "PORT": "0",
        "WS_PORT": "off",
        "ROOT": "+",
        "PORT_FALLBACK": "false",
        "LOG_LEVEL": "debug",
    }.items():
        monkeypatch.setenv(f"MAPLEVERSE_BROKER_{key}", value)
    s = load_settings()
    assert (s.port, s.ws_port, s.ws_enabled, s.root) == (0, None, False, "+")
    assert not s.port_fallback and s.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("PORT", "abc", "MAPLEVERSE_BROKER_PORT: got 'abc'; expects a port number"),
        ("PORT", "70000", "MAPLEVERSE_BROKER_PORT: got '70000'"),
        ("ROOT", "MV/", "MAPLEVERSE_BROKER_ROOT: got 'MV/'; expects topic levels"),
        ("MAX_PACKET_SIZE", "10", "MAPLEVERSE_BROKER_MAX_PACKET_SIZE: got '10'"),
        ("LOG_LEVEL", "LOUD", "MAPLEVERSE_BROKER_LOG_LEVEL"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, key: str, value: str, message: str
) -> None:
    monkeypatch.setenv("MAPLEVERSE_BROKER_USERS_FILE", "u.yaml")
    monkeypatch.setenv(f"MAPLEVERSE_BROKER_{key}", value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert message in str(info.value)


def test_missing_users_file() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value).startswith(
        "MAPLEVERSE_BROKER_USERS_FILE: is missing, and has no default (expects the path"
    )


def test_keyword_overrides_are_named_as_given() -> None:
    with pytest.raises(SettingsError, match=r"^port: got -1"):
        load_settings(users_file="u.yaml", port=-1)
