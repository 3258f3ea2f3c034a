"""The agent examples of docs/agents.md in a real world: the orchestrator, two district servers
and the agent scheduler run in this process over a real broker (the embedded amqtt, and
Mosquitto when installed), and the agents are what a reader runs:

* docs/examples/paho_agent.py as a subprocess, over MQTT;
* docs/examples/browser_agent.html in headless Chromium, over MQTT-over-WebSocket (the
  embedded broker's ws listener), with mqtt.js from tests/node/node_modules served locally.
  Chromium is driven over the DevTools protocol (a WebSocket), so no driver is needed.

Without chromium, or without `npm ci --prefix tests/node`, the browser test is skipped with
the reason (it fails instead when CI=true).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import math
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from brokers import BrokerHandle
from browser import MQTTJS, chromium, chromium_binary, required
from docs_support import EXAMPLES, environment, login, run_example
from helpers import next_matching

from bus import Bus, BusSettings, Message, Subscription
from bus.payloads import Action, AgentState, Observation
from components.district import DistrictServer, DistrictSettings
from components.orchestrator import Orchestrator, OrchestratorSettings
from components.runtime import Component
from components.scheduler import AgentScheduler, SchedulerSettings
from world.payloads import AgentError, WorldSnapshot

NODE = MQTTJS.parents[3]  # tests/node
TIMEOUT = 20.0
OBSERVATIONS = 10  # answered by an agent before it leaves


# -- the world ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_world(handle: BrokerHandle, root: str, tmp_path: Path) -> AsyncIterator[Bus]:
    """The orchestrator, districts d1 (west) and d2 (east) and the scheduler (observing each
    agent every 5 ticks at 50 ticks/s) on `handle`, each as its own component user; yields a
    component's bus to watch the agents' topics with."""
    common: dict[str, Any] = {
        "root": root,
        "reconnect_min": 0.05,
        "reconnect_max": 0.5,
        "heartbeat_interval": 0.5,
        "store_url": f"sqlite+aiosqlite:///{tmp_path}/world.db",
    }
    components: list[Component] = [
        Orchestrator(
            OrchestratorSettings(
                world_rate=50, world_layout="2x1", world_bounds="0,0,200,100",
                world_districts="d1,d2", world_snapshot_interval=0.1,
                **common, **login(handle, "component"),
            )
        ),
        DistrictServer(DistrictSettings(id="d1", **common, **login(handle, "component"))),
        DistrictServer(DistrictSettings(id="d2", **common, **login(handle, "component"))),
        AgentScheduler(
            SchedulerSettings(
                scheduler_cadence=5, scheduler_deadline=2.0,
                **common, **login(handle, "component"),
            )
        ),
    ]  # fmt: skip
    tasks: list[asyncio.Task[None]] = []
    try:
        for component in components:
            task = asyncio.create_task(component.run(), name=f"test-{component.kind}")
            tasks.append(task)
            ready = asyncio.create_task(component.ready.wait())
            await asyncio.wait({task, ready}, timeout=TIMEOUT, return_when="FIRST_COMPLETED")
            if not ready.done():
                ready.cancel()
                raise AssertionError(f"{component.kind} did not start: {task}")
        settings = BusSettings(root=root, clean_session=True, **login(handle, "component"))
        async with Bus(settings) as bus:
            yield bus
    finally:
        for component in components:
            component.stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), TIMEOUT)


async def world_where(bus: Bus, predicate: Any) -> WorldSnapshot:
    """The first world snapshot (retained, then every 0.1 s) satisfying `predicate`."""
    sub = await bus.subscribe(bus.topics["world.snapshot"].build(world="main"))
    try:
        msg = await next_matching(sub, lambda m: predicate(m.payload), TIMEOUT)
    finally:
        await sub.close()
    snapshot: WorldSnapshot = msg.payload
    return snapshot


async def last_state(handle: BrokerHandle, root: str, agent: str) -> Message[Any]:
    """The agent's retained state, as a late joiner (an operator) sees it."""
    async with Bus(BusSettings(root=root, clean_session=True, **login(handle, "operator"))) as op:
        states = await op.subscribe(op.topics.agent.state(agent=agent))
        return await states.get(timeout=TIMEOUT)


def moved(observations: list[Observation]) -> float:
    """How far the agent walked, from one observation with a location to the next (a path
    length: a wanderer may turn back)."""
    placed = [o.location for o in observations if o.location is not None]
    assert len(placed) >= 2, f"fewer than two observations with a location: {observations}"
    return sum(math.hypot(b.x - a.x, b.y - a.y) for a, b in itertools.pairwise(placed))


