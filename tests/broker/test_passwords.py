"""Password hashes: Mosquitto's `$7$` format, compatible both ways with mosquitto_passwd."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from broker.errors import PasswordHashError
from broker.passwords import hash_password, parse_hash, verify_password

# Written by mosquitto_passwd 2.0.11 (`mosquitto_passwd -b pw alice secret`).
MOSQUITTO_HASH = (
    "$7$101$w8Je/v5haRGnoXtW$n93N2dTLUFocXB5UWZ1sVcDSARM7WGqoK3RYyGdy25JSi5nfWuzZBYPCR6Qufq"
    "B9sglrg4U1gkJgG1UuMruVEw=="
)
SHAPE = re.compile(r"^\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==$")


def test_round_trip_and_shape_of_mosquitto_passwd() -> None:
    h = hash_password("s3cret")
    assert SHAPE.match(h), h
    assert verify_password("s3cret", h)
    assert not verify_password("s3cret ", h)
    assert not verify_password("", h)
    assert hash_password("s3cret") != h  # a fresh salt each time


def test_verifies_a_hash_written_by_mosquitto_passwd() -> None:
    assert verify_password("secret", MOSQUITTO_HASH)
    assert not verify_password("Secret", MOSQUITTO_HASH)


def test_fixed_salt_and_iterations_are_reproducible() -> None:
    h = hash_password("pw", iterations=5, salt=b"0123456789ab")
    assert h == hash_password("pw", iterations=5, salt=b"0123456789ab")
    assert parse_hash(h).iterations == 5
    assert verify_password("pw", h)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("plain", "expected '$7$"),
        ("$6$abc$def", "expected '$7$"),
        ("$7$x$AAAA$AAAA", "iterations 'x' is not a number"),
        ("$7$0$AAAA$AAAA", "iterations must be"),
        ("$7$101$!!!!$AAAA", "standard base64"),
        ("$7$101$AAAA$AAAA", "must decode to 64 bytes"),
    ],
)
def test_malformed_hashes_say_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(PasswordHashError) as info:
        parse_hash(text)
    assert reason in str(info.value)


@pytest.mark.mosquitto
def test_mosquitto_passwd_hash_verifies(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd not installed")
    pwfile = tmp_path / "pw"
    pwfile.touch()
    subprocess.run([tool, "-b", str(pwfile), "bob", "hunter2"], check=True, timeout=10)
    name, _, h = pwfile.read_text().strip().partition(":")
    assert name == "bob" and SHAPE.match(h)
    assert verify_password("hunter2", h)
