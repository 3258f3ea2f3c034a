"""A whole world on one box: agent-ticks/s, update latency, region sync, hand-offs, swarm scale.

    .venv/bin/python benchmarks/world.py [--quick] [--loads 20000@60,100000@10]
        [--behaviours drift,flocking] [--moderate 2000@20] [--scale 10000,100000]
        [--seconds 10] [--warmup 2] [--sections | --profile DIR] [--store-dir DIR]

Starts Mosquitto from the project's own config (mosquitto/, via tests/brokers.py, with the
deployment's persistence: autosave every 60 s) on a free port. Each world is its own set of
processes on that broker, under its own topic root: the orchestrator and two district servers
(`python -m components component orchestrator|district`, layout 2x1, a temporary SQLite store),
plus the swarm coordinator in the moderate world. Entities are spawned with `DistrictControl`
spawn orders to the district that owns their spot, after a retained `SwarmSpec`; the world is
sized so the density is always Mesa's boids example (0.01 per unit area) and the swarm moves at
10 units/s, so entities cross the border between the two districts all the time.

For each load `N@RATE` and behaviour, after `--warmup` seconds, for `--seconds`:

1. agent-ticks/s: the entities the districts stepped (`stepped` in their step reports: an
   entity that crossed a border after its step counts too) in the ticks the clock sent in the
   window but the last, over the time from the first of those ticks to the last (the clock's
   own send times: counting whole ticks in a window of the benchmark's own length would be off
   by up to a tick, 1 % at 10 Hz over 10 s); the dilation (world snapshots), tick duration
   p50/p99 against the budget 1/RATE, and every position counted at a subscriber on
   `mv/world/+/region/+/updates` (records received / records the step reports announced);
2. update latency: subscriber arrival - `meta.sent` (the district's clock when it made the
   batch), per message, and tick sent -> the tick's last position batch;
3. region sync: retained region snapshot arrival - `synced`, and tick sent -> arrival;
4. hand-off latency: offer sent -> accept seen by the subscriber, and the districts' histogram
   `mapleverse_handoff_latency_seconds` scraped from /metrics (window difference).

The moderate world (`--moderate`, default 2,000 at 20 Hz) measures 2-4 at a light load, then
5. swarm scale: `rpc/swarm/create` and `rpc/swarm/scale` to each `--scale` size at rate 0, timed
   until `swarm/{name}/progress` says finished.

The subscriber is the benchmark process itself, on the bus's own MQTT transport with a sink
that reads only a batch's `n` and `meta` (no pydantic), so that counting 1M records/s does not
take the CPU the world needs. Over the window, /proc gives each process's CPU, the time its main
thread was runnable but had no core, and what other processes took from the box (a noisy
neighbour shows). Where the time goes: `--sections` times the district servers' sections per
tick (wall and main-thread CPU; timers around the methods, installed by a wrapper around the
same entry point, so the component code is untouched), `--profile DIR` runs them under a CPU
cProfile instead; both cover the window only. `--store-dir` puts the SQLite files elsewhere
(e.g. /dev/shm, to see what the disk costs). The last line is `key=value` pairs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bus import Bus, BusError, BusSettings  # noqa: E402 - needs REPO on the path
from bus.payloads import RpcRequest  # noqa: E402
from bus.transport.base import ConnectParams, Incoming  # noqa: E402
from bus.transport.mqtt import MqttTransport  # noqa: E402
from world.payloads import Bounds, DistrictControl, EntityColumns, SwarmSpec  # noqa: E402

TARGETS = {  # from the issue; "<=" for latencies, ">=" for rates
    "agent_ticks": 1_000_000,
    "delivered": 1.0,
    "latency_p99_ms": 10.0,
    "sync_p99_ms": 50.0,
    "scale_100k_s": 5.0,
    "scale_10k_s": 30.0,
}
DENSITY = 0.01  # entities per unit area: Mesa's boids example (100 on 100 x 100)
SPEED = 10.0  # units per second
CHUNK = 500  # entities per spawn order (as the swarm coordinator sends them)
SNAPSHOT_EVERY = 30  # ticks between region snapshots and persists (the default)
TIMEOUT = 120.0
# `--profile DIR` and `--sections`: the same entry point as `python -m components component NAME`
# under a CPU-time cProfile, or with timers around the district's sections (cheap enough not to
# change what is measured), which SIGUSR1 starts and SIGUSR2 stops and saves: the window only.
PROFILED = """
import cProfile, signal, sys, time
profile = cProfile.Profile(time.process_time)
def _stop(*_):
    profile.disable()
    profile.dump_stats({out!r})
