"""Shared fixtures: real brokers per kind (tests/brokers.py) and a topic root per test."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# The broker library is the top-level module `brokers` (tests/ is not a package, and the name
# `tests` is taken by a package gmqtt installs); make it importable in any pytest import mode.
_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from brokers import KINDS, BrokerHandle, start_broker  # noqa: E402 - needs the path above


@pytest.fixture(
    scope="session", params=[pytest.param(k.name, marks=k.marks) for k in KINDS.values()]
)
def broker_kind(request: pytest.FixtureRequest) -> str:
    """Each registered broker kind in turn: amqtt, mosquitto, nats (and any registered later)."""
    kind: str = request.param
    return kind


@pytest.fixture(scope="session")
def broker(broker_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerHandle]:
    """One broker of each kind for the whole session; tests draw fresh users from it."""
    handle = start_broker(broker_kind, tmp_path_factory.mktemp(f"broker-{broker_kind}"))
    yield handle
    handle.close()


@pytest.fixture
def private_broker(broker_kind: str, tmp_path: Path) -> Iterator[BrokerHandle]:
    """A broker of the kind for this test alone (to kill, pause or restart)."""
    handle = start_broker(broker_kind, tmp_path)
    yield handle
    handle.close()


@pytest.fixture
def root() -> str:
    """A topic root of this test's own, like `t1a2b3c4d`."""
    return f"t{uuid.uuid4().hex[:8]}"
