"""`mapleverse mesh ...` and `mapleverse mafia ...`: the mesh's control plane, over the bus.

mapleverse mesh create [--mesh M]                        record the mesh (once)
mapleverse mesh status [--mesh M]                        leader, term, log, workers' health
mapleverse mesh agents [--agent A | --worker W]          agents, their versions and state
mapleverse mesh join WORKER                              a worker's place in the mesh
mapleverse mesh provision WORKER [--agents N]            ... with N agents for it
mapleverse mesh terminate (--worker W | --agent A)       out of the mesh
mapleverse mafia [--players N] [--human NAME ...] [--bots-on WORKER] [--day S] [--night S]
mapleverse mafia --play GAME --as NAME [--password P]   play a seat from this terminal

Requests go to `rpc/mesh-{mesh}/{method}`, which only the leader answers; during an election
they are sent again with the same request id until one does. The broker's ACL decides who may
send them (operators and components, by topics.yaml); an agent may only play its own seat.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from bus import Bus, BusSettings
from components.cli_support import OperationFailed, common_options, run_operation
from components.mesh_worker.client import MeshClient, MeshRequestError
from mesh.payloads import GameAction, MeshLeader, MeshStatus

__all__ = ["add_parsers", "run"]


def add_parsers(sub: Any) -> None:
    common = common_options("mesh", "mesh", 10.0, "a leader")
    mesh = sub.add_parser("mesh", help="the mesh: status, agents, workers")
    m = mesh.add_subparsers(dest="action", required=True)
    m.add_parser("create", parents=[common], help="record the mesh (its managers must run)")
    m.add_parser("status", parents=[common], help="leader, term, log and workers' health")
    agents = m.add_parser("agents", parents=[common], help="agents with versions and state")
    agents.add_argument("--agent")
    agents.add_argument("--worker")
    join = m.add_parser("join", parents=[common], help="give a worker its place in the mesh")
    join.add_argument("worker")
    provision = m.add_parser("provision", parents=[common], help="a worker and agents for it")
    provision.add_argument("worker")
    provision.add_argument("--agents", type=int, default=1)
    terminate = m.add_parser("terminate", parents=[common], help="a worker or an agent out")
    terminate.add_argument("--worker")
    terminate.add_argument("--agent")
    mafia = sub.add_parser(
        "mafia", parents=[common], help="run a game of Mafia on the mesh, or play in one"
    )
    mafia.set_defaults(action="run")
    mafia.add_argument("--players", type=int, default=12, help="seats, 12 to 30 (default 12)")
    mafia.add_argument(
        "--human", action="append", default=[], metavar="NAME", help="a seat for a person"
    )
    mafia.add_argument("--day", type=float, default=None, help="seconds of a day")
    mafia.add_argument("--night", type=float, default=None, help="seconds of a night")
    mafia.add_argument("--seed", type=int, default=None)
    mafia.add_argument(
        "--bots-on",
        metavar="WORKER",
        help="the worker whose agents the bots are, and which plays them (default: the leader)",
    )
    mafia.add_argument("--game", help="the game's id (default: a new one)")
    mafia.add_argument("--play", metavar="GAME", help="play a seat of GAME from this terminal")
    mafia.add_argument("--as", dest="player", metavar="NAME", help="--play: your agent id")
    mafia.add_argument("--password", help="--play: your password (or MAPLEVERSE_PASSWORD)")


async def _call(bus: Bus, args: argparse.Namespace, method: str, **kw: Any) -> dict[str, Any]:
    client = MeshClient(bus, args.mesh, attempt_timeout=0.5, deadline=args.timeout)
    try:
        result = await client.call(method, **kw)
    except MeshRequestError as exc:
        if exc.reason.startswith("no leader"):
            raise OperationFailed(
                f"no leader of mesh {args.mesh!r} answered within {args.timeout:g} s; are its "
                "managers running? (mapleverse status)"
            ) from None
        raise OperationFailed(exc.reason) from None
    finally:
        await client.close()
    if not result.get("ok", True):
        raise OperationFailed(str(result.get("error", "refused")))
    return result


def _show(result: Any, args: argparse.Namespace, text: str) -> None:
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else text)


async def _status(bus: Bus, args: argparse.Namespace) -> None:
    """The retained status, which the leader keeps; no leader needed to read it."""
    t = bus.topics
    found: dict[str, Any] = {}
    for name in ("mesh.status", "mesh.leader"):  # both retained: there at once, if at all
        sub = bus.subscribe(t[name].build(mesh=args.mesh))
        await sub.start()
        try:
            found[name] = (await sub.get(min(args.timeout, 3.0))).payload
        except TimeoutError:
            pass
        finally:
            await sub.close()
    if "mesh.status" not in found:
        raise OperationFailed(f"mesh {args.mesh!r} has no status yet: no leader was elected")
    msg_status: MeshStatus = found["mesh.status"]
    leader: MeshLeader | None = found.get("mesh.leader")
    status = msg_status
    if args.json:
        print(status.model_dump_json(indent=2))
        return
    age = time.time() - status.updated
    print(
        f"mesh {status.mesh}: leader {status.leader} (term {status.term}), commit "
        f"{status.commit_index}, applied {status.applied}, {status.agents} agents "
        f"(as of {age:.1f} s ago)"
    )
    if leader is not None and leader.term > status.term:  # trust a record only with its term
        print(
            f"  (stale: {leader.leader} leads since term {leader.term}; its status is not out yet)"
        )
    for m in status.managers:
        print(f"  manager {m.id:<12} {m.role:<10} term {m.term}")
    for worker, health in sorted(status.workers.items()):
        print(f"  worker  {worker:<12} {health}")


async def _mesh(bus: Bus, args: argparse.Namespace) -> None:
    action = args.action
    if action == "status":
        await _status(bus, args)
    elif action == "create":
        result = await _call(bus, args, "create", by=bus.settings.username or "")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(result["at"]))
        word = "exists since" if result["existed"] else "created"
        _show(result, args, f"mesh {args.mesh} {word} {when}")
    elif action == "agents":
        kw = {k: v for k, v in (("agent", args.agent), ("worker", args.worker)) if v}
        agents = (await _call(bus, args, "agents", **kw))["agents"]
        lines = [
            f"{a:<20} {v['worker']:<12} v{v['version']:<5} {json.dumps(v['state'])}"
            for a, v in sorted(agents.items())
        ]
        _show(agents, args, "\n".join(lines) or "no agents")
    elif action == "join":
        result = await _call(bus, args, "join", worker=args.worker)
        _show(
            result, args, f"{args.worker} is in mesh {args.mesh} ({len(result['agents'])} agents)"
        )
    elif action == "provision":
        result = await _call(bus, args, "provision", worker=args.worker, agents=args.agents)
        _show(result, args, f"{args.worker}: added {', '.join(result['added']) or 'nothing'}")
    elif action == "terminate":
        if bool(args.worker) == bool(args.agent):
            raise OperationFailed("name one of --worker W or --agent A")
        kw = {"worker": args.worker} if args.worker else {"agent": args.agent}
        result = await _call(bus, args, "terminate", **kw)
        _show(result, args, f"{args.worker or args.agent} is out of mesh {args.mesh}")


async def _mafia(bus: Bus, args: argparse.Namespace) -> None:
    """Start a game and tell it as it happens, until it ends."""
    people = bool(args.human)
    kw: dict[str, Any] = {
        "players": args.players,
        "humans": args.human,
        "day_seconds": args.day if args.day is not None else (90.0 if people else 2.0),
        "night_seconds": args.night if args.night is not None else (45.0 if people else 1.0),
    }
    if args.seed is not None:
        kw["seed"] = args.seed
    if args.bots_on:
        kw["host"] = args.bots_on
    if args.game:
        kw["game"] = args.game
    started = await _call(bus, args, "mafia-start", **kw)
    game = started["game"]
    events = bus.subscribe(bus.topics["mafia.events"].build(mesh=args.mesh, game=game))
    await events.start()
    print(f"game {game} on mesh {args.mesh}: {len(started['players'])} players", flush=True)
    if people:
        print(
            f"people join with: mapleverse mafia --mesh {args.mesh} --play {game} --as NAME",
            flush=True,
        )
    try:
        async for msg in events:
            if msg.payload.kind == "won":
                break
            if msg.payload.line:
                print(f"  {msg.payload.line}", flush=True)
    finally:
        await events.close()
    story = (await _call(bus, args, "mafia-story", game=game))["story"]
    end = next(i for i, line in enumerate(story) if " wins after " in line)
    for line in story[end:]:  # the end, and everyone's role revealed
        print(f"  {line}")


HELP = """commands: say TEXT | vote NAME | kill NAME | protect NAME | inspect NAME | view | quit"""


async def _play(bus: Bus, args: argparse.Namespace) -> None:
    """A person's seat: the phase and what they may know as it changes; their commands."""
    me, game = args.player, args.play
    t = bus.topics
    view_sub = bus.subscribe(t["mafia.player"].build(mesh=args.mesh, game=game, agent=me))
    events = bus.subscribe(t["mafia.events"].build(mesh=args.mesh, game=game))
    for sub in (view_sub, events):
        await sub.start()
    act = t["mafia.act"].build(mesh=args.mesh, game=game, agent=me)
    print(f"you are {me} in game {game}. {HELP}", flush=True)
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    loop.add_reader(sys.stdin.fileno(), lambda: lines.put_nowait(sys.stdin.readline() or None))
    last: Any = None

    async def show() -> None:
        nonlocal last
        async for msg in view_sub:
            view = msg.payload
            if last is None or view.role != last.role:
                team = f" with {', '.join(p for p in view.team if p != me)}" if view.team else ""
                print(f"your role: {view.role}{team}", flush=True)
            for event in view.private[len(last.private) if last else 0 :]:
                if event["kind"] == "inspected":
                    print(f"  you found: {event['data']}", flush=True)
            if view.reply is not None and (last is None or view.reply != last.reply):
                reply = view.reply
                print("  ok" if reply["ok"] else f"  refused: {reply['error']}", flush=True)
            last = view

    async def tell() -> None:
        async for msg in events:
            if msg.payload.line:
                print(msg.payload.line, flush=True)
            elif msg.payload.kind == "phase":
                print(f"-- {msg.payload.phase} {msg.payload.round} --", flush=True)

    tasks = [asyncio.create_task(show()), asyncio.create_task(tell())]
    try:
        while (line := await lines.get()) is not None:
            words = line.strip().split(maxsplit=1)
            if not words:
                continue
            verb, rest = words[0].lower(), (words[1] if len(words) > 1 else "")
            if verb == "quit":
                break
            if verb == "view":
                print(last.model_dump_json(indent=2) if last else "nothing yet", flush=True)
            elif verb == "say" and rest:
                await bus.publish(act, GameAction(op="say", text=rest))
            elif verb in {"vote", "kill", "protect", "inspect"} and rest:
                await bus.publish(act, GameAction(op=verb, target=rest.strip()))
            else:
                print(HELP, flush=True)
    finally:
        loop.remove_reader(sys.stdin.fileno())
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def run(args: argparse.Namespace, settings: BusSettings) -> int:
    async def handler(bus: Bus, args: argparse.Namespace) -> None:
        if args.command == "mesh":
            await _mesh(bus, args)
        elif args.play:
            if not args.player:
                raise OperationFailed("--play needs --as NAME (your agent id)")
            await _play(bus, args)
        else:
            await _mafia(bus, args)

    return await run_operation(args, settings, handler)
