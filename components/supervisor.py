"""`mapleverse up`: the embedded broker and a set of components as supervised child processes.

* Credentials: one broker user per component and an `operator`, with random passwords kept in
  `<state-dir>/credentials.json` (mode 0600) and reused on the next run; the broker's users
  file (hashes only) beside it.
* The broker starts first; if the asked port is taken it says so and takes the next free one.
* A component that exits is restarted after a backoff (1 s doubling to 30 s, back to 1 s after
  it ran for 60 s). The broker is restarted the same way, on the same port.
* Ctrl-C or SIGTERM: components get SIGTERM (then SIGKILL after 5 s), the broker last.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.registry import DEFAULT_UP, instance, resolve

__all__ = ["Child", "Supervisor", "read_credentials", "run_up", "users_command"]

READY_RE = re.compile(r"listening tcp=(?P<host>[^\s:]+):(?P<port>\d+)(?: ws=\S+:(?P<ws>\d+))?")
BACKOFF_MIN, BACKOFF_MAX, STABLE_AFTER = 1.0, 30.0, 60.0
# The default world of `make run`: a small city of four districts on two servers, a flock of
# drones and a few hosted agents. Any of these set in the environment wins.
DEFAULT_WORLD = {
    "MAPLEVERSE_WORLD_RATE": "20",
    "MAPLEVERSE_WORLD_LAYOUT": "2x2",
    "MAPLEVERSE_WORLD_BOUNDS": "0,0,400,400",
    "MAPLEVERSE_WORLD_DISTRICTS": "d1,d2",
    "MAPLEVERSE_WORLD_REGION_NAMES": "harbour,old-town,market,uptown",
    "MAPLEVERSE_SWARM_INITIAL": "drones:flocking:300",
    "MAPLEVERSE_SCHEDULER_HOSTED": "wanderer:3,greeter:2",
}
# Settings `up` gives each child itself; the user's other MAPLEVERSE_* variables pass through.
_PER_CHILD = frozenset(
    f"MAPLEVERSE_{name}"
    for name in (
        "HOST", "PORT", "ROOT", "USERNAME", "PASSWORD", "ID", "CLIENT_ID", "METRICS_PORT"
    )
)  # fmt: skip


def read_credentials(state_dir: Path) -> dict[str, Any] | None:
    path = state_dir / "credentials.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF_MIN
    ready_line: re.Match[str] | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Future[None] | None = None

    async def start(self) -> None:
        self.ready.clear()
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,
            start_new_session=True,  # Ctrl-C reaches the supervisor, which stops children in order
        )
        self.started = time.monotonic()
        self.pump = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            match = READY_RE.search(line)
            if match and not self.ready.is_set():
                self.ready_line = match
                self.ready.set()
            print(f"[{self.name}] {line}", flush=True)

    async def stop(self, grace: float = 5.0) -> None:
        proc = self.process
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


class Supervisor:
    def __init__(
        self,
        *,
        state_dir: Path,
        host: str,
        port: int,
        ws_port: int,
        components: list[str],
        root: str = "mv",
    ) -> None:
        self.state_dir = state_dir
        self.host = host
        self.port = port
        self.ws_port = ws_port
        self.names = components
        self.root = root
        self.stopping = asyncio.Event()
        self.children: list[Child] = []
        self.broker: Child | None = None

    def credentials(self) -> dict[str, Any]:
        """Reuse the passwords of an earlier run; add what is missing; write the users file."""
        from broker.users import User, save_users

        old = read_credentials(self.state_dir) or {}
        users: dict[str, dict[str, str]] = old.get("users", {})
        # `operator` is for people (mosquitto_sub); `cli` for `mapleverse status|ping`, so the two
        # can be connected at once (a username is a client id: one connection each).
        wanted = {"operator": "operator", "cli": "operator"}
        for spec in self.names:
            name, ident = instance(spec)
            wanted[f"{resolve(name).kind}-{ident}"] = "component"
        for username, role in wanted.items():
            if username not in users or users[username].get("role") != role:
                users[username] = {"role": role, "password": secrets.token_urlsafe(12)}
        save_users(
            self.state_dir / "users.yaml",
            [User.create(u, v["role"], v["password"]) for u, v in sorted(users.items())],
            header="generated by `mapleverse up`; passwords are in credentials.json",
        )
        return {
            "users": users,
            "operator": {"username": "operator", "password": users["operator"]["password"]},
            "cli": {"username": "cli", "password": users["cli"]["password"]},
        }

    def _env(self, **extra: str) -> dict[str, str]:
        # The user's MAPLEVERSE_* settings reach every child (a world's rate, a store URL),
        # except what says who a child is and where the broker is: `up` sets those.
        env = {k: v for k, v in os.environ.items() if k not in _PER_CHILD}
        env.setdefault(
            "MAPLEVERSE_STORE_URL", f"sqlite+aiosqlite:///{self.state_dir.resolve()}/mapleverse.db"
        )
        for key, value in DEFAULT_WORLD.items():
            env.setdefault(key, value)
        env.update(extra)
        return env

    async def run(self) -> int:
        creds = self.credentials()
        python = sys.executable
        self.broker = Child(
            "broker",
            [python, "-m", "broker"],
            self._env(
                MAPLEVERSE_BROKER_HOST=self.host,
                MAPLEVERSE_BROKER_PORT=str(self.port),
                MAPLEVERSE_BROKER_WS_PORT=str(self.ws_port),
                MAPLEVERSE_BROKER_ROOT=self.root,
                MAPLEVERSE_BROKER_USERS_FILE=str(self.state_dir / "users.yaml"),
                MAPLEVERSE_BROKER_PORT_FALLBACK="true",
                # retained messages and the components' sessions survive a restart of `up`
                MAPLEVERSE_BROKER_DATA_DIR=str(self.state_dir.resolve() / "broker"),
            ),
        )
        await self.broker.start()
        assert self.broker.process is not None
        (self.state_dir / "broker.pid").write_text(str(self.broker.process.pid))
        try:
            await asyncio.wait_for(self.broker.ready.wait(), 30)
        except TimeoutError:
            print("mapleverse up: the broker did not report ready within 30 s", file=sys.stderr)
            await self.broker.stop()
            return 1
        match = self.broker.ready_line
        assert match is not None
        port = int(match["port"])
        ws = match["ws"]
        if port != self.port:
            print(f"mapleverse up: port {self.port} is in use; the broker took {port}")
        # From now on a broker restart must come back on the same ports.
        self.broker.env["MAPLEVERSE_BROKER_PORT"] = str(port)
        self.broker.env["MAPLEVERSE_BROKER_PORT_FALLBACK"] = "false"
        if ws:
            self.broker.env["MAPLEVERSE_BROKER_WS_PORT"] = ws
        creds.update(host=self.host, port=port, ws_port=int(ws) if ws else None, root=self.root)
        _write_private(self.state_dir / "credentials.json", json.dumps(creds, indent=2))
        op = creds["operator"]
        for spec in self.names:
            name, ident = instance(spec)
            user = f"{resolve(name).kind}-{ident}"
            self.children.append(
                Child(
                    spec,
                    [python, "-m", "components", "component", name],
                    self._env(
                        MAPLEVERSE_HOST=self.host,
                        MAPLEVERSE_PORT=str(port),
                        MAPLEVERSE_ROOT=self.root,
                        MAPLEVERSE_USERNAME=user,
                        MAPLEVERSE_PASSWORD=creds["users"][user]["password"],
                        MAPLEVERSE_ID=ident,
                        MAPLEVERSE_METRICS_PORT="0",
                    ),
                )
            )
        for child in self.children:
            await child.start()
        print(
            "\nMapleverse is up.\n"
            f"  broker     mqtt://{self.host}:{port}"
            + (f"  ws://{self.host}:{ws}/mqtt" if ws else "")
            + f"\n  operator   user {op['username']}  password {op['password']}"
            f"  (in {self.state_dir / 'credentials.json'})\n"
            f"  watch      mosquitto_sub -h {self.host} -p {port} -u {op['username']} "
            f"-i {op['username']} -P '{op['password']}' -v -t '{self.root}/sys/#'\n"
            f"  world      mosquitto_sub -h {self.host} -p {port} -u {op['username']} "
            f"-i {op['username']} -P '{op['password']}' -v -t '{self.root}/world/+/snapshot' "
            f"-t '{self.root}/swarm/+/status'   (one of the two at a time: a login is a client id)\n"
            "  status     .venv/bin/mapleverse status --watch   "
            ".venv/bin/mapleverse world status   .venv/bin/mapleverse swarm list\n"
            "  stop       Ctrl-C\n",
            flush=True,
        )
        watchers = [asyncio.ensure_future(self._watch(c)) for c in [self.broker, *self.children]]
        await self.stopping.wait()
        for w in watchers:
            w.cancel()
        await asyncio.gather(*(c.stop() for c in self.children))
        await self.broker.stop()
        print("mapleverse up: stopped", flush=True)
        return 0

    async def _watch(self, child: Child) -> None:
        while not self.stopping.is_set():
            assert child.process is not None
            code = await child.process.wait()
            if self.stopping.is_set():
                return
            if time.monotonic() - child.started > STABLE_AFTER:
                child.backoff = BACKOFF_MIN
            print(
                f"mapleverse up: {child.name} exited with code {code}; "
                f"restarting in {child.backoff:.0f}s",
                flush=True,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(child.backoff):
                    await self.stopping.wait()
            if self.stopping.is_set():
                return
            child.backoff = min(child.backoff * 2, BACKOFF_MAX)
            child.restarts += 1
            await child.start()


def users_command(
    state_dir: Path, action: str, name: str | None, role: str, password: str | None
) -> int:
    """`mapleverse users add|list`: edit the users of `up`'s broker, which reloads them."""
    from broker.errors import BrokerError
    from broker.users import USERNAME_RE, User, save_users

    creds = read_credentials(state_dir)
    if creds is None:
        print(
            f"mapleverse users: no {state_dir / 'credentials.json'}; run `mapleverse up` first",
            file=sys.stderr,
        )
        return 1
    users: dict[str, dict[str, str]] = creds.setdefault("users", {})
    if action == "list":
        for username, info in sorted(users.items()):
            print(f"{username:24} {info['role']}")
        return 0
    if not name or not USERNAME_RE.match(name):
        print("mapleverse users add: NAME must match [a-z0-9_-]+", file=sys.stderr)
        return 2
    users[name] = {"role": role, "password": password or secrets.token_urlsafe(12)}
    try:
        save_users(
            state_dir / "users.yaml",
            [User.create(u, v["role"], v["password"]) for u, v in sorted(users.items())],
            header="generated by `mapleverse up`; passwords are in credentials.json",
        )
    except BrokerError as exc:
        print(f"mapleverse users add: {exc}", file=sys.stderr)
        return 1
    _write_private(state_dir / "credentials.json", json.dumps(creds, indent=2))
    reloaded = False
    with contextlib.suppress(OSError, ValueError):
        os.kill(int((state_dir / "broker.pid").read_text()), signal.SIGHUP)
        reloaded = True
    print(
        f"user {name} ({role}) password {users[name]['password']}"
        + ("" if reloaded else "  (the broker is not running: used at its next start)")
    )
    return 0


def run_up(args: argparse.Namespace) -> int:
    names = (
        DEFAULT_UP
        if not args.components
        else tuple(n.strip() for n in args.components.split(",") if n.strip())
    )
    for spec in names:
        try:
            resolve(instance(spec)[0])
        except KeyError as exc:
            print(f"mapleverse up: {exc.args[0]}", file=sys.stderr)
            return 2

    async def main() -> int:
        sup = Supervisor(
            state_dir=Path(args.state_dir),
            host=args.host,
            port=args.port,
            ws_port=args.ws_port,
            components=list(names),
            root=os.environ.get("MAPLEVERSE_ROOT", "mv"),
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, sup.stopping.set)
        return await sup.run()

    try:
        import uvloop

        return int(uvloop.run(main()))
    except KeyboardInterrupt:
        return 130
