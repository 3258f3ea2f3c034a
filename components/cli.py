"""`mapleverse`: the command line.

mapleverse up                  embedded broker + the default components, supervised
mapleverse broker              the embedded broker alone
mapleverse component NAME      one component as its own process
mapleverse status [--watch]    the live table from the retained statuses
mapleverse ping                a request/reply round trip through the echo service
mapleverse topics list|asyncapi|generate|check
mapleverse swarm|world|region ...   the world's operations (components/operations.py)
mapleverse mesh|mafia ...      the mesh's control plane and its game (components/mesh_operations.py)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from bus import Bus, BusError, BusSettings, SettingsError, load_settings
from bus.payloads import ComponentHealth, HealthSummary, RpcRequest, Status
from bus.topics import load

__all__ = ["main"]

REPO = Path(__file__).resolve().parent.parent


def _operator_settings(
    args: argparse.Namespace, user: tuple[str, str] | None = None
) -> BusSettings:
    """Operator credentials: MAPLEVERSE_* variables, else those `mapleverse up` wrote; or, with
    `user`, that user's (an agent's) on the same broker."""
    overrides: dict[str, object] = {}
    if user is not None:
        overrides.update(username=user[0], password=user[1])
    if not os.environ.get("MAPLEVERSE_USERNAME"):
        from components.supervisor import read_credentials

        creds = read_credentials(Path(args.state_dir))
        if creds is not None:
            overrides.update(host=creds["host"], port=creds["port"])
            if user is None:
                overrides.update(
                    username=creds["operator"]["username"],
                    password=creds["operator"]["password"],
                )
    overrides["client_id"] = None
    overrides["clean_session"] = True
    return load_settings(BusSettings, **overrides)


# -- status ---------------------------------------------------------------------------------
def _age(ts: float) -> str:
    if not ts:
        return "-"
    seconds = max(0.0, time.time() - ts)
    return f"{seconds:.1f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def render_table(statuses: dict[tuple[str, str], Status], health: HealthSummary | None) -> str:
    rows: dict[tuple[str, str], list[str]] = {}
    by_health: dict[tuple[str, str], ComponentHealth] = {}
    if health is not None:
        by_health = {(c.kind, c.id): c for c in health.components}
    for key in sorted(set(statuses) | set(by_health)):
        status, seen = statuses.get(key), by_health.get(key)
        state = seen.state if seen is not None else (status.state if status else "?")
        epoch = str(status.epoch if status else seen.epoch if seen else "-")
        rows[key] = [
            key[0],
            key[1],
            state,
            epoch,
            str(seen.last_seq) if seen else "-",
            _age(seen.last_seen) if seen else "-",
            status.version if status else "-",
            str(status.pid) if status and status.pid else "-",
        ]
    header = ["KIND", "ID", "STATE", "EPOCH", "SEQ", "LAST BEAT", "VERSION", "PID"]
    table = [header, *rows.values()]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    if health is None:
        lines.append("(no health summary yet: is the health monitor running?)")
    elif not rows:
        lines.append("(no components)")
    return "\n".join(lines)


async def _status(args: argparse.Namespace) -> int:
    settings = _operator_settings(args)
    statuses: dict[tuple[str, str], Status] = {}
    health: HealthSummary | None = None
    async with Bus(settings, kind="cli") as bus:
        sub_status = await bus.subscribe(bus.topics["component.status"].build())
        sub_health = await bus.subscribe(bus.topics["health"].build())

        async def collect(quiet: float) -> bool:
            nonlocal health
            changed = False
            while True:
                getters = {
                    asyncio.ensure_future(sub_status.get()): "s",
                    asyncio.ensure_future(sub_health.get()): "h",
                }
                done, pending = await asyncio.wait(
                    getters, timeout=quiet, return_when=asyncio.FIRST_COMPLETED
                )
                for fut in pending:
                    fut.cancel()
                if not done:
                    return changed
                for fut in done:
                    msg = fut.result()
                    if isinstance(msg.payload, Status):
                        statuses[(msg.payload.kind, msg.payload.id)] = msg.payload
                    elif isinstance(msg.payload, HealthSummary):
                        health = msg.payload
                    changed = True

        await collect(0.5)
        print(render_table(statuses, health), flush=True)
        while args.watch:
            if await collect(1.0):
                print("\x1b[2J\x1b[H" + render_table(statuses, health), flush=True)
    return 0


async def _ping(args: argparse.Namespace) -> int:
    settings = _operator_settings(args)
    async with Bus(settings, kind="cli") as bus:
        topic = bus.topics["rpc.request"].build(service="echo", method="ping")
        for i in range(args.count):
            started = time.perf_counter()
            reply = await bus.request(topic, RpcRequest(args={"n": i}), timeout=args.timeout)
            took = (time.perf_counter() - started) * 1000
            print(f"reply from {reply.envelope.sender}: {reply.payload.result} in {took:.2f} ms")
    return 0


# -- topics ---------------------------------------------------------------------------------
def generated_files() -> dict[Path, str]:
    """Every file generated from topics.yaml, by path: `topics generate` writes them."""
    from bus.asyncapi import package_version, render_yaml

    tree = load(REPO / "topics.yaml")
    files = {REPO / "docs" / "asyncapi.yaml": render_yaml(tree, package_version())}
    try:
        from broker.mosquitto import generate
    except ImportError:  # pragma: no cover - broker package is part of the distribution
        return files
    for path, text in generate(REPO).items():
        files[Path(path) if Path(path).is_absolute() else REPO / path] = text
    return files


def _topics(args: argparse.Namespace) -> int:
    tree = load()
    if args.action == "list":
        for spec in tree:
            pub = ",".join(map(str, spec.publish)) or "-"
            sub = ",".join(map(str, spec.subscribe)) or "-"
            print(
                f"{spec.full_pattern:40} qos={int(spec.qos)} retain={str(spec.retain).lower():5}"
                f" {spec.payload_ref:14} pub={pub} sub={sub}"
            )
        return 0
    if args.action == "asyncapi":
        from bus.asyncapi import package_version, render_yaml

        text = render_yaml(tree, package_version())
        if args.output:
            Path(args.output).write_text(text)
        else:
            sys.stdout.write(text)
        return 0
    stale = []
    for path, text in generated_files().items():
        current = path.read_text() if path.exists() else None
        if current != text:
            stale.append(path)
            if args.action == "generate":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    for path in stale:
        verb = "wrote" if args.action == "generate" else "stale:"
        print(f"{verb} {path.relative_to(REPO)}")
    if args.action == "check" and stale:
        print("run `make generate` (mapleverse topics generate)", file=sys.stderr)
        return 1
    return 0


# -- entry point ------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mapleverse", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--state-dir",
        default=os.environ.get("MAPLEVERSE_STATE_DIR", ".mapleverse"),
        help="where `up` keeps credentials and data (default .mapleverse)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="embedded broker and the default components, supervised")
    up.add_argument(
        "--port",
        type=int,
        default=1883,
        help="broker port (default 1883; the next free one if it is taken)",
    )
    up.add_argument("--ws-port", type=int, default=9001)
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument(
        "--components",
        default=None,
        help="comma-separated component names (default: the registry's default set)",
    )
    broker = sub.add_parser(
        "broker",
        help="the embedded broker alone (users: MAPLEVERSE_BROKER_USERS_FILE, "
        "else those of `up` in the state dir)",
    )
    broker.add_argument("args", nargs=argparse.REMAINDER)
    comp = sub.add_parser("component", help="run one component (settings from MAPLEVERSE_*)")
    comp.add_argument("name")
    status = sub.add_parser("status", help="the live table of components")
    status.add_argument("--watch", action="store_true", help="keep updating")
    ping = sub.add_parser("ping", help="request/reply round trips through the echo service")
    ping.add_argument("--count", type=int, default=3)
    ping.add_argument("--timeout", type=float, default=5.0)
    users = sub.add_parser("users", help="users of the embedded broker started by `up`")
    users.add_argument("action", choices=["add", "list"])
    users.add_argument("name", nargs="?", help="the username (an agent's is its agent id)")
    users.add_argument(
        "--role", default="agent", choices=["agent", "device", "operator", "component"]
    )
    users.add_argument("--password", help="default: a random one, printed")
    from components.mesh_operations import add_parsers as add_mesh_parsers
    from components.operations import add_parsers

    add_parsers(sub)
    add_mesh_parsers(sub)
    topics = sub.add_parser("topics", help="the declared topic tree")
    topics.add_argument("action", choices=["list", "asyncapi", "generate", "check"])
    topics.add_argument("--output", "-o", help="asyncapi: write to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "component":
            from components.runtime.runner import run_component

            return run_component(args.name)
        if args.command == "broker":
            from broker.__main__ import main as broker_main

            users = Path(args.state_dir) / "users.yaml"  # the users `mapleverse up` made
            if "MAPLEVERSE_BROKER_USERS_FILE" not in os.environ and users.exists():
                os.environ["MAPLEVERSE_BROKER_USERS_FILE"] = str(users)

            return broker_main(args.args)
        if args.command == "up":
            from components.supervisor import run_up

            return run_up(args)
        if args.command == "topics":
            return _topics(args)
        if args.command == "users":
            from components.supervisor import users_command

            return users_command(
                Path(args.state_dir), args.action, args.name, args.role, args.password
            )
        if args.command == "status":
            return asyncio.run(_status(args))
        if args.command == "ping":
            return asyncio.run(_ping(args))
        if args.command in ("swarm", "world", "region"):
            from components.operations import run

            return asyncio.run(run(args, _operator_settings(args)))
        if args.command in ("mesh", "mafia"):
            from components.mesh_operations import run as run_mesh

            user = None
            if args.command == "mafia" and args.play:  # a person plays as their agent
                password = args.password or os.environ.get("MAPLEVERSE_PASSWORD", "")
                user = (args.player or "", password)
            return asyncio.run(run_mesh(args, _operator_settings(args, user)))
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"mapleverse {args.command}: {problem}", file=sys.stderr)
        return 2
    except BusError as exc:
        print(f"mapleverse {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
