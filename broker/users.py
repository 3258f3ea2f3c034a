"""The users file: who may connect, with which role and password hash.

A YAML document::

    version: 1
    users:
      - name: health-main          # [a-z0-9_-]+, also the MQTT client id
        role: component            # a role declared in topics.yaml
        password_hash: $7$101$...  # Mosquitto's PBKDF2-SHA512 format (broker.passwords)

Usernames are client ids everywhere (Mosquitto `use_username_as_clientid true`), so a name is
unique across roles. `render_password_file()` writes the same hashes as a Mosquitto
`password_file`.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from broker.errors import PasswordHashError, UsersFileError
from broker.passwords import hash_password, parse_hash, verify_password

__all__ = [
    "USERNAME_RE",
    "User",
    "dump_users",
    "load_users",
    "parse_users",
    "render_password_file",
    "save_users",
]

USERNAME_RE = re.compile(r"^[a-z0-9_-]{1,64}$")
_KEYS = {"name", "role", "password_hash"}


@dataclass(frozen=True)
class User:
    """One user: name (= client id), role and `$7$` password hash."""

    name: str
    role: str
    password_hash: str

    @classmethod
    def create(cls, name: str, role: str, password: str, *, iterations: int = 101) -> User:
        """A user with a freshly hashed password."""
        return cls(name, role, hash_password(password, iterations=iterations))

    def check_password(self, password: str) -> bool:
        """Whether `password` is this user's (constant-time comparison)."""
        return verify_password(password, self.password_hash)


def _known_roles(roles: Iterable[str] | None) -> frozenset[str]:
    if roles is not None:
        return frozenset(roles)
    from bus.topics import load

    return frozenset(load().roles)


def parse_users(
    document: Any, *, path: str = "users.yaml", roles: Iterable[str] | None = None
) -> dict[str, User]:
    """Validate a loaded users document; the users keyed by name, in file order."""
    known = _known_roles(roles)
    if not isinstance(document, dict) or document.get("version") != 1:
        raise UsersFileError("expected a mapping with 'version: 1' and a 'users' list", path=path)
    raw_users = document.get("users")
    if raw_users is None:
        raw_users = []
    if not isinstance(raw_users, list):
        raise UsersFileError("'users' must be a list of {name, role, password_hash}", path=path)
    users: dict[str, User] = {}
    for index, raw in enumerate(raw_users):
        label = raw.get("name") if isinstance(raw, dict) else None
        entry = label if isinstance(label, str) else f"#{index}"
        if not isinstance(raw, dict):
            raise UsersFileError("each user must be a mapping", path=path, entry=entry)
        missing = _KEYS - set(raw)
        extra = set(raw) - _KEYS
        if missing or extra:
            detail = f"missing {sorted(missing)}" if missing else f"unknown {sorted(extra)}"
            raise UsersFileError(
                f"expected keys name, role, password_hash ({detail})", path=path, entry=entry
            )
        name, role, pw_hash = raw["name"], raw["role"], raw["password_hash"]
        if not isinstance(name, str) or not USERNAME_RE.match(name):
            raise UsersFileError(
                "name must be 1-64 characters of [a-z0-9_-]", path=path, entry=entry
            )
        if name in users:
            raise UsersFileError("listed twice (names are client ids)", path=path, entry=name)
        if role not in known:
            raise UsersFileError(
                f"role {role!r} is not one of {sorted(known)} (topics.yaml)", path=path, entry=name
            )
        if not isinstance(pw_hash, str):
            raise UsersFileError("password_hash must be a string", path=path, entry=name)
        try:
            parse_hash(pw_hash)
        except PasswordHashError as exc:
            raise UsersFileError(
                f"{exc} (make one with `python -m broker hash`)", path=path, entry=name
            ) from exc
        users[name] = User(name, role, pw_hash)
    return users


def load_users(
    path: str | os.PathLike[str], *, roles: Iterable[str] | None = None
) -> dict[str, User]:
    """Read and validate a users file; every problem names the file and the entry."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise UsersFileError(f"cannot read: {exc.strerror}", path=str(p)) from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsersFileError(f"not valid YAML: {exc}", path=str(p)) from exc
    return parse_users(document, path=str(p), roles=roles)


def dump_users(users: Iterable[User] | Mapping[str, User], *, header: str = "") -> str:
    """The users file text (users in the given order, a `# ` comment header first)."""
    items = list(users.values()) if isinstance(users, Mapping) else list(users)
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += ["version: 1", "users:" if items else "users: []"]
    for user in items:
        lines += [
            f"  - name: {user.name}",
            f"    role: {user.role}",
            f'    password_hash: "{user.password_hash}"',
        ]
    return "\n".join(lines) + "\n"


def save_users(
    path: str | os.PathLike[str], users: Iterable[User] | Mapping[str, User], *, header: str = ""
) -> None:
    """Write a users file atomically (a reader never sees half of it), mode 0600; missing
    parent directories are made (mode 0700)."""
    p = Path(path)
    try:
        p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")
    except OSError as exc:
        raise UsersFileError(f"cannot write: {exc.strerror}", path=str(p)) from exc
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(dump_users(users, header=header))
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render_password_file(users: Iterable[User] | Mapping[str, User]) -> str:
    """A Mosquitto `password_file`: `name:hash` lines sorted by name."""
    items = users.values() if isinstance(users, Mapping) else users
    return "".join(f"{u.name}:{u.password_hash}\n" for u in sorted(items, key=lambda u: u.name))
