"""`mapleverse swarm|world|region ...`: the world's operations, over the bus (request/reply).

mapleverse swarm create NAME [--behaviour B] [--size N] [--max-size M] [--bounds x0,y0,x1,y1]
                             [--param KEY=VALUE ...] [--world W] [--no-wait]
mapleverse swarm scale NAME TARGET [--rate PER_SECOND] [--no-wait]
mapleverse swarm pause|resume (NAME | --all)
mapleverse swarm status NAME | list
mapleverse world pause|resume|status [--world W]
mapleverse world tick-rate --set N [--world W]
mapleverse region list | show R | drain A --target B [--world W]

Long work (scaling, draining) shows a progress bar; an unknown swarm or region is a clear
error and exit code 1; a service that does not answer says which one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from bus import Bus, BusSettings, RequestTimeout
from bus.payloads import RpcRequest
from components.cli_support import OperationFailed, common_options, run_operation
from world.payloads import ScaleProgress

__all__ = ["add_parsers", "run"]

SERVICES = {
    "swarm": "the swarm coordinator",
    "world": "the orchestrator",
    "region": "the orchestrator",
}


def add_parsers(sub: Any) -> None:
    common = common_options("world", "world", 5.0, "an answer")

    def leaf(parent: Any, name: str, **kw: Any) -> Any:
        return parent.add_parser(name, parents=[common], **kw)

    swarm = sub.add_parser("swarm", help="create, scale, pause, resume and inspect swarms")
    s = swarm.add_subparsers(dest="action", required=True)
    create = leaf(s, "create", help="a new swarm (and scale it to --size)")
    create.add_argument("name")
    create.add_argument("--behaviour", "--behavior", default="flocking")
    create.add_argument("--size", type=int, default=0)
    create.add_argument("--max-size", type=int, default=100_000)
    create.add_argument("--bounds", help="x0,y0,x1,y1 (default: the whole world)")
    create.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("--no-wait", action="store_true", help="do not follow the scaling")
    scale = leaf(s, "scale", help="grow or shrink a swarm to TARGET members")
    scale.add_argument("name")
    scale.add_argument("target", type=int)
    scale.add_argument("--rate", type=float, default=0.0, help="members per second (0: at once)")
    scale.add_argument("--no-wait", action="store_true")
    for verb in ("pause", "resume"):
        p = leaf(s, verb, help=f"{verb} one swarm, or every swarm with --all")
        p.add_argument("name", nargs="?")
        p.add_argument("--all", action="store_true")
    status = leaf(s, "status", help="one swarm's live status")
    status.add_argument("name")
    leaf(s, "list", help="every swarm")
    world = sub.add_parser("world", help="the world clock: pause, resume, tick rate, status")
    w = world.add_subparsers(dest="action", required=True)
    for verb in ("pause", "resume", "status"):
        leaf(w, verb)
    rate = leaf(w, "tick-rate", help="change the target tick rate")
    rate.add_argument("--set", dest="rate", type=float, required=True, metavar="N")
    region = sub.add_parser("region", help="regions (districts) of the world")
    r = region.add_subparsers(dest="action", required=True)
    leaf(r, "list")
    show = leaf(r, "show")
    show.add_argument("region")
    drain = leaf(r, "drain", help="hand region A and all its entities to B's server")
    drain.add_argument("region")
    drain.add_argument("--target", required=True)


def _params(items: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise OperationFailed(f"--param takes KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def _bounds(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise OperationFailed(f"--bounds takes x0,y0,x1,y1, got {text!r}")
    return values


async def _call(bus: Bus, args: argparse.Namespace, service: str, method: str, **kw: Any) -> Any:
    topic = bus.topics["rpc.request"].build(service=service, method=method)
    try:
        reply = await bus.request(topic, RpcRequest(args=kw), timeout=args.timeout)
    except RequestTimeout:
        who = SERVICES.get(args.command, service)
        raise OperationFailed(
            f"no answer from {who} ({service}) within {args.timeout:g} s; "
            "is it running? (mapleverse status)"
        ) from None
    if not reply.payload.ok:
        raise OperationFailed(reply.payload.error or "failed")
    return reply.payload.result


def progress_bar(done: int, start: int, target: int, started: float, width: int = 30) -> str:
    span = abs(target - start)
    moved = abs(done - start)
    fraction = 1.0 if span == 0 else min(1.0, moved / span)
    filled = int(width * fraction)
    elapsed = time.monotonic() - started
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{target} "
        f"{fraction * 100:5.1f}% {elapsed:5.1f}s"
    )


async def _follow(bus: Bus, sub: Any, request: dict[str, Any], out: Callable[[str], None]) -> None:
    """Show the progress of a scale until it finishes."""
    started = time.monotonic()
    tty = sys.stdout.isatty()
    last_line = ""
    while True:
        msg = await sub.get()
        p = msg.payload
        if not isinstance(p, ScaleProgress) or p.request != request["request"]:
            continue
        line = progress_bar(p.current, p.start, p.target, started)
        if tty:
            out("\r" + line)
        elif line[:44] != last_line[:44] or p.finished:
            out(line + "\n")
        last_line = line
        if p.finished:
            if tty:
                out("\n")
            if p.error:
                raise OperationFailed(p.error)
            return


def _print(result: Any, args: argparse.Namespace) -> None:
    if args.json or not isinstance(result, dict | list):
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    if isinstance(result, list):
        for item in result:
            _print(item, args)
        return
    for key in sorted(result):
        value = result[key]
        if isinstance(value, dict | list):
            value = json.dumps(value, sort_keys=True)
        print(f"{key:>20}: {value}")


async def _swarm(bus: Bus, args: argparse.Namespace) -> None:
    def out(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    action = args.action
    if action in ("create", "scale"):
        name = args.name
        progress = await bus.subscribe(bus.topics["swarm.progress"].build(swarm=name))
        if action == "create":
            result = await _call(
                bus, args, "swarm", "create",
                name=name, behaviour=args.behaviour, size=args.size, max_size=args.max_size,
                bounds=_bounds(args.bounds), params=_params(args.param), world=args.world,
            )  # fmt: skip
            print(f"created swarm {name} ({args.behaviour}, max {args.max_size})")
            request = result["scale"]
        else:
            request = await _call(
                bus, args, "swarm", "scale", name=name, target=args.target, rate=args.rate
            )
        if request and not args.no_wait and request["current"] != request["target"]:
            await _follow(bus, progress, request, out)
        elif request:
            print(f"scaling {name}: {request['current']} -> {request['target']}")
        return
    if action in ("pause", "resume"):
        if not args.name and not args.all:
            raise OperationFailed(f"name a swarm, or use --all to {action} every swarm")
        kw = {"name": args.name} if args.name else {}
        result = await _call(bus, args, "swarm", action, **kw)
        names = ", ".join(result["swarms"]) or "(no swarms)"
        print(f"{'paused' if result['paused'] else 'resumed'}: {names}")
        return
    if action == "status":
        _print(await _call(bus, args, "swarm", "status", name=args.name), args)
        return
    rows = await _call(bus, args, "swarm", "list")
    if args.json:
        _print(rows, args)
        return
    header = f"{'NAME':16} {'BEHAVIOUR':10} {'STATE':8} {'AGENTS':>8} {'TARGET':>8} {'HEALTH':8} {'UPD/S':>10} {'LAT MS':>7} {'COUPLING':>8}"
    print(header)
    for s in rows:
        print(
            f"{s['name']:16} {s['behaviour']:10} {s['state']:8} {s['agents']:>8} {s['target']:>8} "
            f"{s['health']:8} {s['updates_per_second']:>10.0f} {s['mean_latency_ms']:>7.2f} "
            f"{s['coupling']:>8.3f}"
        )
    if not rows:
        print("(no swarms: mapleverse swarm create NAME --size N)")


async def _world(bus: Bus, args: argparse.Namespace) -> None:
    service = f"world-{args.world}"
    if args.action == "tick-rate":
        result = await _call(bus, args, service, "tick-rate", rate=args.rate)
        print(f"world {args.world}: target tick rate {result['rate']:g}/s")
    elif args.action in ("pause", "resume"):
        result = await _call(bus, args, service, args.action)
        state = "paused" if result["paused"] else "running"
        print(f"world {args.world}: {state} at tick {result['tick']}")
    else:
        result = await _call(bus, args, service, "status")
        if args.json:
            _print(result, args)
            return
        print(
            f"world {result['world']}: tick {result['tick']}, "
            f"{'paused' if result['paused'] else 'running'}, rate {result['rate']:.1f}/"
            f"{result['target_rate']:g} per s, dilation {result['dilation']:.2f} "
            f"(floor {result['dilation_floor']:g}), {result['entities']} entities"
        )
        _regions(result["regions"])


def _regions(regions: list[dict[str, Any]]) -> None:
    print(f"{'REGION':16} {'DISTRICT':10} {'ENTITIES':>9}  BOUNDS")
    for r in regions:
        b = r["bounds"]
        print(
            f"{r['id']:16} {r['district']:10} {r['entities']:>9}  "
            f"{b['x0']:g},{b['y0']:g} - {b['x1']:g},{b['y1']:g}"
        )


async def _region(bus: Bus, args: argparse.Namespace) -> None:
    service = f"world-{args.world}"
    if args.action == "list":
        _regions((await _call(bus, args, service, "status"))["regions"])
    elif args.action == "show":
        _print(await _call(bus, args, service, "region-show", region=args.region), args)
    else:
        started = time.monotonic()
        before = await _call(bus, args, service, "region-show", region=args.region)
        print(f"draining {args.region} ({before['entities']} entities) into {args.target} ...")
        args.timeout = max(args.timeout, 35.0)
        result = await _call(
            bus, args, service, "region-drain", region=args.region, target=args.target
        )
        print(
            progress_bar(result["moved"], 0, result["moved"], started)
            + f"  {args.region}: {result['from']} -> {result['to']}"
        )


async def run(args: argparse.Namespace, settings: BusSettings) -> int:
    handler = {"swarm": _swarm, "world": _world, "region": _region}[args.command]
    return await run_operation(args, settings, handler)