signal.signal(signal.SIGUSR1, lambda *_: profile.enable())
signal.signal(signal.SIGUSR2, _stop)
sys.argv = ["mapleverse", "component", {name!r}]
from components.cli import main
sys.exit(main())
"""
SECTIONS = """
import asyncio, collections, json, signal, sys, time
from bus.batching import BatchPublisher
from bus.client import Bus
from bus.transport import mqtt
from components.district.component import DistrictServer
from components.district.model import District
from components.district.store import DistrictStore
from world.behaviours import BehaviourRegistry
sections = collections.defaultdict(lambda: [0.0, 0.0, 0])  # wall, main-thread CPU, calls
on = [False, 0.0, 0.0]
def timed(cls, name, label):
    orig = getattr(cls, name, None)
    if orig is None:  # renamed since: that section is left out
        return
    if asyncio.iscoroutinefunction(orig):
        async def wrapper(*args, **kwargs):
            if not on[0]:
                return await orig(*args, **kwargs)
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return await orig(*args, **kwargs)
            finally:
                s = sections[label]
                s[0] += time.perf_counter() - wall; s[1] += time.thread_time() - cpu; s[2] += 1
    else:
        def wrapper(*args, **kwargs):
            if not on[0]:
                return orig(*args, **kwargs)
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return orig(*args, **kwargs)
            finally:
                s = sections[label]
                s[0] += time.perf_counter() - wall; s[1] += time.thread_time() - cpu; s[2] += 1
    setattr(cls, name, wrapper)
for cls, name, label in {sections!r}:
    timed(locals()[cls] if cls in locals() else getattr(mqtt, cls), name, label)
def _start(*_):
    sections.clear()
    on[:] = [True, time.perf_counter(), time.thread_time()]
def _stop(*_):
    on[0] = False
    sections["window"] = [time.perf_counter() - on[1], time.thread_time() - on[2], 1]
    with open({out!r}, "w") as f:
        json.dump(sections, f)
