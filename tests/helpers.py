"""Small helpers the test tiers share: waiting on a message, reaping a child process.

Imported as `helpers` (pytest's pythonpath has tests/, see pyproject.toml).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Callable
from typing import Any

from bus import Message, Subscription

__all__ = ["next_matching", "reap"]


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
