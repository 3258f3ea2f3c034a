"""The broker the docs tests run their examples against, and docs/examples/ served for the
browser tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from brokers import KINDS, BrokerHandle, start_broker
from browser import serve_pages

# A small user pool: hashing hundreds of users is most of a broker's start-up.
POOL = {"component": 30, "agent": 10, "device": 2, "operator": 20}


@pytest.fixture(
    scope="module",
    params=[pytest.param(kind, marks=KINDS[kind].marks) for kind in ("amqtt", "mosquitto")],
)
def docs_broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerHandle]:
    """The embedded broker and Mosquitto in turn, one per test module, as the docs use them."""
    handle = start_broker(
        request.param, tmp_path_factory.mktemp(f"docs-{request.param}"), pool_sizes=POOL
    )
    yield handle
    handle.close()


@pytest.fixture
def pages() -> Iterator[str]:
    """The base URL of a local HTTP server of docs/examples/ (and the tests' mqtt.js)."""
    with serve_pages() as base:
        yield base
