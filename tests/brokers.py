"""Real brokers for tests, chaos tests and benchmarks, each on free ports under a temp dir.

Import it as `brokers`: tests/conftest.py puts tests/ on sys.path (a benchmark does the same).

    handle = start_broker("mosquitto", tmp_path)       # or "amqtt", "nats"
    username, password = handle.user("agent")          # a fresh pre-provisioned user
    ... connect to handle.host:handle.port ...
    handle.kill(); handle.start()                      # same port, same data dir
    handle.close()

Every broker runs as a subprocess with the project's own configuration: `amqtt` is
`python -m broker` (the embedded broker), `mosquitto` runs broker.mosquitto's test config and
`nats` runs `nats-server` with its MQTT interface (broker.nats). Each is provisioned with a pool
of users per role (`POOL_SIZES`) whose ACL is topics.yaml's under any one-level root (`+`), so
a test works under its own root (the `root` fixture) with no reload. What a broker cannot do is
in `capabilities`; `handle.require(Cap.X)` skips the test with a one-line reason.

A missing binary skips (`pytest.skip("mosquitto not installed")`) unless CI=true, where it fails.
New kinds (the in-memory broker) register with `register_kind()`; `KINDS` lists them in order.
"""

from __future__ import annotations

import os
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from broker.acl import Acl
from broker.mosquitto import render_test_conf
from broker.nats import render_nats_conf
from broker.users import User, render_password_file, save_users
from bus.topics import load

__all__ = [
    "KINDS",
    "POOL_SIZES",
    "BrokerHandle",
    "Cap",
    "KindSpec",
    "MqttProbe",
    "ProcessBroker",
    "Received",
    "free_port",
    "register_kind",
    "start_deployment_mosquitto",
    "require_binary",
    "start_broker",
    "wait_for_port",
]

ACL_ROOT = "+"  # test brokers apply topics.yaml's ACL under any one-level root
POOL_SIZES: dict[str, int] = {"component": 300, "agent": 100, "device": 50, "operator": 50}
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
_TEST_ITERATIONS = 101  # hashing 500 users at Mosquitto's default takes ~30 ms


class Cap:
    """Capability names a test can require."""

    ACL = "acl"  # enforces topics.yaml's ACL
    SUBACK_REFUSAL = "suback-refusal"  # a refused SUBSCRIBE gets SUBACK 0x80 (else: filtered)
    CLIENT_ID_MUST_MATCH = "client-id-must-match"  # CONNECT with client id != username refused
    TAKEOVER_REFUSED = "client-id-takeover-refused"  # another user cannot take over a client id
    PERSISTENCE = "persistence-across-restart"  # sessions and retained survive a restart
    WEBSOCKET = "websocket"  # MQTT over WebSocket on ws_port
    MAX_PACKET_SIZE = "max-packet-size"  # packets over 65536 bytes disconnect the client
    WILL = "will"
    RETAIN = "retain"
    PERSISTENT_SESSION = "persistent-session"  # clean session off keeps subscriptions, queues QoS 1


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(
    host: str, port: int, deadline: float, alive: Callable[[], bool] = lambda: True
) -> None:
    """Poll a TCP connect until it succeeds; TimeoutError after `deadline` (monotonic)."""
    while True:
        if not alive():
            raise RuntimeError(f"the process serving {host}:{port} exited")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port}") from None
            time.sleep(0.02)  # polling interval of a readiness probe, not a guessed wait


