"""Small helpers the test tiers share: waiting on a message, running a component process.

Imported as `helpers` (pytest's pythonpath has tests/, see pyproject.toml).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bus import Message, Subscription
from bus.transport.base import Connection

__all__ = ["WrappedConnection", "next_matching", "reap", "spawn_component"]

REPO = Path(__file__).resolve().parent.parent


async def next_matching(
    sub: Subscription, predicate: Callable[[Message[Any]], bool], timeout: float = 10.0
) -> Message[Any]:
    """The first message on `sub` satisfying `predicate`; the ones before it are skipped."""

    async def scan() -> Message[Any]:
        while True:
            msg = await sub.get()
            if predicate(msg):
                return msg

    return await asyncio.wait_for(scan(), timeout)


def reap(proc: subprocess.Popen[bytes]) -> None:
    """End a child a test started, by its pid: SIGCONT (if stopped), SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def spawn_component(
    handle: Any,
    name: str,
    *,
    root: str,
    id: str,
    log_dir: Path,
    heartbeat_interval: float,
    reconnect_min: float,
    reconnect_max: float,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """`python -m components component NAME` as its own process, as a fresh component user of
    the test broker `handle`, with `env` added; its output goes to `<log_dir>/<name>-<id>.log`.
    Reap it after."""
    username, password = handle.user("component")
    extra = env or {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAPLEVERSE_")}
    env.update(
        MAPLEVERSE_HOST=handle.host,
        MAPLEVERSE_PORT=str(handle.port),
        MAPLEVERSE_USERNAME=username,
        MAPLEVERSE_PASSWORD=password,
        MAPLEVERSE_ROOT=root,
        MAPLEVERSE_ID=id,
        MAPLEVERSE_HEARTBEAT_INTERVAL=str(heartbeat_interval),
        MAPLEVERSE_RECONNECT_MIN=str(reconnect_min),
        MAPLEVERSE_RECONNECT_MAX=str(reconnect_max),
    )
    env.update(extra)
    with (log_dir / f"{name}-{id}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "components", "component", name],
            env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip


class WrappedConnection(Connection):
    """A connection that hands everything to `inner`: a test's transport overrides what it
    changes (faults, push-back) and keeps the rest real."""

    def __init__(self, inner: Connection) -> None:
        self.inner = inner
        self.session_present = inner.session_present

    def write_publish(
        self, topic: bytes, payload: bytes, qos: int, retain: bool, pid: int, dup: bool
    ) -> None:
        self.inner.write_publish(topic, payload, qos, retain, pid, dup)

    @property
    def write_paused(self) -> bool:
        return self.inner.write_paused

    async def drain(self) -> None:
        await self.inner.drain()

    async def subscribe(self, filters: Sequence[tuple[str, int]]) -> list[int]:
        return await self.inner.subscribe(filters)

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        await self.inner.unsubscribe(filters)

    def pause_reading(self) -> None:
        self.inner.pause_reading()

    def resume_reading(self) -> None:
        self.inner.resume_reading()

    async def close(self) -> None:
        await self.inner.close()

    def abort(self) -> None:
        self.inner.abort()

    def nodelay(self) -> bool | None:
        return self.inner.nodelay()
