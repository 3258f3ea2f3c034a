"""Mosquitto configuration for a deployment and for tests, from topics.yaml and a users file.

`generate(repo_root)` renders what is committed under `mosquitto/` (the broker config for the
official `eclipse-mosquitto` image, its `passwd` and `acl` files) from `topics.yaml` and
`mosquitto/users.yaml`; a test fails when a committed copy is stale, and `write_generated()`
(`python -m broker generate`) rewrites them.

`render_test_conf()` is the same configuration for a test broker: one TCP listener on a given
port and loopback, files under the test's directory, and no WebSocket listener (Debian's
mosquitto 2.0.11 is built without websockets).
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path

from broker.acl import GENERATED_BY, Acl, render_acl_file
from broker.users import load_users, render_password_file
from bus.topics import load

__all__ = [
    "CONFIG_DIR",
    "generate",
    "render_conf",
    "render_test_conf",
    "stale",
    "write_generated",
]

CONFIG_DIR = "mosquitto"  # relative to the repository root
IMAGE_CONFIG = "/mosquitto/config"  # where the official image reads its configuration
IMAGE_DATA = "/mosquitto/data/"
MAX_PACKET_SIZE = 65536
# A persistent session queues QoS 1 messages while its client is away: 10,000 is about three
# minutes of a 60 Hz stream, and max_queued_bytes caps a client's queue at 16 MiB whatever
# the message sizes (the oldest are kept, newer ones dropped, as Mosquitto does).
MAX_QUEUED_MESSAGES = 10000
MAX_QUEUED_BYTES = 16 * 1024 * 1024


def render_conf(
    *,
    port: int = 1883,
    ws_port: int | None = 9001,
    host: str | None = None,
    password_file: str = f"{IMAGE_CONFIG}/passwd",
    acl_file: str = f"{IMAGE_CONFIG}/acl",
    persistence_location: str = IMAGE_DATA,
    autosave_interval: int = 60,
    autosave_on_changes: bool = False,
    log_dest: str = "stdout",
    header: str = "",
    user: str | None = None,
) -> str:
    """A mosquitto.conf; `host` None listens on every interface (as in a container)."""
    bind = f" {host}" if host else ""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += [f"user {user}"] if user else []
    lines += [
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {password_file}",
        f"acl_file {acl_file}",
        "",
        "# Usernames are client ids: nobody can take over another user's client id.",
        f"listener {port}{bind}",
        "protocol mqtt",
        "use_username_as_clientid true",
    ]
    if ws_port:
        lines += [
            "",
            f"listener {ws_port}{bind}",
            "protocol websockets",
            "use_username_as_clientid true",
        ]
    lines += [
        "",
        "set_tcp_nodelay true",
        f"max_packet_size {MAX_PACKET_SIZE}",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        f"max_queued_bytes {MAX_QUEUED_BYTES}",
        "# Sessions of users that never come back are dropped after a week.",
        "persistent_client_expiration 7d",
        "",
        "persistence true",
        f"persistence_location {persistence_location}",
        f"autosave_interval {autosave_interval}",
        f"autosave_on_changes {'true' if autosave_on_changes else 'false'}",
        "",
        f"log_dest {log_dest}",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "connection_messages true",
    ]
    return "\n".join(lines) + "\n"


def render_test_conf(
    port: int,
    data_dir: str | os.PathLike[str],
    password_file: str | os.PathLike[str],
    acl_file: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    autosave_on_changes: bool = True,
    user: str | None = None,
) -> str:
    """A test copy: TCP only on `host:port`, state under `data_dir`.

    `autosave_on_changes` writes the database after every change (autosave_interval 1), so a
    SIGKILL loses nothing that was acknowledged; benchmarks may turn it off. Mosquitto started
    as root drops to the user `mosquitto`, which cannot read a test's private temp dir, so it
    runs as `user` (default: whoever runs the tests).
    """
    location = str(data_dir).rstrip("/") + "/"
    return render_conf(
        port=port,
        ws_port=None,
        host=host,
        password_file=str(password_file),
        acl_file=str(acl_file),
        persistence_location=location,
        autosave_interval=1 if autosave_on_changes else 60,
        autosave_on_changes=autosave_on_changes,
        log_dest="stderr",
        header="Mosquitto for a Mapleverse test (broker.mosquitto.render_test_conf).",
        user=user or getpass.getuser(),
    )


def generate(repo_root: str | os.PathLike[str]) -> dict[Path, str]:
    """The generated files under `mosquitto/`, by path relative to `repo_root`."""
    root = Path(repo_root)
    tree = load(root / "topics.yaml")
    users = load_users(root / CONFIG_DIR / "users.yaml", roles=tree.roles)
    header = (
        f"Mosquitto configuration of a Mapleverse deployment (eclipse-mosquitto:2 image),\n"
        f"generated by `{GENERATED_BY}` (broker/mosquitto.py). Do not edit.\n"
        f"Mount this directory at {IMAGE_CONFIG}; state lives in {IMAGE_DATA}."
    )
    passwd_header = (
        f"# Mosquitto password_file, generated from {CONFIG_DIR}/users.yaml by `{GENERATED_BY}`.\n"
    )
    base = Path(CONFIG_DIR)
    return {
        base / "mosquitto.conf": render_conf(header=header),
        base / "passwd": passwd_header + render_password_file(users),
        base / "acl": render_acl_file(Acl(tree), users),
    }


def stale(repo_root: str | os.PathLike[str]) -> list[Path]:
    """The generated files whose committed copy differs (or is missing)."""
    root = Path(repo_root)
    out = []
    for path, text in generate(root).items():
        target = root / path
        if not target.exists() or target.read_text() != text:
            out.append(path)
    return out


def write_generated(repo_root: str | os.PathLike[str]) -> list[Path]:
    """Rewrite the stale generated files; returns the paths written."""
    root = Path(repo_root)
    files = generate(root)
    written = []
    for path in stale(root):
        (root / path).write_text(files[path])
        written.append(path)
    return written
