"""The users file: validation with messages naming the file and the entry, and round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.errors import UsersFileError
from broker.passwords import hash_password
from broker.users import User, dump_users, load_users, render_password_file, save_users

ROLES = ("component", "operator", "agent", "device")
HASH = hash_password("pw", iterations=1, salt=b"saltsaltsalt")


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "new-dir" / "users.yaml"
    users = [User.create("health-main", "component", "a"), User("bob_1", "agent", HASH)]
    save_users(path, users, header="hello\nworld")
    assert path.read_text().startswith("# hello\n# world\nversion: 1\n")
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = load_users(path, roles=ROLES)
    assert list(loaded) == ["health-main", "bob_1"]
    assert loaded["health-main"].check_password("a")
    assert not loaded["health-main"].check_password("b")
    assert loaded["bob_1"] == users[1]


def test_loads_with_the_roles_of_topics_yaml(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    path.write_text(dump_users([User("op", "operator", HASH)]))
    assert load_users(path)["op"].role == "operator"


def test_empty_users_list_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    path.write_text(dump_users([]))
    assert load_users(path, roles=ROLES) == {}


def _entry(**override: object) -> dict[str, object]:
    return {"name": "bob", "role": "agent", "password_hash": HASH, **override}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("- 1", "expected a mapping with 'version: 1'"),
        ("version: 1\nusers: {}", "'users' must be a list"),
        ({"users": [_entry(role="admin")]}, "user 'bob': role 'admin' is not one of"),
        ({"users": [_entry(name="Bob!")]}, "user 'Bob!': name must be 1-64 characters"),
        ({"users": [_entry(), _entry()]}, "user 'bob': listed twice"),
        ({"users": [_entry(password_hash="secret")]}, "user 'bob': invalid password hash"),
        ({"users": [{"name": "bob", "role": "agent"}]}, "missing ['password_hash']"),
        ({"users": [_entry(extra=1)]}, "unknown ['extra']"),
        ({"users": ["bob"]}, "user '#0': each user must be a mapping"),
        ("version: 1\nusers: [", "not valid YAML"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(
    tmp_path: Path, document: object, message: str
) -> None:
    import yaml

    path = tmp_path / "users.yaml"
    if isinstance(document, dict):
        document = yaml.safe_dump({"version": 1, **document})
    path.write_text(str(document))
    with pytest.raises(UsersFileError) as info:
        load_users(path, roles=ROLES)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsersFileError, match="cannot read"):
        load_users(tmp_path / "nope.yaml", roles=ROLES)


def test_password_file_is_sorted_name_colon_hash() -> None:
    users = [User("zed", "agent", HASH), User("amy", "operator", HASH)]
    assert render_password_file(users) == f"amy:{HASH}\nzed:{HASH}\n"
