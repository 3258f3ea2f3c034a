"""The embedded MQTT broker: amqtt with Mapleverse's users, ACL and listeners.

    async with EmbeddedBroker(load_settings()) as broker:
        print(broker.ready_line)      # mapleverse-broker listening tcp=127.0.0.1:1883 ws=...
        await broker.wait_closed()

It binds 127.0.0.1 unless told otherwise, serves MQTT 3.1.1 over TCP and over WebSocket
(subprotocol `mqtt`), refuses anonymous clients, checks passwords against the users file, makes
the client id the username, applies the ACL of topics.yaml to every PUBLISH and SUBSCRIBE,
keeps persistent sessions (clean session off) across reconnects, retained messages and Wills.
Sessions and retained messages live in memory; with `data_dir` set they are saved to
`<data_dir>/broker-state.json` on a clean stop and restored on start (broker.persistence), so a
restart keeps them. A kill (SIGKILL, crash) loses what changed since the last start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from amqtt.errors import BrokerError as AmqttBrokerError

from broker.acl import Acl
from broker.errors import BrokerStartError
from broker.guard import Guard, GuardAuthPlugin, GuardTopicPlugin
from broker.persistence import STATE_FILE
from broker.server import GuardedBroker
from broker.settings import BrokerSettings
from broker.users import User, load_users
from bus.topics import TopicTree, load

__all__ = ["EmbeddedBroker"]

log = logging.getLogger("broker.embedded")

_TCP, _WS = "default", "ws"


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _plugin_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class EmbeddedBroker:
    """amqtt run in this process; `port` and `ws_port` are the ports actually bound."""

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        users: Mapping[str, User] | None = None,
        tree: TopicTree | None = None,
    ) -> None:
        self.settings = settings
        self._given_users = users
        self._tree = tree
        self._broker: GuardedBroker | None = None
        self._closed = asyncio.Event()
        self.guard: Guard | None = None

    @property
    def host(self) -> str:
        return self.settings.host

    @property
    def port(self) -> int:
        """The bound MQTT/TCP port (differs from settings.port after a fallback or port 0)."""
        if self._broker is None:
            raise BrokerStartError("the broker is not running")
        return self._broker.bound_ports[_TCP]

    @property
    def ws_port(self) -> int | None:
        """The bound WebSocket port, or None when the WebSocket listener is off."""
        if self._broker is None:
            raise BrokerStartError("the broker is not running")
        return self._broker.bound_ports.get(_WS)

    @property
    def ready_line(self) -> str:
        """The line `python -m broker` prints once it accepts connections."""
        ws = f"{self.host}:{self.ws_port}" if self.ws_port else "off"
        return f"mapleverse-broker listening tcp={self.host}:{self.port} ws={ws}"

    @property
    def state_file(self) -> Path | None:
        """Where retained messages and sessions are saved, or None (in memory only)."""
        data_dir = self.settings.data_dir
        return data_dir / STATE_FILE if data_dir is not None else None

    def _load_users(self, tree: TopicTree) -> Mapping[str, User]:
        if self._given_users is not None:
            return self._given_users
        return load_users(self.settings.users_file, roles=tree.roles)

    def reload_users(self) -> int:
        """Read the users file again (SIGHUP); returns the number of users."""
        if self.guard is None:
            raise BrokerStartError("the broker is not running")
        users = load_users(self.settings.users_file, roles=self.guard.acl.tree.roles)
        self.guard.set_users(users)
        log.info("reloaded %d user(s) from %s", len(users), self.settings.users_file)
        return len(users)

    def _config(self, guard: Guard) -> dict[str, Any]:
        s = self.settings
        listeners: dict[str, Any] = {_TCP: {"type": "tcp", "bind": _bind(s.host, s.port)}}
        if s.ws_enabled and s.ws_port:
            listeners[_WS] = {"type": "ws", "bind": _bind(s.host, s.ws_port)}
        return {
            "listeners": listeners,
            "timeout_disconnect_delay": 0,
            "plugins": {
                _plugin_path(GuardAuthPlugin): {"guard": guard},
                _plugin_path(GuardTopicPlugin): {"guard": guard},
            },
        }

    async def start(self) -> None:
        """Load users and topics, bind the listeners; BrokerStartError if that fails."""
        if self._broker is not None:
            raise BrokerStartError("the broker is already running")
        tree = self._tree or load(self.settings.topics_file)
        self.guard = Guard(self._load_users(tree), Acl(tree, root=self.settings.root))
        broker = GuardedBroker(
            self._config(self.guard),
            guard=self.guard,
            max_packet_size=self.settings.max_packet_size,
            port_fallback=self.settings.port_fallback,
            state_file=self.state_file,
        )
        try:
            await broker.start()
        except AmqttBrokerError as exc:
            cause = exc.__cause__
            if isinstance(cause, BrokerStartError):
                raise cause from exc
            raise BrokerStartError(str(exc), host=self.host, port=self.settings.port) from exc
        self._broker = broker
        self._closed.clear()
        log.info("%s (%d users)", self.ready_line, len(self.guard.users))

    async def stop(self) -> None:
        """Close every connection and the listeners; idempotent."""
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()
        self._closed.set()

    async def wait_closed(self) -> None:
        """Return once `stop()` has run."""
        await self._closed.wait()

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