signal.signal(signal.SIGUSR1, _start)
signal.signal(signal.SIGUSR2, _stop)
sys.argv = ["mapleverse", "component", {name!r}]
from components.cli import main
sys.exit(main())
"""
# (class, method, label): a label's indentation says which section it is part of
TIMED = [
    ("DistrictServer", "process", "tick (process)"),
    ("DistrictServer", "_apply", "  apply the inbox (spawns, offers, accepts)"),
    ("District", "step", "  step"),
    ("BehaviourRegistry", "step", "    behaviour"),
    ("District", "borders", "    borders: who leaves"),
    ("DistrictStore", "journal", "  journal hand-offs (SQLite)"),
    ("DistrictServer", "_announce", "  send offers and accepts"),
    ("DistrictServer", "_publish_tick", "  publish the tick"),
    ("BatchPublisher", "add_columns", "    encode updates and halo"),
    ("DistrictServer", "_snapshot_region", "    region snapshot (every N ticks)"),
    ("DistrictStore", "snapshot", "    persist the district (every N ticks)"),
    ("DistrictServer", "_report", "    step report"),
    ("BatchPublisher", "_send_all", "send batches (between ticks)"),
    ("Bus", "_open", "decode and validate incoming (halo, offers)"),
    ("_Protocol", "data_received", "socket: read"),
    ("_Protocol", "flush", "socket: write"),
]


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _usage(pids: Mapping[str, int | None]) -> dict[str, tuple[float, ...]]:
    """Per process, in seconds: CPU used by all its threads, by its main thread, and the time
    its main thread waited for a CPU while runnable (schedstat). "box": busy and all CPU."""
    out: dict[str, tuple[float, ...]] = {}
    tick = os.sysconf("SC_CLK_TCK")

    def cpu(path: str) -> float:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    for name, pid in pids.items():
        try:
            waited = int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
            out[name] = (cpu(f"/proc/{pid}/stat"), cpu(f"/proc/{pid}/task/{pid}/stat"), waited)
        except (OSError, IndexError, ValueError):
            continue
    # user nice system idle iowait irq softirq steal
    box = [int(v) / tick for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    out["box"] = (box[0] + box[1] + box[2], box[5] + box[6], box[7], sum(box))
    return out


def _shares(
    before: dict[str, tuple[float, ...]], after: dict[str, tuple[float, ...]], seconds: float
) -> dict[str, tuple[float, ...]]:
    """The same as fractions of the window."""
    return {
        k: tuple((a - b) / seconds for a, b in zip(after[k], before[k], strict=True))
        for k in after
        if k in before
    }


# -- the subscriber: what an operator or an agent sees, read cheaply ------------------------------
@dataclass
class Watch:
    """Everything the benchmark observes on one raw MQTT connection (a `Sink`)."""

    topics: Any  # the topic tree under the world's root
    ticks: dict[int, float] = field(default_factory=dict)  # tick -> sent (orchestrator clock)
    reports: dict[str, list[tuple[float, dict[str, Any]]]] = field(default_factory=dict)
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)  # district -> last report
    records: dict[int, int] = field(default_factory=dict)  # tick -> position records received
    by_region: dict[tuple[int, str], int] = field(default_factory=dict)  # (tick, region) -> same
    last_arrival: dict[int, float] = field(default_factory=dict)  # tick -> last batch's arrival
    latencies: list[tuple[int, float]] = field(default_factory=list)  # (tick, arrival - sent)
    syncs: list[tuple[int, float, float]] = field(default_factory=list)  # tick, arrival, synced
    parts: dict[tuple[str, int], int] = field(default_factory=dict)  # snapshot parts so far
    snapshots: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # world's
    offers: dict[str, float] = field(default_factory=dict)  # batch -> first offer's `sent`
    accepts: dict[str, float] = field(default_factory=dict)  # batch -> accept's arrival
    checked: int = 0
    mismatches: int = 0
    messages: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    kinds: dict[str, str] = field(default_factory=dict)  # topic -> its declaration's name

    def deliver(self, message: Incoming) -> None:
        now = time.time()
        topic, payload = message.topic, message.payload
        if not payload:
            return
        kind = self.kinds.get(topic)
        if kind is None:
            spec = self.topics.resolve(topic)
            kind = self.kinds[topic] = spec.name if spec is not None else ""
        if kind == "region.updates":
            self._update(payload, now)
            return
        data = orjson.loads(payload)["data"]
        if kind == "world.clock":
            self.ticks[data["tick"]] = data["sent"]
        elif kind == "world.step":
            self.reports.setdefault(data["district"], []).append((now, data))
            self.latest[data["district"]] = data
            self.changed.set()
        elif kind == "region.snapshot":  # whole when its last part is in (parts: 500 each)
            key = (data["region"], data["tick"])
            parts = data.get("parts", 1)
            self.parts[key] = self.parts.get(key, 0) + 1
            if self.parts[key] == parts:
                del self.parts[key]
                self.syncs.append((data["tick"], now, data["synced"]))
        elif kind == "world.snapshot":
            self.snapshots.append((now, data))
        elif kind == "world.handoff" and data["op"] == "offer":
            self.offers.setdefault(data["batch"], data["sent"])
        elif kind == "world.handoff":
            self.accepts.setdefault(data["batch"], now)

    def _update(self, payload: bytes, now: float) -> None:
        # `{..."data":{"n":123,"columns":{...},"meta":{"tick":7,"region":"r0-0","sent":...}}}`:
        # read n and meta only; every 50th message is decoded whole to check the shortcut.
        start = payload.find(b'"data":{"n":') + 12
        n = int(payload[start : payload.find(b",", start)])
        meta = orjson.loads(payload[payload.rfind(b',"meta":') + 8 : -2])
        self.messages += 1
        if self.messages % 50 == 1:
            whole = orjson.loads(payload)["data"]
            self.checked += 1
            if whole["n"] != n or len(whole["columns"]["id"]) != n or whole["meta"] != meta:
                self.mismatches += 1
        tick = meta["tick"]
        self.records[tick] = self.records.get(tick, 0) + n
        key = (tick, meta["region"])
        self.by_region[key] = self.by_region.get(key, 0) + n
        self.last_arrival[tick] = now
        self.latencies.append((tick, now - meta["sent"]))

    async def drain(self, window: list[int], quiet: float = 1.0, limit: float = 10.0) -> None:
        """Wait for the position batches of `window` still on their way (a step report can
        overtake them): until all that the reports announced are in, or none came for `quiet`
        seconds."""
        ticks = set(window)
        expected = sum(
            sum(r["regions"].values()) for rs in self.reports.values() for _, r in rs
            if r["tick"] in ticks
        )  # fmt: skip
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if sum(self.records.get(t, 0) for t in window) >= expected:
                return
            seen = self.messages
            await asyncio.sleep(quiet)
            if self.messages == seen:
                return

    def acked(self, pid: int) -> None:
        pass

    def lost(self, exc: BaseException | None) -> None:
        if exc is not None:
            print(f"  the subscriber's connection was lost: {exc!r}", flush=True)

    def entities(self) -> int:
        """Entities owned or in flight (an accepted batch counts twice until its accept)."""
        return sum(r["entities"] + r["pending"] for r in self.latest.values())

    async def until(self, condition: Any, what: str, timeout: float = TIMEOUT) -> None:
        async def wait() -> None:
            while not condition():
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 0.5)

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise RuntimeError(f"timed out waiting for {what}") from None


# -- a world as processes ---------------------------------------------------------------------
@dataclass
class World:
    """The processes of one world under its own topic root on the benchmark's broker."""

    handle: Any
    root: str
    workdir: Path
    env: dict[str, str]
    profile: Path | None = None
    sections: bool = False
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, id: str, extra: dict[str, str] | None = None) -> None:
        """`python -m components component NAME` with MAPLEVERSE_* settings (cf. tests/helpers)."""
        user, password = self.handle.user("component")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAPLEVERSE_")}
        env.update(
            MAPLEVERSE_HOST=self.handle.host,
            MAPLEVERSE_PORT=str(self.handle.port),
            MAPLEVERSE_USERNAME=user,
            MAPLEVERSE_PASSWORD=password,
            MAPLEVERSE_ROOT=self.root,
            MAPLEVERSE_ID=id,
            **self.env,
            **(extra or {}),
        )
        command = [sys.executable, "-m", "components", "component", name]
        if name == "district" and self.profile is not None:
            out = self.profile / f"{self.root}-{id}.prof"
            command[1:] = ["-c", PROFILED.format(out=str(out), name=name)]
        elif name == "district" and self.sections:
            out = self.workdir / f"{self.root}-{id}.sections.json"
            command[1:] = ["-c", SECTIONS.format(out=str(out), name=name, sections=TIMED)]
        with self.log(f"{name}-{id}").open("ab") as log:
            self.procs[f"{name}-{id}"] = subprocess.Popen(
                command, env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

    def log(self, key: str) -> Path:
        return self.workdir / f"{self.root}-{key}.log"

    def check(self) -> None:
        for key, proc in self.procs.items():
            if proc.poll() is not None:
                tail = "\n".join(self.log(key).read_text(errors="replace").splitlines()[-15:])
                raise RuntimeError(f"{key} exited with {proc.returncode}:\n{tail}")

    def metrics_url(self, key: str) -> str | None:
        found = re.search(r"metrics on (http://\S+/metrics)", self.log(key).read_text())
        return found.group(1) if found else None

    def signal(self, sig: int) -> None:
        """Start (SIGUSR1) or stop and save (SIGUSR2) the profiles or section timers."""
        if self.profile is not None or self.sections:
            for key, proc in self.procs.items():
                if key.startswith("district-") and proc.poll() is None:
                    proc.send_signal(sig)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _world_env(n: int, rate: float, db: Path) -> tuple[dict[str, str], tuple[float, ...]]:
    height = max(100.0, round(math.sqrt(n / DENSITY / 2)))
    bounds = (0.0, 0.0, 2 * height, height)
    return {
        "MAPLEVERSE_WORLD_RATE": str(rate),
        "MAPLEVERSE_WORLD_LAYOUT": "2x1",
        "MAPLEVERSE_WORLD_DISTRICTS": "d1,d2",
        "MAPLEVERSE_WORLD_BOUNDS": ",".join(f"{v:g}" for v in bounds),
        "MAPLEVERSE_STORE_URL": f"sqlite+aiosqlite:///{db}",
        "MAPLEVERSE_DISTRICT_HALO": "10",
        "MAPLEVERSE_DISTRICT_SNAPSHOT_EVERY": str(SNAPSHOT_EVERY),
        "MAPLEVERSE_HEARTBEAT_INTERVAL": "1",
        "MAPLEVERSE_METRICS_PORT": "0",
    }, bounds


async def _connect(handle: Any, root: str) -> tuple[Bus, Watch, Any]:
    user, password = handle.user("component")
    bus = Bus(
        BusSettings(
            host=handle.host,
            port=handle.port,
            username=user,
            password=password,
            root=root,
            clean_session=True,
        ),
        kind="bench",
    )
    await bus.start()
    watch = Watch(bus.topics)
    user, password = handle.user("component")
    conn = await MqttTransport().connect(
        ConnectParams(
            host=handle.host,
            port=handle.port,
            client_id=user,
            username=user,
            password=password,
            clean_session=True,
        ),
        watch,
    )
    # filters from topics.yaml: every parameter but the world is a wildcard
    filters = [
        (str(bus.topics[name].build(world="main")), int(bus.topics[name].qos))
        for name in (
            "region.updates",
            "region.snapshot",
            "world.clock",
            "world.step",
            "world.handoff",
            "world.snapshot",
        )
    ]
    granted = await conn.subscribe(filters)
    if any(g == 0x80 for g in granted):
        raise RuntimeError(f"subscriptions refused: {list(zip(filters, granted, strict=True))}")
    return bus, watch, conn


async def _spawn(bus: Bus, swarm: str, n: int, bounds: tuple[float, ...], behaviour: str) -> None:
    """A retained SwarmSpec, then spawn orders to the district that owns each spot."""
    import numpy as np

    x0, y0, x1, y1 = bounds
    t = bus.topics
    spec = SwarmSpec(
        name=swarm,
        behaviour=behaviour,
        params={"speed": SPEED},
        bounds=Bounds(x0=x0, y0=y0, x1=x1, y1=y1),
        size=n,
        max_size=max(n, 100_000),
    )
    await bus.publish(t["swarm.config"].build(swarm=swarm), spec)
    rng = np.random.default_rng(42)
    pos = np.round(np.column_stack((rng.uniform(x0, x1, n), rng.uniform(y0, y1, n))), 3)
    angle = rng.uniform(0, 2 * math.pi, n)
    vel = np.round(np.column_stack((np.cos(angle), np.sin(angle))), 4)
    middle = (x0 + x1) / 2
    for district, rows in (("d1", pos[:, 0] < middle), ("d2", pos[:, 0] >= middle)):
        where = np.flatnonzero(rows)
        topic = t["world.control"].build(world="main", district=district)
        for start in range(0, len(where), CHUNK):
            r = where[start : start + CHUNK]
            entities = EntityColumns.model_construct(
                id=[f"{swarm}-{k:06d}" for k in r.tolist()],
                x=pos[r, 0].tolist(),
                y=pos[r, 1].tolist(),
                vx=vel[r, 0].tolist(),
                vy=vel[r, 1].tolist(),
                swarm=[swarm] * len(r),
                ov=[0] * len(r),
            )
            await bus.publish(topic, DistrictControl(op="spawn", entities=entities))


def _broker_drops(handle: Any) -> int:
    """How often Mosquitto's log says it dropped messages (a client's queue full, too large)."""
    try:
        text = handle.log_path.read_text(errors="replace")
    except OSError:
        return 0
    return text.count("being dropped") + text.count("too large")


def _scrape(urls: list[str]) -> dict[float, float]:
    """The hand-off latency histogram summed over the districts: upper bound -> count."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[float, float] = {}
    for url in urls:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            if family.name != "mapleverse_handoff_latency_seconds":
                continue
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    le = float(sample.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + sample.value
    return buckets


def _histogram_quantile(buckets: dict[float, float], q: float) -> float:
    """Prometheus's histogram_quantile over cumulative buckets (linear inside a bucket)."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        if buckets[le] >= rank:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * (rank - below) / max(buckets[le] - below, 1e-12)
        lower, below = le, buckets[le]
    return lower


# -- one measured world -----------------------------------------------------------------------------
async def measure(
    handle: Any,
    workdir: Path,
    root: str,
    n: int,
    rate: float,
    behaviour: str,
    args: argparse.Namespace,
    scale: list[int] | None = None,
) -> dict[str, Any]:
    env, bounds = _world_env(n, rate, (args.store_dir or workdir) / f"{root}.db")
    world = World(handle, root, workdir, env, args.profile, args.sections)
    bus, watch, conn = await _connect(handle, root)
    try:
        world.start("orchestrator", "main")
        for d in ("d1", "d2"):
            world.start("district", d)
        if scale:
            world.start("swarm", "main")
        await watch.until(lambda: {"d1", "d2"} <= set(watch.latest), "both districts to step")
        started = time.monotonic()
        await _spawn(bus, behaviour, n, bounds, behaviour)
        await watch.until(lambda: watch.entities() >= n, f"{n} entities to be reported")
        spawned = time.monotonic() - started
        await asyncio.sleep(args.warmup)
        world.check()
        urls = [u for u in (world.metrics_url(f"district-{d}") for d in ("d1", "d2")) if u]
        before = await asyncio.to_thread(_scrape, urls)
        pids = {k: p.pid for k, p in world.procs.items()}
        pids.update(mosquitto=handle.pid, subscriber=os.getpid())
        usage0 = _usage(pids)
        drops0 = _broker_drops(handle)
        world.signal(signal.SIGUSR1)
        t0 = time.time()
        await asyncio.sleep(args.seconds)
        t1 = time.time()
        world.signal(signal.SIGUSR2)
        usage1 = _usage(pids)
        after = await asyncio.to_thread(_scrape, urls)
        window = sorted(t for t, sent in watch.ticks.items() if t0 <= sent < t1)
        if not window:
            raise RuntimeError("no tick was sent in the window")
        last = window[-1]
        await watch.until(
            lambda: all(r["tick"] >= last for r in watch.latest.values()),
            f"both districts to report tick {last}",
        )
        await watch.drain(window)
        world.check()
        result = _results(watch, window, (t0, t1), rate, before, after)
        if args.sections:
            result["sections"] = {
                d: orjson.loads(path.read_bytes())
                for d in ("d1", "d2")
                if (path := workdir / f"{root}-{d}.sections.json").exists()
            }
        result.update(
            broker_drops=_broker_drops(handle) - drops0,
            n=n,
            rate=rate,
            behaviour=behaviour,
            spawn_s=spawned,
            cpu=_shares(usage0, usage1, t1 - t0),
        )
        if scale:
            result["scale"] = await _scale(bus, watch, scale)
        return result
    finally:
        await conn.close()
        await bus.close()
        world.stop()


def _results(
    watch: Watch,
    window: list[int],
    span: tuple[float, float],
    rate: float,
    before: dict[float, float],
    after: dict[float, float],
) -> dict[str, Any]:
    ticks = set(window)
    t0, t1 = span
    seconds = t1 - t0
    reports = [(at, r) for rs in watch.reports.values() for at, r in rs if r["tick"] in ticks]
    durations = [r["duration"] for _, r in reports]
    expected = sum(sum(r["regions"].values()) for _, r in reports)
    received = sum(watch.records.get(t, 0) for t in window)
    short = [
        f"tick {r['tick']} {region}: {watch.by_region.get((r['tick'], region), 0)} of {count}"
        for _, r in reports
        for region, count in r["regions"].items()
        if watch.by_region.get((r["tick"], region), 0) != count
    ]
    lat = [v for t, v in watch.latencies if t in ticks]
    plain = [v for t, v in watch.latencies if t in ticks and t % SNAPSHOT_EVERY not in (0, 1)]
    tick_lat = [watch.last_arrival[t] - watch.ticks[t] for t in window if t in watch.last_arrival]
    syncs = [
        (arrival - synced, arrival - watch.ticks.get(t, arrival))
        for t, arrival, synced in watch.syncs
        if t in ticks
    ]
    handoffs = [
        watch.accepts[b] - sent
        for b, sent in watch.offers.items()
        if b in watch.accepts and t0 <= sent < t1
    ]
    dilations = [s["dilation"] for at, s in watch.snapshots if t0 <= at <= t1 + 1.0]
    window_hist = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in after}
    # tick t's work spans from its send to the next tick's: the window's ticks but the last
    span = watch.ticks[window[-1]] - watch.ticks[window[0]]
    stepped = sum(r["stepped"] for _, r in reports if r["tick"] != window[-1])
    per_second = [0] * max(1, round(seconds))
    for t in window:
        per_second[min(len(per_second) - 1, int(watch.ticks[t] - t0))] += 1
    return {
        "ticks": len(window),
        "tick_rate": (len(window) - 1) / span if span > 0 else math.nan,
        "per_second": per_second,
        "agent_ticks": stepped / span if span > 0 else math.nan,
        "dilation": min(dilations) if dilations else math.nan,
        "dilation_mean": sum(dilations) / len(dilations) if dilations else math.nan,
        "dur_p50": _quantile(durations, 0.5),
        "dur_p99": _quantile(durations, 0.99),
        "budget": 1.0 / rate,
        "expected": expected,
        "received": received,
        "delivered": received / expected if expected else math.nan,
        "short": short,
        "lat_p50": _quantile(lat, 0.5),
        "lat_p99": _quantile(lat, 0.99),
        "lat_n": len(lat),
        "lat_plain_p99": _quantile(plain, 0.99),
        "tick_lat_p99": _quantile(tick_lat, 0.99),
        "sync_p50": _quantile([s for s, _ in syncs], 0.5),
        "sync_p99": _quantile([s for s, _ in syncs], 0.99),
        "sync_tick_p99": _quantile([s for _, s in syncs], 0.99),
        "sync_n": len(syncs),
        "handoff_p50": _quantile(handoffs, 0.5),
        "handoff_p99": _quantile(handoffs, 0.99),
        "handoff_n": len(handoffs),
        "hist_p50": _histogram_quantile(window_hist, 0.5),
        "hist_p99": _histogram_quantile(window_hist, 0.99),
        "hist_n": window_hist.get(math.inf, 0.0),
        "checked": watch.checked,
        "mismatches": watch.mismatches,
    }


