"""The base every component shares: connection, Sparkplug-style health, commands, metrics.

A component subclass sets `kind` and writes `main(bus)`; `Component.run()` does the rest:

* connects the bus with a persistent session and, as its MQTT Will, a retained **death**
  (`state: offline`) carrying the session epoch of that connection;
* on every (re)connection publishes a retained **birth** (`state: online`) with a new epoch
  (wall-clock milliseconds at start, plus one per connection, so it grows across restarts too);
* sends QoS 1 **heartbeats** with a sequence number every `heartbeat_interval` seconds;
* obeys commands on its `cmd` topic: `rebirth` (republish birth and retained state), `stop`,
  `drain`, `set-log-level`;
* repairs its status topic when an old Will overtakes a new birth there;
* serves `/metrics` when `metrics_port` is set; stops cleanly on `stop()` (SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Literal

from pydantic import ValidationError

from bus import Bus, BusError, Message, Subscription
from bus.payloads import Command, Heartbeat, RpcReply, RpcRequest, Status
from bus.topics import Topic, TopicTree
from bus.transport.base import Transport
from components.runtime.metrics_http import MetricsServer
from components.runtime.settings import ComponentSettings

__all__ = ["Component"]

VERSION = "0.1.0"


class Component:
    """Subclass, set `kind`, override `main` (and `serves`, `republish` as needed)."""

    kind: ClassVar[str] = "component"
    settings_model: ClassVar[type[ComponentSettings]] = ComponentSettings
    # Seconds the first birth waits for main() to call serving() before it goes out anyway.
    birth_grace: ClassVar[float] = 1.0

    def __init__(
        self,
        settings: ComponentSettings,
        *,
        transport: Transport | None = None,
        topics: TopicTree | None = None,
    ) -> None:
        self.settings = settings
        self.id = settings.id
        self.log = logging.getLogger(f"mapleverse.{self.kind}.{self.id}")
        self.epoch = time.time_ns() // 1_000_000
        self._epoch_base = self.epoch
        self.seq = 0
        self.bus = Bus(
            settings.model_copy(
                update={
                    "client_id": settings.client_id or settings.username or f"{self.kind}-{self.id}"
                }
            ),
            kind=self.kind,
            transport=transport,
            topics=topics,
            will=self._death,
            on_connect=self._born,
        )
        self.topics = self.bus.topics
        self.status_topic: Topic = self.topics["component.status"].build(kind=self.kind, id=self.id)
        self.heartbeat_topic: Topic = self.topics["component.heartbeat"].build(
            kind=self.kind, id=self.id
        )
        self.command_topic: Topic = self.topics["component.command"].build(
            kind=self.kind, id=self.id
        )
        self.metrics_server: MetricsServer | None = None
        self.ready = asyncio.Event()
        self._serving = asyncio.Event()
        self._born_once = False
        self._birth_epoch: int | None = None  # the epoch of the last birth published
        self._stop = asyncio.Event()

    # -- to override -------------------------------------------------------------------------
    async def main(self, bus: Bus) -> None:
        """The component's own work; runs until cancelled. Default: nothing.

        Call `self.serving()` once its subscriptions are active: the first birth waits for it
        (at most `birth_grace` seconds), so whoever sees the birth can talk to it at once.
        """
        self.serving()
        await asyncio.Event().wait()

    def serving(self) -> None:
        """Say that `main` is subscribed and ready: the birth goes out now."""
        self._serving.set()

    def serves(self) -> list[str]:
        """Topic filters this component serves, announced in its birth."""
        return [str(self.command_topic)]

    async def republish(self, bus: Bus) -> None:
        """Republish retained state (on rebirth). Default: nothing beyond the birth."""

    async def drain(self) -> None:
        """Hand work over before stopping (the `drain` command). Default: nothing."""

    # -- services -------------------------------------------------------------------------------
    async def answer_requests(
        self, sub: Subscription, handle: Callable[[str, dict[str, Any]], Awaitable[Any]]
    ) -> None:
        """Answer every request on `sub` (an `rpc.request` subscription), each in a task of its
        own: the reply carries `await handle(method, args)`, or, when it raises ValueError
        (pydantic's ValidationError included), KeyError or TypeError, an error naming what was
        wrong. Anything else is logged and answered as an internal error."""
        tasks: set[asyncio.Task[None]] = set()
        async for msg in sub:
            task = asyncio.get_running_loop().create_task(self._answer(msg, handle))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _answer(
        self, msg: Message[Any], handle: Callable[[str, dict[str, Any]], Awaitable[Any]]
    ) -> None:
        request = msg.payload
        if not isinstance(request, RpcRequest) or not msg.envelope.reply:
            return
        try:
            reply = RpcReply(ok=True, result=await handle(msg.params["method"], request.args))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()
            )
            reply = RpcReply(ok=False, error=f"invalid request: {problems}")
        except KeyError as exc:
            reply = RpcReply(ok=False, error=str(exc.args[0]) if exc.args else "missing key")
        except (ValueError, TypeError) as exc:
            reply = RpcReply(ok=False, error=str(exc))
        except Exception as exc:  # a bug of ours: the caller still gets an answer
            self.log.exception("request %s failed", msg.topic)
            reply = RpcReply(ok=False, error=f"internal error: {type(exc).__name__}")
        with contextlib.suppress(BusError):
            await self.bus.reply(msg, reply)

    # -- health ---------------------------------------------------------------------------------
    async def _publish_birth(self) -> None:
        self._birth_epoch = self.epoch
        await self.bus.publish(self.status_topic, self._status("online"))

    def _status(self, state: Literal["online", "offline"], epoch: int | None = None) -> Status:
        return Status(
            state=state,
            kind=self.kind,
            id=self.id,
            epoch=self.epoch if epoch is None else epoch,
            version=VERSION,
            pid=os.getpid(),
            topics=self.serves(),
            heartbeat_interval=self.settings.heartbeat_interval,
        )

    def _death(self) -> tuple[Topic, Status]:
        # Called before every connection attempt: each connection gets a new epoch.
        self.epoch = max(self.epoch + 1, time.time_ns() // 1_000_000)
        return self.status_topic, self._status("offline")

    async def _born(self, reconnected: bool) -> None:
        self.seq = 0
        if not self._born_once:
            return  # the first birth waits for main() to be serving (run())
        if self._birth_epoch is not None and self._birth_epoch < self.epoch:
            # The previous session's death, in case its Will never fired: a broker drops the
            # Will when our reconnect takes the session over before it saw the old socket close.
            await self.bus.publish(self.status_topic, self._status("offline", self._birth_epoch))
        await self._publish_birth()
        if reconnected:
            self.log.info("reconnected (epoch %d)", self.epoch)

    async def rebirth(self) -> None:
        await self.bus.publish(self.status_topic, self._status("online"))
        await self.republish(self.bus)

    async def _heartbeats(self) -> None:
        await self.ready.wait()  # the birth comes first
        interval = self.settings.heartbeat_interval
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            if self.bus.connected.is_set():  # a stale beat queued for later would lie
                beat = Heartbeat(
                    epoch=self.epoch, seq=self.seq, sent=time.time(), interval=interval
                )
                self.seq += 1
                with contextlib.suppress(BusError):
                    await self.bus.publish(self.heartbeat_topic, beat)
            next_at += interval
            delay = next_at - loop.time()
            if delay < 0:  # fell behind (e.g. after SIGSTOP): beat now, don't burst
                next_at = loop.time()
                delay = 0
            await asyncio.sleep(delay)

    async def _commands(self) -> None:
        async for msg in self.bus.subscribe(self.command_topic):
            await self.handle_command(msg)

    async def handle_command(self, msg: Message[Command]) -> None:
        command = msg.payload
        self.log.info("command %s %s", command.command, command.args)
        if command.command == "rebirth":
            await self.rebirth()
        elif command.command == "stop":
            self.stop()
        elif command.command == "drain":
            await self.drain()
        elif command.command == "set-log-level":
            level = str(command.args.get("level", "INFO")).upper()
            if level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
                logging.getLogger("mapleverse").setLevel(level)

    async def _watch_status(self) -> None:
        # An old Will can land after our birth and sit there retained: put the birth back.
        async for msg in self.bus.subscribe(self.status_topic):
            status = msg.payload
            # Not before the first birth: that one waits for main() to be serving.
            if self._born_once and isinstance(status, Status) and status.epoch < self.epoch:
                await self.bus.publish(self.status_topic, self._status("online"))

    # -- lifecycle ------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Connect, run until stopped, then leave cleanly with a retained death."""
        s = self.settings
        if s.metrics_port is not None:
            self.metrics_server = MetricsServer(s.metrics_host, s.metrics_port)
            port = await self.metrics_server.start()
            self.log.info("metrics on http://%s:%d/metrics", s.metrics_host, port)
        try:
            await self.bus.start()
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._heartbeats(), name=f"{self.kind}-heartbeats"),
                    tg.create_task(self._commands(), name=f"{self.kind}-commands"),
                    tg.create_task(self._watch_status(), name=f"{self.kind}-status"),
                    tg.create_task(self.main(self.bus), name=f"{self.kind}-main"),
                ]
                with contextlib.suppress(TimeoutError):  # a main() that never says so
                    await asyncio.wait_for(self._serving.wait(), self.birth_grace)
                self._born_once = True
                self.seq = 0
                await self._publish_birth()
                self.ready.set()
                await self._stop.wait()
                for task in tasks:
                    task.cancel()
        finally:
            await self._leave()

    async def _leave(self) -> None:
        bus = self.bus
        if bus.connected.is_set():
            with contextlib.suppress(BusError, TimeoutError):
                await asyncio.wait_for(
                    bus.publish(self.status_topic, self._status("offline"), wait=True), 2.0
                )
        await bus.close()
        if self.metrics_server is not None:
            await self.metrics_server.close()

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {"kind": cls.kind, "settings": cls.settings_model.__name__}
