"""`python -m broker`: ready line, clean exit on SIGTERM, start-up errors that say what's wrong."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from broker.users import User, load_users, save_users


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAPLEVERSE_")}
    env.update({f"MAPLEVERSE_BROKER_{k}": v for k, v in values.items()})
    return env


def test_ready_line_and_clean_exit_on_sigterm(tmp_path: Path) -> None:
    save_users(tmp_path / "users.yaml", [User.create("alice", "agent", "pw", iterations=1)])
    env = _env(USERS_FILE=str(tmp_path / "users.yaml"), PORT="0", WS_PORT="0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        assert re.match(r"^mapleverse-broker listening tcp=127\.0\.0\.1:\d+ ws=off$", line), line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_bad_setting_names_the_variable(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "broker"],
        env=_env(USERS_FILE=str(tmp_path / "u.yaml"), PORT="http"),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert b"MAPLEVERSE_BROKER_PORT: got 'http'" in result.stderr


def test_bad_users_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "users.yaml"
    bad.write_text("version: 1\nusers:\n  - {name: x, role: king, password_hash: y}\n")
    result = subprocess.run(
        [sys.executable, "-m", "broker"],
        env=_env(USERS_FILE=str(bad), PORT="0", WS_PORT="0"),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert f"{bad}: user 'x': role 'king' is not one of".encode() in result.stderr


def test_add_user_and_hash(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    for name in ("ann", "ben"):
        subprocess.run(
            [sys.executable, "-m", "broker", "add-user", str(path), name, "operator"],
            input=f"{name}-pw\n".encode(), check=True, timeout=30,
        )  # fmt: skip
    users = load_users(path)
    assert list(users) == ["ann", "ben"] and users["ben"].check_password("ben-pw")
    out = subprocess.run(
        [sys.executable, "-m", "broker", "hash", "x"], capture_output=True, check=True, timeout=30
    )
    assert out.stdout.startswith(b"$7$101$")
