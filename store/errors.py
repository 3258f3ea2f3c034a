"""Errors raised by the store and the cache.

Hierarchy::

    StoreError              root; carries `url` with any password masked
    ├── StoreUnavailable    the database cannot be opened or reached
    ├── MigrationFailed     migrating the schema to head failed at open
    ├── QueryFailed         a statement failed (constraint, bad SQL, lost transaction)
    │   └── LogConflict     another writer took the next index of a log stream
    ├── VersionConflict     a snapshot write named a stale expected_version
    ├── Fenced              a mesh write whose fencing token is below the highest seen
    └── CacheError          the cache (Redis) failed or cannot be reached
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "CacheError",
    "Fenced",
    "LogConflict",
    "MigrationFailed",
    "QueryFailed",
    "StoreError",
    "StoreUnavailable",
    "VersionConflict",
    "mask_url",
]


def mask_url(url: str) -> str:
    """`url` with its password replaced by `***`, safe for logs and error messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))
    except ValueError:
        return "<unparsable url>"


class StoreError(Exception):
    """Root of every error raised by the store; `url` has its password masked."""

    def __init__(self, reason: str, *, url: str = "") -> None:
        self.reason = reason
        self.url = mask_url(url) if url else ""
        super().__init__(f"{self.url}: {reason}" if self.url else reason)


class StoreUnavailable(StoreError):
    """The database cannot be opened or reached."""


class MigrationFailed(StoreError):
    """Migrating the schema to head failed while opening the store."""


class QueryFailed(StoreError):
    """A statement failed: a constraint was violated, the SQL is wrong, or the transaction was lost."""


class LogConflict(QueryFailed):
    """Another writer appended at the same index of a log stream (one owner per stream)."""

    def __init__(self, stream: str, *, url: str = "") -> None:
        super().__init__(f"log {stream!r}: another writer appended concurrently", url=url)
        self.stream = stream


class VersionConflict(StoreError):
    """A snapshot write named a stale expected_version; `actual` is the stored one (0: none)."""

    def __init__(
        self, owner_kind: str, owner_id: str, key: str, *, expected: int, actual: int, url: str = ""
    ) -> None:
        super().__init__(
            f"snapshot {owner_kind}/{owner_id}/{key}: expected version {expected}, found {actual}",
            url=url,
        )
        self.owner_kind = owner_kind
        self.owner_id = owner_id
        self.key = key
        self.expected = expected
        self.actual = actual


class Fenced(StoreError):
    """A mesh write carried a fencing token (the writer's Raft term) lower than `highest`, the
    highest this mesh has seen: its writer was deposed, and nothing of the write was stored."""

    def __init__(self, mesh: str, *, token: int, highest: int, url: str = "") -> None:
        super().__init__(
            f"mesh {mesh!r}: write with fencing token {token} refused, the store has seen {highest}",
            url=url,
        )
        self.mesh = mesh
        self.token = token
        self.highest = highest


class CacheError(StoreError):
    """The cache failed or cannot be reached."""
