"""`mapleverse component NAME`: start-up errors a person can act on, and /metrics over HTTP."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from bus import MemoryBroker
from components.echo import EchoService
from components.runtime import ComponentSettings


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAPLEVERSE_")}
    return subprocess.run([sys.executable, "-m", "components", *args], capture_output=True,
                          text=True, timeout=30, env={**clean, **env})  # fmt: skip


def test_a_bad_setting_names_the_variable_and_what_it_expects() -> None:
    done = _run("component", "health", MAPLEVERSE_PORT="abc", MAPLEVERSE_HEARTBEAT_INTERVAL="-1")
    assert done.returncode == 2
    assert "MAPLEVERSE_PORT: expected an integer" in done.stderr
    assert "MAPLEVERSE_HEARTBEAT_INTERVAL" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unknown_component_lists_the_known_ones() -> None:
    done = _run("component", "nope")
    assert done.returncode == 2
    assert "unknown component 'nope'" in done.stderr and "'health'" in done.stderr


async def test_metrics_are_served_over_http(root: str) -> None:
    broker = MemoryBroker()
    settings = ComponentSettings(root=root, id="metrics", metrics_port=0, heartbeat_interval=0.05)
    component = EchoService(settings, transport=broker.transport())
    task = asyncio.create_task(component.run())
    await asyncio.wait_for(component.ready.wait(), 5)
    assert component.metrics_server is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", component.metrics_server.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    body = (await asyncio.wait_for(reader.read(), 5)).decode()
    writer.close()
    assert body.startswith("HTTP/1.1 200 OK")
    assert 'mapleverse_bus_published_total{client="echo-metrics"}' in body
    component.stop()
    await asyncio.wait_for(task, 5)
