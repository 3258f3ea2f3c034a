"""`python -m broker`: run the embedded broker, or manage its users and generated files.

    python -m broker                          run (settings from MAPLEVERSE_BROKER_*)
    python -m broker hash [PASSWORD]          print a $7$ hash (the password from stdin if absent)
    python -m broker add-user FILE NAME ROLE  add or replace a user (password from stdin)
    python -m broker generate [REPO_ROOT]     rewrite the stale files under mosquitto/
    python -m broker check [REPO_ROOT]        exit 1 if a file under mosquitto/ is stale

Once listening it prints one line, `mapleverse-broker listening tcp=HOST:PORT ws=HOST:PORT`
(`ws=off` without the WebSocket listener). SIGTERM and SIGINT stop it cleanly; SIGHUP reloads
the users file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from broker.embedded import EmbeddedBroker
from broker.errors import BrokerError
from broker.passwords import hash_password
from broker.settings import load_settings
from broker.users import User, load_users, save_users

log = logging.getLogger("broker")


async def _serve() -> None:
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.log_level != "DEBUG":
        for chatty in ("amqtt", "transitions"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    broker = EmbeddedBroker(settings)
    await broker.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(broker))
    print(broker.ready_line, flush=True)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await broker.stop()


def _reload(broker: EmbeddedBroker) -> None:
    try:
        broker.reload_users()
    except BrokerError as exc:
        log.error("users not reloaded, the previous ones stay: %s", exc)


def _read_password(given: str | None) -> str:
    if given is not None:
        return given
    if sys.stdin.isatty():
        return getpass.getpass("password: ")
    return sys.stdin.readline().rstrip("\n")


def _run() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but optional here
        asyncio.run(_serve())
    else:
        uvloop.run(_serve())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    p_hash = sub.add_parser("hash", help="print a $7$ password hash")
    p_hash.add_argument("password", nargs="?")
    p_add = sub.add_parser("add-user", help="add or replace a user in a users file")
    p_add.add_argument("file", type=Path)
    p_add.add_argument("name")
    p_add.add_argument("role")
    for name in ("generate", "check"):
        p = sub.add_parser(name, help=f"{name} the files under mosquitto/")
        p.add_argument("repo_root", nargs="?", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)
    try:
        if args.command is None:
            with contextlib.suppress(KeyboardInterrupt):
                _run()
        elif args.command == "hash":
            print(hash_password(_read_password(args.password)))
        elif args.command == "add-user":
            users = dict(load_users(args.file)) if args.file.exists() else {}
            user = User.create(args.name, args.role, _read_password(None))
            users[user.name] = user
            from broker.users import parse_users

            parse_users(
                {"version": 1, "users": [vars(u) for u in users.values()]}, path=str(args.file)
            )
            save_users(args.file, users)
        else:
            from broker.mosquitto import stale, write_generated

            if args.command == "generate":
                for path in write_generated(args.repo_root):
                    print(f"wrote {path}")
            elif paths := stale(args.repo_root):
                print("stale: " + ", ".join(map(str, paths)), file=sys.stderr)
                return 1
    except BrokerError as exc:
        print(f"mapleverse-broker: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