async def answered(
    sent: Subscription, acts: Subscription, agent: str, count: int
) -> tuple[list[Observation], list[Action]]:
    """The first `count` answers of `agent` and the observations they answer (by tick and by
    envelope correlation), in order."""
    observations: dict[int, Message[Any]] = {}
    answers: list[Action] = []
    while len(answers) < count:
        act = await next_matching(acts, lambda m: m.envelope.sender == agent, TIMEOUT)
        assert isinstance(act.payload, Action) and act.payload.tick is not None
        while act.payload.tick not in observations:
            obs = await sent.get(timeout=TIMEOUT)
            observations[obs.payload.tick] = obs
        assert act.envelope.corr == observations[act.payload.tick].envelope.id
        answers.append(act.payload)
    asked = [observations[a.tick].payload for a in answers if a.tick is not None]
    return asked, answers


# -- the paho-mqtt agent -----------------------------------------------------------------------


async def test_paho_agent_joins_the_world_walks_hears_its_errors_and_leaves(
    docs_broker: BrokerHandle, root: str, tmp_path: Path
) -> None:
    env = environment(docs_broker, root, "agent")
    agent = env["MAPLEVERSE_USERNAME"]
    async with running_world(docs_broker, root, tmp_path) as bus:
        t = bus.topics
        states = await bus.subscribe(t.agent.state(agent=agent))
        sent = await bus.subscribe(t.agent.obs(agent=agent))
        acts = await bus.subscribe(t.agent.act(agent=agent))
        run = asyncio.create_task(run_example("paho_agent.py", env, "--max-obs", str(OBSERVATIONS)))
        ready = await next_matching(states, lambda m: m.payload.status == "ready", TIMEOUT)
        assert ready.envelope.sender == agent
        observations, answers = await answered(sent, acts, agent, 1)
        # An answer to a tick nobody asked about: the scheduler says so on the agent's error topic.
        stale = observations[0].tick + 1_000_000
        await bus.publish(t.agent.act(agent=agent), Action(action="wait", tick=stale))
        more, answers_after = await answered(sent, acts, agent, OBSERVATIONS - 1)
        out = await run
        observations += more
        answers += answers_after
        assert all(a.action in ("move", "say", "wait") for a in answers)
        assert all(o.agent == agent and "move" in o.actions for o in observations)
        assert moved(observations) > 0.2  # its moves move its entity
        await world_where(bus, lambda s: s.entities == 0)  # it left: despawned

    lines = out.splitlines()
    assert lines[0] == f"{agent}: ready, listening on {root}/agent/{agent}/obs"
    assert lines[-1] == f"{agent}: answered {OBSERVATIONS} observations, offline"
    ticks = [line for line in lines if re.fullmatch(rf"{agent}: tick \d+ -> (move|say)", line)]
    assert len(ticks) == OBSERVATIONS, out
    errors = [line for line in lines if line.startswith(f"{agent}: error at tick ")]
    assert len(errors) == 1, out  # the stale answer's; its real answers were all in time
    assert f": late: the answer to tick {stale} came after" in errors[0]
    assert errors[0].endswith("(none applied)")
    last = await last_state(docs_broker, root, agent)
    assert last.retain and isinstance(last.payload, AgentState)
    assert last.payload.status == "offline" and last.envelope.sender == agent


# -- the browser agent -------------------------------------------------------------------------


def page_url(pages: str, handle: BrokerHandle, agent: str, root: str) -> str:
    """The browser agent's page, its form filled through the query (but the password)."""
    query = {
        "mqttjs": "/mqtt.min.js",  # the tests' own copy: no internet
        "url": f"ws://{handle.host}:{handle.ws_port}",
        "agent": agent,
        "root": root,
    }
    return f"{pages}/browser_agent.html?{urlencode(query)}"