async def _scale(bus: Bus, watch: Watch, sizes: list[int]) -> dict[int, tuple[float, int]]:
    """Create a swarm per size and scale it there at once: seconds until the progress says
    finished, and the members the districts' step reports counted then."""
    t = bus.topics
    out: dict[int, tuple[float, int]] = {}
    for size in sizes:
        name = f"scale{size}"
        rpc = t["rpc.request"]
        progress = await bus.subscribe(t["swarm.progress"].build(swarm=name))
        reply = await bus.request(
            rpc.build(service="swarm", method="create"),
            RpcRequest(args={"name": name, "behaviour": "drift", "size": 0, "max_size": size}),
            timeout=30,
        )
        if not reply.payload.ok:
            raise RuntimeError(f"swarm create: {reply.payload.error}")
        started = time.monotonic()
        reply = await bus.request(
            rpc.build(service="swarm", method="scale"),
            RpcRequest(args={"name": name, "target": size, "rate": 0}),
            timeout=30,
        )
        if not reply.payload.ok:
            raise RuntimeError(f"swarm scale: {reply.payload.error}")
        request = reply.payload.result["request"]
        while True:
            msg = await progress.get(timeout=TIMEOUT)
            p = msg.payload
            if p.request == request and p.finished:
                if p.error:
                    raise RuntimeError(f"scale to {size}: {p.error}")
                seconds = time.monotonic() - started
                counted = sum(r["swarms"].get(name, 0) for r in watch.latest.values())
                out[size] = (seconds, counted)
                break
        await progress.close()
    return out


