"""The mesh on a real broker: commit latency of a state update, and failover after kill -9.

    .venv/bin/python benchmarks/mesh.py [--updates 500] [--trials 30] [--store URL]

Starts Mosquitto from the project's config (mosquitto/, via tests/brokers.py, with the
deployment's persistence) and three mesh managers as their own processes (`mapleverse component mesh-manager`), leader heartbeats every
100 ms and election timeouts of 250-450 ms, one SQLite store (or `--store`).

* **Commit latency**: a worker sends `--updates` state updates one after another; each is timed
  from the request to the reply, which the leader sends once the entry is committed on a
  majority, persisted and applied. The baseline, measured in the same run on the same broker, is
  a bare QoS 1 request/reply round trip (the bus to itself): the ratio is what Raft adds.
* **Failover**: `--trials` times, the leader is killed with SIGKILL while the worker keeps
  writing; timed from the kill to the new leader's retained record (`elected`) and to the first
  update committed after the kill (`writable`). The killed manager is restarted from its store
  and caught up before the next trial. The configured election timeout is the reference.

The last line is `key=value` pairs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bus import Bus, BusError, BusSettings  # noqa: E402 - needs REPO on the path
from bus.payloads import RpcReply, RpcRequest  # noqa: E402
from components.mesh_worker import MeshClient  # noqa: E402
from mesh.payloads import MeshLeader, WorkerBeat  # noqa: E402

MANAGERS = ("m1", "m2", "m3")
HEARTBEAT = 0.1
ELECTION = (0.25, 0.45)  # the defaults (MAPLEVERSE_MESH_ELECTION_MIN/MAX)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _ms(values: list[float]) -> str:
    return (
        f"p50 {_quantile(values, 0.5) * 1000:.2f} ms, p99 {_quantile(values, 0.99) * 1000:.2f} ms, "
        f"max {max(values) * 1000:.2f} ms (n={len(values)})"
    )


class Cluster:
    def __init__(self, handle: Any, root: str, tmp: Path, store: str) -> None:
        from helpers import spawn_component

        self._spawn = spawn_component
        self.handle = handle
        self.root = root
        self.tmp = tmp
        self.store = store
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        # one broker user per manager, as a deployment has: a restarted manager resumes its
        # own session instead of leaving a dead one behind that collects its messages
        self.users = {node: handle.user("component") for node in MANAGERS}
        self.leaders: list[tuple[float, MeshLeader]] = []
        self.changed = asyncio.Event()

    def spawn(self, node: str) -> None:
        env = {
            "MAPLEVERSE_MESH": "bench",
            "MAPLEVERSE_MESH_MANAGERS": ",".join(MANAGERS),
            "MAPLEVERSE_MESH_HEARTBEAT": str(HEARTBEAT),
            "MAPLEVERSE_MESH_ELECTION_MIN": str(ELECTION[0]),
            "MAPLEVERSE_MESH_ELECTION_MAX": str(ELECTION[1]),
            "MAPLEVERSE_STORE_URL": self.store,
            "MAPLEVERSE_USERNAME": self.users[node][0],
            "MAPLEVERSE_PASSWORD": self.users[node][1],
        }
        self.procs[node] = self._spawn(
            self.handle, "mesh-manager", root=self.root, id=node, log_dir=self.tmp,
            heartbeat_interval=1.0, reconnect_min=0.05, reconnect_max=0.3, env=env,
        )  # fmt: skip

    def leader(self) -> MeshLeader | None:
        return max((r for _, r in self.leaders), key=lambda r: r.term, default=None)

    async def follow(self, bus: Bus) -> None:
        async for msg in bus.subscribe(bus.topics["mesh.leader"].build(mesh="bench")):
            self.leaders.append((time.monotonic(), msg.payload))
            self.changed.set()

    async def wait_leader(self, above: int, timeout: float = 30.0) -> tuple[float, MeshLeader]:
        async with asyncio.timeout(timeout):
            while True:
                for at, record in self.leaders:
                    if record.term > above:
                        return at, record
                self.changed.clear()
                await self.changed.wait()

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            if proc.poll() is None:
                proc.kill()


async def _beat(bus: Bus) -> None:
    topic = bus.topics["mesh.worker.heartbeat"].build(mesh="bench", worker="bench")
    seq = 0
    while True:
        with contextlib.suppress(BusError):
            await bus.publish(
                topic,
                WorkerBeat(mesh="bench", worker="bench", seq=seq, sent=time.time(), interval=0.1),
            )
        seq += 1
        await asyncio.sleep(0.1)


async def _baseline(bus: Bus, n: int) -> list[float]:
    """Bare QoS 1 request/reply round trips through the broker, bus to itself."""
    topic = bus.topics["rpc.request"].build(service="bench-echo", method="ping")
    sub = bus.subscribe(topic)
    await sub.start()

    async def echo() -> None:
        async for msg in sub:
            await bus.reply(msg, RpcReply(ok=True, result=msg.payload.args))

    task = asyncio.create_task(echo())
    times = []
    try:
        for i in range(n):
            started = time.perf_counter()
            await bus.request(topic, RpcRequest(args={"i": i}), timeout=5)
            times.append(time.perf_counter() - started)
    finally:
        task.cancel()
    return times


async def run(handle: Any, tmp: Path, args: argparse.Namespace) -> dict[str, float]:
    user, password = handle.user("component")
    root = "bench"
    settings = BusSettings(
        host=handle.host, port=handle.port, username=user, password=password, root=root,
        reconnect_min=0.05, reconnect_max=0.3,
    )  # fmt: skip
    store = args.store or f"sqlite+aiosqlite:///{tmp}/mesh.db"
    cluster = Cluster(handle, root, tmp, store)
    results: dict[str, float] = {}
    client: MeshClient | None = None
    async with Bus(settings, kind="bench") as bus:
        follower = asyncio.create_task(cluster.follow(bus))
        beats = asyncio.create_task(_beat(bus))
        try:
            for node in MANAGERS:
                cluster.spawn(node)
            await cluster.wait_leader(0)
            client = MeshClient(bus, "bench", "bench", attempt_timeout=0.3, deadline=30)
            assert (await client.call("join"))["ok"]
            added = await client.call("add-agent", agent="counter", state={})
            version = (
                1
                if added.get("ok")
                else (await client.call("join"))["agents"]["counter"]["version"]
            )

            async def update() -> float:
                nonlocal version
                started = time.perf_counter()
                result = await client.call(
                    "update", agent="counter", base=version, patch={"v": version}
                )
                if not result.get("ok"):
                    raise RuntimeError(f"update refused: {result}")
                version = result["version"]
                return time.perf_counter() - started

            for _ in range(20):  # warm-up
                await update()
            base = await _baseline(bus, args.updates)
            commits = [await update() for _ in range(args.updates)]
            print(f"baseline QoS 1 round trip: {_ms(base)}")
            print(f"commit latency (3 managers): {_ms(commits)}")
            ratio = _quantile(commits, 0.5) / _quantile(base, 0.5)
            print(f"  p50 ratio to the bare round trip: {ratio:.1f}x")
            results["commit_p50_ms"] = _quantile(commits, 0.5) * 1000
            results["commit_p99_ms"] = _quantile(commits, 0.99) * 1000
            results["roundtrip_p50_ms"] = _quantile(base, 0.5) * 1000

            elected: list[float] = []
            writable: list[float] = []
            for trial in range(args.trials):
                leader = cluster.leader()
                assert leader is not None
                for _ in range(5):
                    await update()
                killed_at = time.monotonic()
                cluster.procs[leader.leader].send_signal(signal.SIGKILL)
                print(f"  trial {trial + 1:2d}: kill at {time.time():.3f}", flush=True)
                await update()  # returns once a new leader committed it
                writable.append(time.monotonic() - killed_at)
                at, new = await cluster.wait_leader(leader.term)
                elected.append(at - killed_at)
                cluster.procs[leader.leader].wait(5)
                cluster.spawn(leader.leader)
                await asyncio.sleep(1.5)  # it starts, loads its log and catches up
                print(
                    f"  trial {trial + 1:2d}: {leader.leader} killed, {new.leader} elected in "
                    f"{elected[-1] * 1000:.0f} ms (term {new.term}), writable in "
                    f"{writable[-1] * 1000:.0f} ms",
                    flush=True,
                )
            print(f"failover, kill -9 -> new leader announced: {_ms(elected)}")
            print(f"failover, kill -9 -> first update committed: {_ms(writable)}")
            print(f"  election timeout {ELECTION[0] * 1000:.0f}-{ELECTION[1] * 1000:.0f} ms")
            results["failover_p50_ms"] = _quantile(elected, 0.5) * 1000
            results["failover_p99_ms"] = _quantile(elected, 0.99) * 1000
            results["writable_p50_ms"] = _quantile(writable, 0.5) * 1000
            results["writable_p99_ms"] = _quantile(writable, 0.99) * 1000
        finally:
            follower.cancel()
            beats.cancel()
            cluster.close()
            if client is not None:
                await client.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=500, help="timed updates (500)")
    parser.add_argument("--trials", type=int, default=30, help="failover trials (30)")
    parser.add_argument("--store", default="", help="store URL (default: a SQLite file)")
    parser.add_argument("--logs", type=Path, help="keep the managers' logs in this directory")
    args = parser.parse_args()
    import brokers

    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        print("needs mosquitto (make services)")
        return 1

    with tempfile.TemporaryDirectory() as tmp:
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            tmp = str(args.logs.resolve())
        handle = brokers.start_deployment_mosquitto(Path(tmp))
        try:
            print(
                f"Mosquitto from mosquitto/ on {handle.host}:{handle.port}; {os.cpu_count()} cores"
            )
            import uvloop

            results = uvloop.run(run(handle, Path(tmp), args))
        finally:
            handle.close()
    targets = [
        ("commit latency p99 ms", results["commit_p99_ms"], "<", 10.0),
        ("failover p50 ms", results["failover_p50_ms"], "<", 500.0),
        ("failover p99 ms", results["failover_p99_ms"], "<", 1000.0),
    ]
    for name, value, op, target in targets:
        met = value < target
        print(f"  {name:<28} {value:10.2f}  target {op} {target:g}  {'met' if met else 'MISSED'}")
    print(" ".join(f"{k}={v:.2f}" for k, v in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