@pytest.mark.parametrize("docs_broker", ["amqtt"], indirect=True)  # the one with ws
async def test_browser_agent_answers_the_worlds_observations_over_websocket(
    docs_broker: BrokerHandle, root: str, tmp_path: Path, pages: str
) -> None:
    browser_binary = chromium_binary()
    required("tests/node/node_modules/mqtt", MQTTJS.exists(), "npm ci --prefix tests/node")
    agent, password = docs_broker.user("agent")
    async with (
        running_world(docs_broker, root, tmp_path) as bus,
        chromium(browser_binary, tmp_path) as browser,
    ):
        t = bus.topics
        states = await bus.subscribe(t.agent.state(agent=agent))
        sent = await bus.subscribe(t.agent.obs(agent=agent))
        acts = await bus.subscribe(t.agent.act(agent=agent))
        page = await browser.open(page_url(pages, docs_broker, agent, root))
        assert await page.run("document.querySelector('#agent').value") == agent
        # The password is typed into the form, never put in the URL.
        await page.run(
            f"document.querySelector('#password').value = {json.dumps(password)};"
            "document.querySelector('#login').requestSubmit(); true"
        )
        try:
            ready = await next_matching(states, lambda m: m.payload.status == "ready", TIMEOUT)
        except TimeoutError:
            status = await page.run("document.querySelector('#status').textContent")
            pytest.fail(f"the page did not join: {status}; console: {browser.console}")
        assert ready.envelope.sender == agent
        observations, answers = await answered(sent, acts, agent, OBSERVATIONS)
        assert all(a.action in ("move", "say", "wait") and a.reasoning for a in answers)
        assert moved(observations) > 0.2  # its moves move its entity
        shown = await page.run("document.querySelector('#observation').textContent")
        assert shown.startswith("tick ") and f'"agent": "{agent}"' in shown

        # An answer to a tick nobody asked about: the page shows the scheduler's error.
        next_error = await page.arm("error")
        stale = observations[-1].tick + 1_000_000
        await bus.publish(t.agent.act(agent=agent), Action(action="wait", tick=stale))
        detail = AgentError.model_validate(await page.run(next_error))
        assert (detail.code, detail.applied) == ("late", "none") and str(stale) in detail.reason
        line = await page.run("document.querySelector('#log .error').textContent")
        assert line.startswith("error at tick ") and f"late: the answer to tick {stale}" in line

        await page.run("document.querySelector('#leave').click(); true")
        await next_matching(states, lambda m: m.payload.status == "offline", TIMEOUT)
        await world_where(bus, lambda s: s.entities == 0)  # it left: despawned
    last = await last_state(docs_broker, root, agent)
    assert last.retain and last.payload.status == "offline" and last.envelope.sender == agent


@pytest.mark.parametrize("docs_broker", ["amqtt"], indirect=True)
async def test_browser_agent_with_a_wrong_password_says_so(
    docs_broker: BrokerHandle, root: str, tmp_path: Path, pages: str
) -> None:
    browser_binary = chromium_binary()
    required("tests/node/node_modules/mqtt", MQTTJS.exists(), "npm ci --prefix tests/node")
    agent, _ = docs_broker.user("agent")
    async with chromium(browser_binary, tmp_path) as browser:
        page = await browser.open(page_url(pages, docs_broker, agent, root))
        await page.run(
            "window.statuses = []; window.refused = new Promise(resolve => "
            "document.addEventListener('mapleverse:status', e => { statuses.push(e.detail);"
            " if (e.detail.startsWith('the broker refused')) resolve(statuses); }));"
            "document.querySelector('#password').value = 'wrong';"
            "document.querySelector('#login').requestSubmit(); true"
        )
        try:
            statuses = await asyncio.wait_for(page.run("window.refused"), 10)
        except TimeoutError:
            pytest.fail(f"{await page.run('window.statuses')}; console: {browser.console}")
        assert (
            statuses[-1] == "the broker refused the connection: Connection refused: Not authorized"
        )
        assert await page.run("document.querySelector('#connect').disabled") is False, statuses


def test_browser_agent_pins_the_mqtt_js_the_tests_use() -> None:
    """The page's CDN copy of mqtt.js is the version in tests/node/package.json, and its
    Subresource Integrity hash is that of the file the tests run."""
    script = (EXAMPLES / "browser_agent.js").read_text()
    pinned = json.loads((NODE / "package.json").read_text())["dependencies"]["mqtt"]
    found = re.search(r'src: "https://unpkg\.com/mqtt@([0-9.]+)/dist/mqtt\.min\.js"', script)
    assert found and found.group(1) == pinned, "browser_agent.js: MQTTJS.src is not the pinned mqtt"
    required("tests/node/node_modules/mqtt", MQTTJS.exists(), "npm ci --prefix tests/node")
    digest = base64.b64encode(hashlib.sha384(MQTTJS.read_bytes()).digest()).decode()
    assert f'integrity: "sha384-{digest}"' in script, "browser_agent.js: stale MQTTJS.integrity"