# -- the driver -----------------------------------------------------------------------------------
def _loads(text: str) -> list[tuple[int, float]]:
    out = []
    for part in text.split(","):
        n, _, rate = part.partition("@")
        out.append((int(n), float(rate)))
    return out


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.2f}"


def _print_world(r: dict[str, Any]) -> None:
    print(
        f"  {r['n']:,} {r['behaviour']} at {r['rate']:g} Hz: {r['agent_ticks']:>12,.0f} "
        f"agent-ticks/s, {r['tick_rate']:.1f} ticks/s of {r['rate']:g} (dilation mean "
        f"{r['dilation_mean']:.2f}, min {r['dilation']:.2f}), tick p50 {_ms(r['dur_p50'])} ms p99 {_ms(r['dur_p99'])} ms "
        f"(budget {_ms(r['budget'])} ms)"
    )
    print(
        f"      positions received {r['received']:,} of {r['expected']:,} "
        f"({r['delivered'] * 100:.2f} %; {r['mismatches']} of {r['checked']} checked batches "
        f"disagreed); spawned in {r['spawn_s']:.1f} s; ticks in each second: "
        + " ".join(str(k) for k in r["per_second"])
    )
    if r["short"]:
        print(f"      positions missing: {'; '.join(r['short'][:5])}")
    if r.get("broker_drops"):
        print(f"      Mosquitto logged {r['broker_drops']} times that it dropped messages")
    print(
        f"      update latency p50 {_ms(r['lat_p50'])} ms p99 {_ms(r['lat_p99'])} ms "
        f"({r['lat_n']} batches), p99 {_ms(r['lat_plain_p99'])} ms without the snapshot "
        f"ticks; tick sent -> last position p99 {_ms(r['tick_lat_p99'])} ms"
    )
    print(
        f"      region sync p50 {_ms(r['sync_p50'])} ms p99 {_ms(r['sync_p99'])} ms, tick -> "
        f"snapshot p99 {_ms(r['sync_tick_p99'])} ms ({r['sync_n']} snapshots)"
    )
    print(
        f"      hand-off offer -> accept p50 {_ms(r['handoff_p50'])} ms p99 "
        f"{_ms(r['handoff_p99'])} ms ({r['handoff_n']} batches); district histogram p50 "
        f"{_ms(r['hist_p50'])} ms p99 {_ms(r['hist_p99'])} ms ({r['hist_n']:.0f})"
    )
    shares = dict(r["cpu"])
    tasks, irq, steal, cores = shares.pop("box", (math.nan,) * 4)
    ours = sum(v[0] for v in shares.values())
    cpu = ", ".join(
        f"{k.removeprefix('district-')} {used * 100:.0f}%"
        + (f" ({(used - main) * 100:.0f}% in other threads)" if used - main >= 0.01 else "")
        + f" waited {waited * 100:.0f}%"
        for k, (used, main, waited) in shares.items()
    )
    print(f"      CPU of one core, and main thread runnable but waiting for one: {cpu}")
    others, idle = max(0.0, tasks - ours), cores - tasks - irq - steal
    print(
        f"      the box ({cores * 100:.0f}%): ours {ours * 100:.0f}%, other processes "
        f"{others * 100:.0f}%, interrupts {irq * 100:.0f}%, steal {steal * 100:.0f}%, "
        f"idle {idle * 100:.0f}%",
        flush=True,
    )


