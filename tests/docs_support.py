"""What the docs tests share: a reader's environment, and running an example to its end.

Imported as `docs_support` (pytest's pythonpath has tests/).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from brokers import BrokerHandle

from bus import BusSettings

__all__ = ["EXAMPLES", "REPO", "bus_settings", "environment", "login", "run_example"]

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "docs" / "examples"
TIMEOUT = 20.0


def environment(handle: BrokerHandle, root: str, role: str) -> dict[str, str]:
    """MAPLEVERSE_* of a fresh user of `role`, as the docs tell a reader to set them."""
    username, password = handle.user(role)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAPLEVERSE_")}
    env.update(
        MAPLEVERSE_HOST=handle.host,
        MAPLEVERSE_PORT=str(handle.port),
        MAPLEVERSE_USERNAME=username,
        MAPLEVERSE_PASSWORD=password,
        MAPLEVERSE_ROOT=root,
    )
    return env


def bus_settings(env: dict[str, str]) -> BusSettings:
    return BusSettings(
        host=env["MAPLEVERSE_HOST"],
        port=int(env["MAPLEVERSE_PORT"]),
        username=env["MAPLEVERSE_USERNAME"],
        password=env["MAPLEVERSE_PASSWORD"],
        root=env["MAPLEVERSE_ROOT"],
        clean_session=True,
    )


async def run_example(name: str, env: dict[str, str], *args: str, code: int = 0) -> str:
    """Run docs/examples/NAME to its end; its stdout (stderr in the failure message)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / name), *args,
        env=env, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == code, f"{name} exited with {proc.returncode}:\n{err.decode()}"
    return out.decode()


def login(handle: BrokerHandle, role: str) -> dict[str, Any]:
    """Settings of a fresh user of `role` on `handle`."""
    username, password = handle.user(role)
    return {"host": handle.host, "port": handle.port, "username": username, "password": password}
