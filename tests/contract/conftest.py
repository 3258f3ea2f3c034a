"""The contract suite's brokers and the platform pieces its tests put on them.

Every contract test runs once per broker the platform claims: the in-memory `MemoryBroker`
(the `memory` kind, made here), the embedded amqtt, Mosquitto and NATS (tests/brokers.py;
skipped when their binary is missing). `broker` and `private_broker` are redefined here over
`contract_kind`, so the suite gets its own brokers and never shares a session broker with the
suites parametrised over the real kinds only.

The in-memory kind is provisioned like the real ones: a pool of users per role, passwords
checked on CONNECT, the username as client id, and topics.yaml's ACL under any one-level root.
`MemoryBroker` has no per-delivery read check, so its SUBSCRIBE check is the strict one (a
read rule must cover the whole filter, `broker.acl.covers`): an agent's `<root>/#` is refused
with SUBACK 0x80, which the contract allows, instead of granted and left unfiltered.

A Bus reaches it through `handle.transport()`; `handle.refuse(username)` makes it refuse a
user's next connections, which is how an in-process component is made to stay dead after
`bus.abort()` (a killed process does not come back either).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import brokers
import pytest
from brokers import BrokerHandle, Cap

from broker.acl import Acl, covers
from bus import MemoryBroker
from bus.errors import TopicError
from bus.topics import load, validate_filter
from bus.transport.base import Transport

# -- the in-memory kind ---------------------------------------------------------------------


@dataclass
class MemoryHandle(BrokerHandle):
    """A `MemoryBroker` behind the `BrokerHandle` interface; buses need `transport()`."""

    memory: MemoryBroker = field(default_factory=MemoryBroker, repr=False)
    refused: set[str] = field(default_factory=set, repr=False)

    def transport(self) -> Transport:
        return self.memory.transport()

    def refuse(self, username: str) -> None:
        """Refuse this user's next connections (a crashed process that does not come back)."""
        self.refused.add(username)

    def start(self) -> None:
        self.memory.start()

    def stop(self) -> None:
        """Every connection drops, no Will is sent; sessions and retained messages stay."""
        self.memory.stop()

    def kill(self) -> None:
        self.memory.stop()

    def pause(self) -> None:
        pytest.skip("memory broker: cannot be paused")

    def resume(self) -> None:
        return None

    @property
    def running(self) -> bool:
        return self.memory.running


def _start_memory(workdir: Path, sizes: dict[str, int]) -> BrokerHandle:
    pool = {
        role: [(f"{role}-{n:03d}", secrets.token_hex(8)) for n in range(1, count + 1)]
        for role, count in sizes.items()
    }
    accounts = {name: (role, pw) for role, users in pool.items() for name, pw in users}
    acl = Acl(load(), root=brokers.ACL_ROOT)
    refused: set[str] = set()

    def authenticate(client_id: str, username: str | None, password: str | None) -> bool:
        account = accounts.get(username or "")
        return account is not None and account[1] == password and username not in refused

    def authorize(username: str | None, action: str, topic: str) -> bool:
        account = accounts.get(username or "")
        if account is None:
            return False
        role = account[0]
        if action == "publish":
            return acl.allowed(username or "", role, "publish", topic)
        try:
            validate_filter(topic)
        except TopicError:
            return False
        return any(covers(p, topic) for p in acl.patterns(username or "", role, "subscribe"))

    memory = MemoryBroker(
        authenticate=authenticate, authorize=authorize, username_as_client_id=True
    )
    caps = {
        Cap.ACL,
        Cap.WILL,
        Cap.RETAIN,
        Cap.PERSISTENT_SESSION,
        Cap.PERSISTENCE,  # stop()/start() keeps sessions and retained messages
        Cap.SUBACK_REFUSAL,
        Cap.TAKEOVER_REFUSED,  # the username is the client id: nobody can claim another's
    }
    return MemoryHandle(
        kind="memory", host="memory", port=0, ws_port=None, capabilities=frozenset(caps),
        workdir=workdir, pool=pool, memory=memory, refused=refused,
    )  # fmt: skip


def start_contract_broker(kind: str, tmp_path: Path) -> BrokerHandle:
    """A started broker of `kind`: the in-memory one here, the real ones by tests/brokers.py."""
    if kind != "memory":
        return brokers.start_broker(kind, tmp_path)
    workdir = tmp_path / kind
    workdir.mkdir(parents=True, exist_ok=True)
    handle = _start_memory(workdir, dict(brokers.POOL_SIZES))
    handle.start()
    return handle


# Parametrised here rather than by `brokers.register_kind("memory", ...)`: a registered kind
# would also reach every later suite that iterates `brokers.KINDS`, and those speak paho.
CONTRACT_KINDS = [
    pytest.param("memory", id="memory"),
    *(pytest.param(k.name, marks=k.marks, id=k.name) for k in brokers.KINDS.values()),
]


@pytest.fixture(scope="session", params=CONTRACT_KINDS)
def contract_kind(request: pytest.FixtureRequest) -> str:
    """memory, amqtt, mosquitto, nats: every broker the platform claims."""
    kind: str = request.param
    return kind


@pytest.fixture(scope="session")
def broker(contract_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerHandle]:
    """The contract suite's broker of each kind for the session; tests draw fresh users."""
    handle = start_contract_broker(contract_kind, tmp_path_factory.mktemp("contract"))
    yield handle
    handle.close()


@pytest.fixture
def private_broker(contract_kind: str, tmp_path: Path) -> Iterator[BrokerHandle]:
    """A broker of the kind for this test alone (to restart)."""
    handle = start_contract_broker(contract_kind, tmp_path)
    yield handle
    handle.close()