def _print_sections(sections: dict[str, dict[str, list[float]]]) -> None:
    """Per tick, wall and main-thread CPU of each timed section of each district server."""
    districts = sorted(sections)
    if not districts:
        print("  (no section timings)")
        return
    ticks = {d: max(1, int(sections[d].get("  publish the tick", [0, 0, 1])[2])) for d in districts}
    head = "".join(f"{d + ' wall':>10}{d + ' CPU':>9}" for d in districts)
    print(f"  {'ms per tick, by section (window)':46}{head}")
    for _, _, label in [(None, None, "window"), *TIMED]:
        row = ""
        for d in districts:
            wall, cpu, _ = sections[d].get(label, [0.0, 0.0, 0])
            row += f"{wall / ticks[d] * 1000:10.2f}{cpu / ticks[d] * 1000:9.2f}"
        name = "whole window (main thread)" if label == "window" else label
        print(f"    {name:44}{row}")
    print("    ticks: " + ", ".join(f"{d} {ticks[d]}" for d in districts), flush=True)


def _print_profile(path: Path) -> None:
    import pstats

    if not path.exists():
        print(f"  (no profile at {path})")
        return
    print(f"  where {path.name} spent its time (cProfile, top 25 by own time):")
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(25)


async def run(handle: Any, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every world in turn; a world that fails is reported and the others still run."""
    results: dict[str, Any] = {}
    worlds: list[tuple[str, int, float, str, list[int] | None]] = []
    if args.moderate:
        n, rate = _loads(args.moderate)[0]
        worlds.append(("moderate", n, rate, "drift", _sizes(args.scale)))
    for n, rate in _loads(args.loads):
        for behaviour in args.behaviours.split(","):
            worlds.append((f"{n}@{rate:g}/{behaviour}", n, rate, behaviour, None))
    for number, (key, n, rate, behaviour, scale) in enumerate(worlds, 1):
        what = "moderate world" if key == "moderate" else "box load"
        print(f"{what}: {n:,} {behaviour} at {rate:g} Hz", flush=True)
        try:
            r = await measure(handle, workdir, f"w{number}", n, rate, behaviour, args, scale)
        except (RuntimeError, BusError, TimeoutError) as exc:
            print(f"  FAILED: {exc!r}", flush=True)
            continue
        _print_world(r)
        for size, (seconds, counted) in r.get("scale", {}).items():
            print(
                f"      swarm scale 0 -> {size:,} at once: {seconds:.2f} s "
                f"(the step reports then counted {counted:,})",
                flush=True,
            )
        if args.profile:
            _print_profile(args.profile / f"w{number}-d1.prof")
        if args.sections:
            _print_sections(r["sections"])
        results[key] = r
    return results


def _sizes(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, r in results.items():
        tag = key.replace("@", "at").replace("/", "_").replace(".", "_")
        out[f"{tag}_agent_ticks"] = round(r["agent_ticks"])
        out[f"{tag}_ticks_per_s"] = round(r["tick_rate"], 1)
        out[f"{tag}_dilation_min"] = round(r["dilation"], 3)
        out[f"{tag}_tick_p99_ms"] = round(r["dur_p99"] * 1000, 2)
        out[f"{tag}_delivered"] = round(r["delivered"], 4)
        out[f"{tag}_latency_p50_ms"] = round(r["lat_p50"] * 1000, 2)
        out[f"{tag}_latency_p99_ms"] = round(r["lat_p99"] * 1000, 2)
        out[f"{tag}_sync_p99_ms"] = round(r["sync_p99"] * 1000, 2)
        out[f"{tag}_handoff_p50_ms"] = round(r["handoff_p50"] * 1000, 2)
        out[f"{tag}_handoff_p99_ms"] = round(r["handoff_p99"] * 1000, 2)
        for size, (seconds, _) in r.get("scale", {}).items():
            out[f"scale_{size}_s"] = round(seconds, 2)
    return out


def _verdicts(results: dict[str, Any]) -> None:
    checks: list[tuple[str, float, str, float]] = []
    for key, r in results.items():
        if key != "moderate":
            checks += [
                (f"{key} agent-ticks/s", r["agent_ticks"], ">=", TARGETS["agent_ticks"]),
                (f"{key} positions delivered", r["delivered"], ">=", TARGETS["delivered"]),
                (f"{key} tick p99 ms", r["dur_p99"] * 1000, "<=", r["budget"] * 1000),
            ]
        checks += [
            (f"{key} update latency p99 ms", r["lat_p99"] * 1000, "<", TARGETS["latency_p99_ms"]),
            (f"{key} region sync p99 ms", r["sync_p99"] * 1000, "<", TARGETS["sync_p99_ms"]),
        ]
        for size, (seconds, _) in r.get("scale", {}).items():
            target = TARGETS["scale_100k_s"] if size >= 100_000 else TARGETS["scale_10k_s"]
            checks.append((f"swarm scale to {size:,} s", seconds, "<", target))
    for what, value, op, target in checks:
        if math.isnan(value):
            verdict = "NOT MEASURED"
        else:
            ok = {">=": value >= target, "<=": value <= target, "<": value < target}[op]
            verdict = "met" if ok else "MISSED"
        print(f"  {what:48} {value:>14,.3f}  target {op} {target:g}  {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loads", default="20000@60,100000@10", help="N@RATE,...")
    parser.add_argument("--behaviours", default="drift,flocking")
    parser.add_argument(
        "--moderate", default="2000@20", help="N@RATE of the light world ('' to leave it out)"
    )
    parser.add_argument("--scale", default="10000,100000", help="swarm sizes to scale to")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="one box load, short windows")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--profile", type=Path, help="cProfile the district servers into DIR")
    how.add_argument(
        "--sections", action="store_true", help="time the district servers' sections per tick"
    )
    parser.add_argument(
        "--store-dir", type=Path, help="where the worlds' SQLite files go (default: a temp dir)"
    )
    args = parser.parse_args()
    if args.quick:
        args.loads, args.behaviours, args.scale = "20000@60", "drift", "10000"
        args.seconds, args.warmup = 3.0, 1.0
    if args.profile:
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)

    import brokers

    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        print("needs mosquitto (make services)")
        return 1

    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        if args.store_dir:  # a directory of our own in there, removed at the end
            args.store_dir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(dir=args.store_dir))
            )
        handle = brokers.start_deployment_mosquitto(Path(tmp))
        try:
            print(
                f"Mosquitto from mosquitto/ on {handle.host}:{handle.port}; {os.cpu_count()} "
                f"cores; {args.seconds:g} s windows after {args.warmup:g} s warm-up"
            )
            import uvloop

            results = uvloop.run(run(handle, Path(tmp), args))
        finally:
            handle.close()
    print(f"targets ({time.monotonic() - started:.0f} s in all):")
    _verdicts(results)
    print(" ".join(f"{k}={v}" for k, v in _summary(results).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
