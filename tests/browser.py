"""Headless Chromium for the docs tests: the example pages served locally, and Chromium driven
over the DevTools protocol (a WebSocket), so no driver is needed.

    with serve_pages() as base:                     # docs/examples/ and /mqtt.min.js
        async with chromium(chromium_binary(), tmp_path) as browser:
            page = await browser.open(f"{base}/browser_agent.html?...")
            await page.run("1 + 1")

Without chromium, or without `npm ci --prefix tests/node` (mqtt.js), a test that needs them is
skipped with the reason (`required`); it fails instead when CI=true.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from docs_support import EXAMPLES, REPO
from websockets.asyncio.client import ClientConnection, connect

__all__ = [
    "MQTTJS",
    "DevTools",
    "Page",
    "chromium",
    "chromium_binary",
    "required",
    "serve_pages",
]

MQTTJS = REPO / "tests" / "node" / "node_modules" / "mqtt" / "dist" / "mqtt.min.js"
TIMEOUT = 20.0


def required(what: str, found: object, hint: str) -> None:
    """Skip the test when `what` is missing (fail when CI=true)."""
    if found:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing (CI=true requires it): {hint}")
    pytest.skip(f"{what} is missing: {hint}")


class _Pages(http.server.SimpleHTTPRequestHandler):
    """docs/examples/ at `/`, and the mqtt.js the tests installed at `/mqtt.min.js`."""

    def translate_path(self, path: str) -> str:
        if urlsplit(path).path == "/mqtt.min.js":
            return str(MQTTJS)
        return super().translate_path(path)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet


@contextlib.contextmanager
def serve_pages() -> Iterator[str]:
    """A local HTTP server of docs/examples/ (and the tests' mqtt.js): its base URL."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Pages, directory=str(EXAMPLES))
    )
    thread = threading.Thread(target=server.serve_forever, name="test-pages", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class DevTools:
    """Just enough of the Chrome DevTools protocol: commands and events over one WebSocket,
    with flat sessions (one per page)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.last_id = 0
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.waiting: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self.console: list[str] = []  # the pages' console and uncaught errors, for failures
        self.reader = asyncio.create_task(self._read(), name="test-devtools")

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            if "id" in message:
                reply = self.replies.pop(message["id"])
                if not reply.done():  # not given up on
                    reply.set_result(message)
                continue
            method, params = message["method"], message.get("params", {})
            if method == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", "")) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                self.console.append(str(params["exceptionDetails"]))
            for future in self.waiting.pop(method, []):
                if not future.done():
                    future.set_result(params)

    def event(self, method: str) -> asyncio.Future[dict[str, Any]]:
        """A future of the next event `method` (ask before causing it)."""
        future = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(method, []).append(future)
        return future

    async def call(self, method: str, session: str | None = None, **params: Any) -> Any:
        self.last_id += 1
        reply = self.replies[self.last_id] = asyncio.get_running_loop().create_future()
        message: dict[str, Any] = {"id": self.last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        await self.ws.send(json.dumps(message))
        answer = await asyncio.wait_for(reply, TIMEOUT)
        if "error" in answer:
            raise AssertionError(f"{method}: {answer['error']}; console: {self.console}")
        return answer["result"]

    async def open(self, url: str) -> Page:
        """A new tab at `url`, once it has loaded (mqtt.js included)."""
        target = await self.call("Target.createTarget", url="about:blank")
        attached = await self.call(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        page = Page(self, attached["sessionId"])
        await self.call("Runtime.enable", page.session)
        await self.call("Page.enable", page.session)
        loaded = self.event("Page.loadEventFired")
        await self.call("Page.navigate", page.session, url=url)
        await asyncio.wait_for(loaded, TIMEOUT)
        return page


class Page:
    def __init__(self, devtools: DevTools, session: str) -> None:
        self.devtools = devtools
        self.session = session

    async def run(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        result = await self.devtools.call(
            "Runtime.evaluate", self.session,
            expression=expression, awaitPromise=True, returnByValue=True,
        )  # fmt: skip
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def arm(self, kind: str) -> str:
        """Start listening for the page's next `mapleverse:KIND` event (which the page fires as
        it shows something); the expression to `run` for its detail once it was caused."""
        await self.run(
            f"window.next_{kind} = new Promise(resolve => document.addEventListener("
            f"'mapleverse:{kind}', e => resolve(e.detail), {{once: true}})); true"
        )
        return f"window.next_{kind}"


def chromium_binary() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    required("chromium", binary, "apt-get install chromium (`make services` installs it)")
    assert binary is not None
    return binary


@contextlib.asynccontextmanager
async def chromium(binary: str, tmp_path: Path) -> AsyncIterator[DevTools]:
    """Headless Chromium, driven over its DevTools WebSocket."""
    proc = await asyncio.create_subprocess_exec(
        binary, "--headless", "--no-sandbox",  # no sandbox: tests run as root, in containers
        "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--no-default-browser-check",
        f"--user-data-dir={tmp_path / 'chromium'}", "--remote-debugging-port=0", "about:blank",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,  # a process group of its own
    )  # fmt: skip
    assert proc.stderr is not None
    log: list[str] = []
    listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def drain(stream: asyncio.StreamReader) -> None:  # keeps reading: a full pipe blocks it
        async for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            log.append(line)
            if line.startswith("DevTools listening on ") and not listening.done():
                listening.set_result(line.removeprefix("DevTools listening on "))
        if not listening.done():
            listening.set_exception(AssertionError("chromium exited:\n" + "\n".join(log)))

    draining = asyncio.create_task(drain(proc.stderr), name="test-chromium-stderr")
    try:
        url = await asyncio.wait_for(listening, TIMEOUT)
        async with connect(url, max_size=None) as ws:
            devtools = DevTools(ws)
            try:
                yield devtools
            finally:
                devtools.reader.cancel()
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)  # its own group: renderers too
                await proc.wait()
        await draining
