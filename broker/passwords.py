"""Password hashes in Mosquitto 2's `$7$` format (PBKDF2-HMAC-SHA512).

A hash reads `$7$<iterations>$<base64 salt>$<base64 digest>`: a 12-byte salt, a 64-byte
digest, standard base64 with padding, 101 iterations by default, exactly as `mosquitto_passwd`
writes it. The same string therefore goes into a Mosquitto `password_file` and into the
embedded broker's users file::

    h = hash_password("s3cret")          # '$7$101$...$...'
    verify_password("s3cret", h)         # True, compared in constant time
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from broker.errors import PasswordHashError

__all__ = ["DEFAULT_ITERATIONS", "PasswordHash", "hash_password", "parse_hash", "verify_password"]

DEFAULT_ITERATIONS = 101  # mosquitto_passwd's default for sha512-pbkdf2
SALT_BYTES = 12
DIGEST_BYTES = 64
_MAX_ITERATIONS = 10_000_000


@dataclass(frozen=True)
class PasswordHash:
    """The parts of a `$7$` hash."""

    iterations: int
    salt: bytes
    digest: bytes

    def __str__(self) -> str:
        salt = base64.b64encode(self.salt).decode()
        digest = base64.b64encode(self.digest).decode()
        return f"$7${self.iterations}${salt}${digest}"


def _derive(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, DIGEST_BYTES)


def hash_password(
    password: str, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> str:
    """Hash `password` with a fresh random salt (or `salt`, for reproducible tests)."""
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise PasswordHashError(f"iterations must be 1..{_MAX_ITERATIONS}, not {iterations}")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    if not salt:
        raise PasswordHashError("the salt must not be empty")
    return str(PasswordHash(iterations, salt, _derive(password, salt, iterations)))


def parse_hash(text: str) -> PasswordHash:
    """Split a `$7$` hash into its parts; PasswordHashError says what is wrong."""
    parts = text.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "7":
        raise PasswordHashError("expected '$7$<iterations>$<base64 salt>$<base64 hash>'")
    try:
        iterations = int(parts[2])
    except ValueError:
        raise PasswordHashError(f"iterations {parts[2]!r} is not a number") from None
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise PasswordHashError(f"iterations must be 1..{_MAX_ITERATIONS}, not {iterations}")
    try:
        salt = base64.b64decode(parts[3], validate=True)
        digest = base64.b64decode(parts[4], validate=True)
    except binascii.Error:
        raise PasswordHashError("salt and hash must be standard base64") from None
    if not salt:
        raise PasswordHashError("the salt is empty")
    if len(digest) != DIGEST_BYTES:
        raise PasswordHashError(f"the hash must decode to {DIGEST_BYTES} bytes, not {len(digest)}")
    return PasswordHash(iterations, salt, digest)


def verify_password(password: str, password_hash: str | PasswordHash) -> bool:
    """Whether `password` matches the hash; the comparison takes constant time."""
    parsed = parse_hash(password_hash) if isinstance(password_hash, str) else password_hash
    candidate = _derive(password, parsed.salt, parsed.iterations)
    return hmac.compare_digest(candidate, parsed.digest)
