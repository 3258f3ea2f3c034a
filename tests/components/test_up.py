"""`mapleverse up` end to end: what a newcomer sees after `make run`.

The supervisor starts the embedded broker and the default components as child processes; the
printed credentials work; births, heartbeats and the health summary appear under `mv/sys/`;
a component killed with -9 shows its death and comes back; Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokers import free_port

from bus import Bus, BusSettings, ConnectionFailed
from bus.payloads import AgentState, HealthSummary, Status

pytestmark = pytest.mark.slow


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, object], list[str]]]:
    port, ws = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "components", "--state-dir", str(tmp_path / "state"), "up",
         "--port", str(port), "--ws-port", str(ws)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MAPLEVERSE_")},
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "stop       Ctrl-C" in line:
            break
    banner = "".join(lines)
    try:
        assert "Mapleverse is up." in banner, banner
        creds = json.loads((tmp_path / "state" / "credentials.json").read_text())
        yield proc, creds, lines
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _operator(creds: dict[str, object]) -> BusSettings:
    cli = creds["cli"]
    assert isinstance(cli, dict)
    return BusSettings(
        host=str(creds["host"]),
        port=int(str(creds["port"])),
        username=cli["username"],
        password=cli["password"],
        clean_session=True,
    )


def test_up_prints_a_working_mosquitto_sub_line(
    up: tuple[subprocess.Popen[str], dict[str, object], list[str]],
) -> None:
    _proc, creds, lines = up
    watch = next(line for line in lines if "mosquitto_sub" in line)
    assert f"-p {creds['port']}" in watch and "-i operator" in watch
    argv = re.findall(r"'[^']*'|\S+", watch.split("watch", 1)[1].strip())
    argv = [a.strip("'") for a in argv]
    if not os.path.exists("/usr/bin/mosquitto_sub"):
        pytest.skip("mosquitto_sub not installed")
    out = subprocess.run([*argv, "-C", "3", "-W", "10"], capture_output=True, text=True, timeout=20)
    topics = [line.split(" ", 1)[0] for line in out.stdout.splitlines()]
    assert len(topics) == 3, out.stderr
    assert all(t.startswith("mv/sys/") for t in topics)


async def test_kill_shows_death_then_the_supervisor_restarts_it(
    up: tuple[subprocess.Popen[str], dict[str, object], list[str]],
) -> None:
    proc, creds, _ = up
    async with Bus(_operator(creds), kind="test") as bus:
        status = await bus.subscribe(bus.topics.component.status(kind="echo", id="main"))
        health = await bus.subscribe(bus.topics.health())
        first = await _next_status(status, "online")
        assert first.pid is not None
        both = {("echo", "online"), ("health", "online")}
        # the monitor's table fills as births come in, in any order (there are a dozen)
        summary = await _until(health, lambda h: both <= {(c.kind, c.state) for c in h.components})
        assert summary.online >= 2
        os.kill(first.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        death = await _next_status(status, "offline")
        assert death.epoch == first.epoch
        assert time.monotonic() - killed_at < 1.0
        again = await _next_status(status, "online", timeout=15)
        assert again.pid != first.pid and again.epoch > first.epoch
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 0


async def _next_status(sub, state: str, timeout: float = 10) -> Status:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while True:
            msg = await sub.get()
            if isinstance(msg.payload, Status) and msg.payload.state == state:
                return msg.payload


async def _until(sub, predicate, timeout: float = 15) -> HealthSummary:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while True:
            msg = await sub.get()
            if predicate(msg.payload):
                return msg.payload  # type: ignore[no-any-return]


async def test_users_add_gives_an_agent_a_working_login(
    up: tuple[subprocess.Popen[str], dict[str, object], list[str]], tmp_path: Path
) -> None:
    _proc, creds, _ = up
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "components", "--state-dir", str(tmp_path / "state"), "users",
        "add", "alice", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    password = re.search(r"password (\S+)", out.decode())
    assert password is not None and "not running" not in out.decode()
    settings = BusSettings(
        host=str(creds["host"]),
        port=int(str(creds["port"])),
        username="alice",
        password=password.group(1),
        clean_session=True,
    )
    async with asyncio.timeout(10):
        while True:  # the broker rereads its users on SIGHUP; the first try may precede it
            try:
                async with Bus(settings, kind="agent") as alice:
                    await alice.publish(
                        alice.topics.agent.state(agent="alice"), AgentState(status="here")
                    )
                    break
            except ConnectionFailed:
                await asyncio.sleep(0.05)


def _cli(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "components", "--state-dir", str(tmp_path / "state"), *args],
        capture_output=True, text=True, timeout=timeout,
        env={k: v for k, v in os.environ.items() if not k.startswith("MAPLEVERSE_")},
    )  # fmt: skip


async def test_the_default_world_is_a_live_city_with_drones_and_hosted_agents(
    up: tuple[subprocess.Popen[str], dict[str, object], list[str]], tmp_path: Path
) -> None:
    _proc, creds, lines = up
    assert any("world      mosquitto_sub" in line for line in lines)
    async with Bus(_operator(creds)) as bus:
        t = bus.topics
        snapshots = await bus.subscribe(t["world.snapshot"].build(world="main"))
        snap = await _until(snapshots, lambda s: s.tick > 5 and s.entities >= 300, timeout=40)
        assert {r.id for r in snap.regions} == {"harbour", "old-town", "market", "uptown"}
        assert {r.district for r in snap.regions} == {"d1", "d2"}
        drones = await bus.subscribe(t["swarm.status"].build(swarm="drones"))
        status = await _until(drones, lambda s: s.agents >= 300, timeout=40)
        assert status.behaviour == "flocking" and status.state == "running"
        acts = await bus.subscribe(t["agent.act"].build(agent="+"))
        act = await acts.get(timeout=20)
        assert act.params["agent"].startswith(("wanderer-", "greeter-"))
        updates = await bus.subscribe(t["region.updates"].build(world="main", region="harbour"))
        batch = await updates.get(timeout=10)
        assert "drones" in batch.payload.columns["swarm"] or batch.payload.n == 0
    # the operations, as a newcomer types them
    listing = await asyncio.to_thread(_cli, tmp_path, "swarm", "list")
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"^drones\s+flocking\s+\w+\s+3\d\d\s", listing.stdout, re.M), listing.stdout
    grow = await asyncio.to_thread(_cli, tmp_path, "swarm", "scale", "drones", "500")
    assert grow.returncode == 0, grow.stderr
    assert "500/500 100.0%" in grow.stdout, grow.stdout
    world = await asyncio.to_thread(_cli, tmp_path, "world", "status")
    assert world.returncode == 0 and "harbour" in world.stdout and "tick" in world.stdout
    unknown = await asyncio.to_thread(_cli, tmp_path, "swarm", "status", "nope")
    assert unknown.returncode == 1 and "unknown swarm 'nope'" in unknown.stderr
    nowhere = await asyncio.to_thread(_cli, tmp_path, "region", "show", "atlantis")
    assert nowhere.returncode == 1 and "unknown region 'atlantis'" in nowhere.stderr
    paused = await asyncio.to_thread(_cli, tmp_path, "world", "pause")
    assert paused.returncode == 0 and "paused at tick" in paused.stdout
    rate = await asyncio.to_thread(_cli, tmp_path, "world", "tick-rate", "--set", "10")
    assert rate.returncode == 0 and "10/s" in rate.stdout
