"""bus.settings: MAPLEVERSE_* variables, and errors that name the variable and what it expects."""

from __future__ import annotations

import pydantic
import pytest

from bus.settings import BusSettings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for field in BusSettings.model_fields:
        monkeypatch.delenv(f"MAPLEVERSE_{field.upper()}", raising=False)


def test_a_non_integer_port_names_the_variable_and_expects_an_integer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAPLEVERSE_PORT", "abc")
    with pytest.raises(SettingsError) as info:
        load_settings(BusSettings)
    message = str(info.value)
    assert "MAPLEVERSE_PORT" in message
    assert "expected an integer" in message
    assert "'abc'" in message
    assert info.value.problems == [message]
    assert isinstance(info.value.__cause__, pydantic.ValidationError)


def test_an_out_of_range_port_says_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAPLEVERSE_PORT", "70000")
    with pytest.raises(SettingsError, match=r"MAPLEVERSE_PORT: expected .*65535"):
        load_settings(BusSettings)


def test_every_bad_variable_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAPLEVERSE_PORT", "abc")
    monkeypatch.setenv("MAPLEVERSE_CLEAN_SESSION", "perhaps")
    monkeypatch.setenv("MAPLEVERSE_ROOT", "Not/A Root")
    with pytest.raises(SettingsError) as info:
        load_settings(BusSettings)
    problems = info.value.problems
    assert len(problems) == 3
    assert any(p.startswith("MAPLEVERSE_CLEAN_SESSION: expected true or false") for p in problems)
    assert any(p.startswith("MAPLEVERSE_ROOT:") for p in problems)


def test_good_values_are_read_typed_and_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAPLEVERSE_PORT", "18830")
    monkeypatch.setenv("MAPLEVERSE_CLEAN_SESSION", "true")
    monkeypatch.setenv("MAPLEVERSE_PASSWORD", "s3cret")
    settings = load_settings(BusSettings, root="x/y")
    assert settings.port == 18830
    assert settings.clean_session is True
    assert settings.root == "x/y"
    assert settings.password is not None
    assert settings.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    with pytest.raises(pydantic.ValidationError):
        settings.port = 1  # type: ignore[misc]


def test_defaults_without_environment() -> None:
    settings = load_settings(BusSettings)
    assert (settings.host, settings.port, settings.root) == ("127.0.0.1", 1883, "mv")
    assert settings.clean_session is False  # persistent sessions by default