def require_binary(name: str) -> str:
    """The binary's path; skips the test without it (fails instead when CI=true)."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/local/sbin/{name}") if os.access(p, os.X_OK)),
        None,
    )
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} not installed (CI=true requires it)")
        pytest.skip(f"{name} not installed")
    return path


@dataclass
class BrokerHandle:
    """A running test broker: where it listens, its users, and how to disturb it."""

    kind: str
    host: str
    port: int
    ws_port: int | None
    capabilities: frozenset[str]
    workdir: Path
    pool: dict[str, list[tuple[str, str]]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def user(self, role: str) -> tuple[str, str]:
        """A fresh (username, password) of `role`, never handed out before by this handle."""
        with self._lock:
            if role not in self.pool:
                raise KeyError(f"no users of role {role!r}; roles: {sorted(self.pool)}")
            if not self.pool[role]:
                raise RuntimeError(
                    f"{self.kind}: the pool of {role} users is used up; "
                    f"raise brokers.POOL_SIZES[{role!r}]"
                )
            return self.pool[role].pop(0)

    def require(self, capability: str) -> None:
        """Skip the calling test when this broker lacks `capability`."""
        if capability not in self.capabilities:
            pytest.skip(f"{self.kind} broker: no {capability}")

    # Lifecycle; a process broker implements these.
    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        raise NotImplementedError

    def pause(self) -> None:
        raise NotImplementedError

    def resume(self) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        raise NotImplementedError

    def ensure_running(self) -> None:
        """Resume or start it again after a test disturbed it."""
        self.resume()
        if not self.running:
            self.start()

    def close(self) -> None:
        self.stop()


@dataclass
class ProcessBroker(BrokerHandle):
    """A broker run as a subprocess; `start()` reuses its ports and data directory."""

    command: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None
    ready_line: str | None = None  # wait for this stdout prefix, else for the TCP port
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _paused: bool = field(default=False, repr=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.kind}.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> None:
        if self.running:
            return
        deadline = time.monotonic() + START_TIMEOUT
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.command,
                stdout=subprocess.PIPE if self.ready_line else log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.workdir,
            )
        self._paused = False
        try:
            if self.ready_line:
                self._wait_ready_line(deadline)
            else:
                wait_for_port(self.host, self.port, deadline, alive=lambda: self.running)
        except (TimeoutError, RuntimeError) as exc:
            self.kill()
            raise RuntimeError(
                f"{self.kind} broker did not start: {exc}\n{self.log_tail()}"
            ) from exc

    def _wait_ready_line(self, deadline: float) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        with selectors.DefaultSelector() as sel:
            sel.register(stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {self.ready_line!r} line")
                if not sel.select(timeout=left):
                    continue
                line = stdout.readline().decode(errors="replace")
                if not line:
                    raise RuntimeError("exited before it was ready")
                if line.startswith(self.ready_line or ""):
                    return

    def _finish(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            if self._paused:
                proc.send_signal(signal.SIGCONT)
            proc.send_signal(sig)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._paused = False
        if proc.stdout is not None:
            proc.stdout.close()

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 10 s)."""
        self._finish(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, nothing saved that was not saved already."""
        self._finish(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered."""
        if self.running and not self._paused:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """SIGCONT after pause()."""
        if self._proc is not None and self._paused:
            self._proc.send_signal(signal.SIGCONT)
            self._paused = False


# -- provisioning ---------------------------------------------------------------------------


def _make_pool(kind: str, sizes: dict[str, int]) -> tuple[list[User], dict[str, list[Any]]]:
    """Users named `<role>-<n>` with random passwords, hashed once for the broker."""
    users: list[User] = []
    pool: dict[str, list[Any]] = {}
    for role, count in sizes.items():
        pool[role] = []
        for n in range(1, count + 1):
            name, password = f"{role}-{n:03d}", secrets.token_hex(8)
            users.append(User.create(name, role, password, iterations=_TEST_ITERATIONS))
            pool[role].append((name, password))
    return users, pool


def _start_amqtt(workdir: Path, sizes: dict[str, int]) -> ProcessBroker:
    users, pool = _make_pool("amqtt", sizes)
    save_users(workdir / "users.yaml", users)
    host, port, ws_port = "127.0.0.1", free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAPLEVERSE_")}
    env.update(
        MAPLEVERSE_BROKER_HOST=host,
        MAPLEVERSE_BROKER_PORT=str(port),
        MAPLEVERSE_BROKER_WS_PORT=str(ws_port),
        MAPLEVERSE_BROKER_USERS_FILE=str(workdir / "users.yaml"),
        MAPLEVERSE_BROKER_ROOT=ACL_ROOT,
        MAPLEVERSE_BROKER_PORT_FALLBACK="false",
        MAPLEVERSE_BROKER_DATA_DIR=str(workdir / "data"),
    )
    caps = {Cap.CLIENT_ID_MUST_MATCH, Cap.TAKEOVER_REFUSED, Cap.WEBSOCKET, Cap.PERSISTENCE}
    return ProcessBroker(
        kind="amqtt", host=host, port=port, ws_port=ws_port, workdir=workdir, pool=pool,
        capabilities=frozenset(caps | _COMMON_CAPS | {Cap.MAX_PACKET_SIZE}),
        command=[sys.executable, "-m", "broker"], env=env,
        ready_line="mapleverse-broker listening",
    )  # fmt: skip


def _start_mosquitto(workdir: Path, sizes: dict[str, int]) -> ProcessBroker:
    binary = require_binary("mosquitto")
    users, pool = _make_pool("mosquitto", sizes)
    (workdir / "passwd").write_text(render_password_file(users))
    (workdir / "acl").write_text(_acl_text(users))
    (workdir / "data").mkdir(exist_ok=True)
    port = free_port()
    conf = render_test_conf(port, workdir / "data", workdir / "passwd", workdir / "acl")
    (workdir / "mosquitto.conf").write_text(conf)
    caps = {Cap.TAKEOVER_REFUSED, Cap.PERSISTENCE, Cap.MAX_PACKET_SIZE}
    return ProcessBroker(
        kind="mosquitto", host="127.0.0.1", port=port, ws_port=None, workdir=workdir,
        pool=pool, capabilities=frozenset(caps | _COMMON_CAPS),
        command=[binary, "-c", str(workdir / "mosquitto.conf")],
    )  # fmt: skip


def _acl_text(users: Iterable[User]) -> str:
    from broker.acl import render_acl_file

    return render_acl_file(Acl(load(), root=ACL_ROOT), users)


def _start_nats(workdir: Path, sizes: dict[str, int]) -> ProcessBroker:
    binary = require_binary("nats-server")
    pool = {
        role: [(f"{role}-{n:03d}", secrets.token_hex(8)) for n in range(1, count + 1)]
        for role, count in sizes.items()
    }
    entries = [(name, role, pw) for role, items in pool.items() for name, pw in items]
    port, client_port = free_port(), free_port()
    conf = render_nats_conf(
        Acl(load(), root=ACL_ROOT), entries, client_port=client_port, mqtt_port=port,
        store_dir=workdir / "jetstream",
    )  # fmt: skip
    (workdir / "nats.conf").write_text(conf)
    return ProcessBroker(
        kind="nats", host="127.0.0.1", port=port, ws_port=None, workdir=workdir, pool=pool,
        capabilities=frozenset(_COMMON_CAPS | {Cap.PERSISTENCE, Cap.SUBACK_REFUSAL}),
        command=[binary, "-c", str(workdir / "nats.conf")],
    )  # fmt: skip


_COMMON_CAPS = frozenset({Cap.ACL, Cap.WILL, Cap.RETAIN, Cap.PERSISTENT_SESSION})


@dataclass(frozen=True)
class KindSpec:
    """How to start one kind of test broker, and the pytest marks its tests carry."""

    name: str
    start: Callable[[Path, dict[str, int]], BrokerHandle]
    marks: tuple[Any, ...] = ()


KINDS: dict[str, KindSpec] = {}


def register_kind(
    name: str, start: Callable[[Path, dict[str, int]], BrokerHandle], marks: Iterable[Any] = ()
) -> None:
    """Add a kind of broker (e.g. the in-memory one) to `start_broker` and the fixtures."""
    KINDS[name] = KindSpec(name, start, tuple(marks))


register_kind("amqtt", _start_amqtt)
register_kind("mosquitto", _start_mosquitto, [pytest.mark.mosquitto])
register_kind("nats", _start_nats, [pytest.mark.nats])


def start_broker(
    kind: str, tmp_path: Path, *, pool_sizes: dict[str, int] | None = None
) -> BrokerHandle:
    """Start a broker of `kind` with its state under `tmp_path`; ready when it returns."""
    try:
        spec = KINDS[kind]
    except KeyError:
        raise KeyError(f"unknown broker kind {kind!r}; known: {list(KINDS)}") from None
    workdir = Path(tmp_path) / kind
    workdir.mkdir(parents=True, exist_ok=True)
    handle = spec.start(workdir, dict(pool_sizes or POOL_SIZES))
    handle.start()
    return handle


def start_deployment_mosquitto(tmp_path: Path) -> BrokerHandle:
    """Mosquitto as `start_broker("mosquitto")` starts it, but with the deployment's
    persistence (autosave every 60 s) instead of the tests' save-after-every-change: what the
    benchmarks measure against. Not a fixture kind."""
    workdir = Path(tmp_path) / "mosquitto-deployment"
    workdir.mkdir(parents=True, exist_ok=True)
    handle = _start_mosquitto(workdir, dict(POOL_SIZES))
    conf = render_test_conf(
        handle.port,
        workdir / "data",
        workdir / "passwd",
        workdir / "acl",
        autosave_on_changes=False,
    )
    (workdir / "mosquitto.conf").write_text(conf)
    handle.start()
    return handle


# -- a plain MQTT client for tests that must not depend on the bus --------------------------


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int


# paho reports MQTT 3.1.1 CONNACK codes as MQTT 5 reason codes; the probe gives 3.1.1's.
_CONNACK_311 = {0: 0, 0x84: 1, 0x85: 2, 0x88: 3, 0x86: 4, 0x87: 5}


class MqttProbe:
    """A paho-mqtt client with blocking, time-limited waits; it never reconnects by itself.

    probe = MqttProbe(handle, *handle.user("agent"))
    assert probe.connect() == 0
    assert probe.subscribe(f"{root}/agent/{probe.username}/obs") == 1
    msg = probe.expect(f"{root}/agent/{probe.username}/obs")
    """

    def __init__(
        self,
        handle: BrokerHandle,
        username: str,
        password: str,
        *,
        client_id: str | None = None,
        clean_session: bool = True,
        will: tuple[str, bytes, int, bool] | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.handle = handle
        self.username = username
        self.client_id = username if client_id is None else client_id
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=clean_session
        )
        self._client.username_pw_set(username, password)
        if will is not None:
            self._client.will_set(will[0], will[1], qos=will[2], retain=will[3])
        self._cond = threading.Condition()
        self.messages: list[Received] = []
        self.connack: int | None = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self._subacks: dict[int, int] = {}
        c = self._client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._cond:
            self.connack = _CONNACK_311.get(int(rc.value), int(rc.value))
            if self.connack == 0:
                self.connected.set()
            self._cond.notify_all()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._cond:
            self.disconnected.set()
            self._cond.notify_all()
        client.disconnect()  # stops paho's loop from reconnecting

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), msg.retain, msg.qos))
            self._cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._cond:
            self._subacks[mid] = int(codes[0].value)
            self._cond.notify_all()

    def _wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise TimeoutError(f"{self.username}@{self.handle.kind}: no {what} in {timeout}s")
            return predicate()

    def connect(self, timeout: float = 10.0) -> int:
        """CONNECT and wait for the CONNACK: its MQTT 3.1.1 return code (0 accepted, 2 client id
        rejected, 4 bad username or password, 5 not authorized), -1 if closed without one."""
        self._client.connect(self.handle.host, self.handle.port, keepalive=30)
        self._client.loop_start()
        return self.wait_connack(timeout)

    def wait_connack(self, timeout: float = 10.0) -> int:
        """Wait for the CONNACK of `connect()` (TimeoutError if none comes in time)."""
        self._wait(
            lambda: self.connack is not None or self.disconnected.is_set(), timeout, "CONNACK"
        )
        return self.connack if self.connack is not None else -1

    def subscribe(self, topic_filter: str, qos: int = 1, timeout: float = 10.0) -> int:
        """SUBSCRIBE and wait for the SUBACK; returns the granted QoS or 0x80."""
        _, mid = self._client.subscribe(topic_filter, qos)
        assert mid is not None
        self._wait(lambda: mid in self._subacks, timeout, "SUBACK")
        return self._subacks[mid]

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, timeout: float = 10.0
    ) -> None:
        """PUBLISH; with QoS 1, wait for the PUBACK."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if qos:
            info.wait_for_publish(timeout)
            if not info.is_published():
                raise TimeoutError(f"{self.username}@{self.handle.kind}: no PUBACK for {topic}")

    def expect(self, topic: str, timeout: float = 10.0) -> Received:
        """The first message received on `topic` (waiting for it)."""
        found: Received = self._wait(
            lambda: next((m for m in self.messages if m.topic == topic), None), timeout, topic
        )
        return found

    def received(self, topic: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def drop(self) -> None:
        """Cut the connection without DISCONNECT, so the broker sends the Will."""
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            sock.shutdown(socket.SHUT_RDWR)
        self.disconnected.wait(10)
        self._client.loop_stop()

    def close(self) -> None:
        """DISCONNECT cleanly and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()
