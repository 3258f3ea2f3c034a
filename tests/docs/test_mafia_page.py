"""docs/examples/mafia.html in headless Chromium: a person plays a seat of a game of Mafia on a
real mesh. The three mesh managers run in this process on the embedded broker (amqtt: the one
with a WebSocket listener), each as its own component user; the page logs in as an agent over
MQTT-over-WebSocket, with the mqtt.js of tests/node served locally.

The browser machinery (a local server of docs/examples/, Chromium over the DevTools protocol)
is tests/browser.py's, as the browser agent's test uses it: this test is skipped, with the
reason, exactly when that one is (no chromium, or no `npm ci --prefix tests/node`; it fails
instead when CI=true).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from brokers import BrokerHandle
from browser import MQTTJS, TIMEOUT, Page, chromium, chromium_binary, required
from docs_support import EXAMPLES, login
from helpers import next_matching
from meshes import MANAGERS

from bus import Bus, BusSettings, Message, Subscription
from components.mesh_manager import MeshManager, MeshManagerSettings
from components.mesh_worker import MeshClient
from mafia import NAMES, Role, assign_roles
from mesh.payloads import GameEvent, GameState

MESH, GAME = "main", "g1"
PHASE = 120.0  # seconds of a day and of a night: never reached, everyone acts before


# -- the mesh ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_mesh(
    handle: BrokerHandle, root: str, tmp_path: Path
) -> AsyncIterator[tuple[list[MeshManager], Bus]]:
    """Mesh MESH's three managers on `handle`, each as its own component user; yields them and
    an operator's bus (who starts games)."""
    common: dict[str, Any] = {
        "root": root,
        "reconnect_min": 0.05,
        "reconnect_max": 0.5,
        "heartbeat_interval": 0.5,
        "mesh": MESH,
        "mesh_managers": ",".join(MANAGERS),
        "mesh_heartbeat": 0.1,
        "mesh_election_min": 0.4,
        "mesh_election_max": 0.8,
        "mesh_status_interval": 0.5,
        "store_url": f"sqlite+aiosqlite:///{tmp_path}/mesh.db",
    }
    managers = [
        MeshManager(MeshManagerSettings(id=m, **common, **login(handle, "component")))
        for m in MANAGERS
    ]
    tasks: list[asyncio.Task[None]] = []
    try:
        for manager in managers:
            task = asyncio.create_task(manager.run(), name=f"test-{manager.id}")
            tasks.append(task)
            ready = asyncio.create_task(manager.ready.wait())
            await asyncio.wait({task, ready}, timeout=TIMEOUT, return_when="FIRST_COMPLETED")
            if not ready.done():
                ready.cancel()
                raise AssertionError(f"mesh manager {manager.id} did not start: {task}")
        settings = BusSettings(root=root, clean_session=True, **login(handle, "operator"))
        async with Bus(settings) as bus:
            yield managers, bus
    finally:
        for manager in managers:
            manager.stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), TIMEOUT)


def dealt_to_the_mafia(agent: str) -> tuple[list[str], int]:
    """The seats of a 12-player game with `agent` as its one person (bots fill the rest, as
    `mafia-start` seats them) and the first seed that deals `agent` to the mafia: the mafia
    never kill one of their own, so the person lives to see the day, and the night waits for
    their kill (it ends once every mafia member has chosen)."""
    players = [agent, *[n for n in NAMES if n != agent][:11]]
    seed = next(s for s in itertools.count() if assign_roles(players, s)[agent] is Role.MAFIA)
    return players, seed


async def told(events: Subscription, until: str) -> list[GameEvent]:
    """The game's public events, up to and including the first of kind `until`."""
    seen: list[GameEvent] = []
    while not seen or seen[-1].kind != until:
        msg: Message[Any] = await events.get(timeout=TIMEOUT)
        seen.append(msg.payload)
    return seen


# -- the page ----------------------------------------------------------------------------------


def seat_url(pages: str, handle: BrokerHandle, agent: str, root: str) -> str:
    """The seat's page, its form filled through the query (but the password)."""
    query = {
        "mqttjs": "/mqtt.min.js",  # the tests' own copy: no internet
        "url": f"ws://{handle.host}:{handle.ws_port}/mqtt",
        "username": agent,
        "root": root,
        "mesh": MESH,
        "game": GAME,
    }
    return f"{pages}/mafia.html?{urlencode(query)}"


def text(element: str) -> str:
    """The expression of an element's text, by id."""
    return f"document.getElementById({json.dumps(element)}).textContent"


STORY = "Array.from(document.querySelectorAll('#story li'), li => li.textContent)"


async def until(page: Page, expression: str) -> Any:
    """The value of `expression` in the page once it is truthy (looked at again on every change
    of the page)."""
    waiting = (
        "new Promise(resolve => { const check = () => { const value = (" + expression + ");"
        " if (value) { observer.disconnect(); resolve(value); } };"
        " const observer = new MutationObserver(check);"
        " observer.observe(document.body, {subtree: true, childList: true, characterData: true});"
        " check(); })"
    )
    try:
        return await page.run(waiting)
    except TimeoutError:
        status = await page.run(text("status"))
        pytest.fail(
            f"the page never showed {expression}; status {status!r}; {page.devtools.console}"
        )


async def act(page: Page, button: str, **fields: str) -> dict[str, Any]:
    """Fill in the action's fields, click its button: the answer the page got for it."""
    answer = await page.arm("reply")
    filled = "".join(
        f"document.getElementById({json.dumps(k)}).value = {json.dumps(v)};"
        for k, v in fields.items()
    )
    await page.run(f"{filled} document.getElementById({json.dumps(button)}).click(); true")
    reply: dict[str, Any] = await until(page, answer)
    return reply


@pytest.mark.parametrize("docs_broker", ["amqtt"], indirect=True)  # the one with ws
async def test_a_person_plays_a_seat_of_mafia_from_the_browser(
    docs_broker: BrokerHandle, root: str, tmp_path: Path, pages: str
) -> None:
    browser_binary = chromium_binary()
    required("tests/node/node_modules/mqtt", MQTTJS.exists(), "npm ci --prefix tests/node")
    agent, password = docs_broker.user("agent")
    players, seed = dealt_to_the_mafia(agent)
    async with (
        running_mesh(docs_broker, root, tmp_path) as (managers, op),
        chromium(browser_binary, tmp_path) as browser,
    ):
        t = op.topics
        events = await op.subscribe(t["mafia.events"].build(mesh=MESH, game=GAME))
        states = await op.subscribe(t["mafia.state"].build(mesh=MESH, game=GAME))
        client = MeshClient(op, MESH, deadline=TIMEOUT)
        try:
            started = await client.call(
                "mafia-start", game=GAME, players=12, humans=[agent], seed=seed,
                day_seconds=PHASE, night_seconds=PHASE,
            )  # fmt: skip
        finally:
            await client.close()
        assert started["ok"] and started["players"] == players, started
        held = {m.id: m.state.games[GAME]["rules"] for m in managers if GAME in m.state.games}
        assert held, "no manager holds the game it answered for"
        assert {rules["roles"][agent] for rules in held.values()} == {"mafia"}
        roles = next(iter(held.values()))["roles"]
        mafia = [p for p in players if roles[p] == "mafia"]
        await told(events, until="phase")  # the start, and night 1: before the page looks

        page = await browser.open(seat_url(pages, docs_broker, agent, root))
        assert await page.run("document.getElementById('username').value") == agent
        # The password is typed into the form, never put in the URL.
        await page.run(
            f"document.getElementById('password').value = {json.dumps(password)};"
            "document.getElementById('login').requestSubmit(); true"
        )
        await until(
            page, f"{text('status')} === {json.dumps(f'{agent} in game {GAME} of mesh {MESH}')}"
        )

        # What the person sees first: their role, secret, with the rest of the mafia; the night.
        assert await until(page, f"{text('role')} !== 'not dealt yet' && {text('role')}") == "mafia"
        others = ", ".join(p for p in mafia if p != agent)
        assert await page.run(text("team")) == f"(the mafia, with {others})"
        assert await until(page, f"{text('phase')} === 'night 1'")
        assert await page.run(text("alive")) == ", ".join(players)

        # The night: their kill is the last the mafia owe, so it ends the night.
        victim = next(p for p in players if p not in mafia)
        assert await act(page, "kill", target=victim) == {"ok": True, "op": "kill"}
        assert await page.run(text("reply")) == "kill: ok"
        dawn = await told(events, until="phase")
        day = await next_matching(states, lambda m: m.payload.phase == "day", TIMEOUT)
        assert await until(page, f"{text('phase')} === 'day 1'")
        assert await page.run(text("alive")) == ", ".join(day.payload.alive)
        dead = [f"{p} ({day.payload.revealed[p]})" for p in players if p not in day.payload.alive]
        assert await page.run(text("dead")) == ", ".join(dead)  # the night's victim, if any

        # The day: a vote for nobody who plays is refused, saying why, and changes nothing.
        refused = await act(page, "vote", target="nobody")
        assert refused == {"ok": False, "op": "vote", "error": "there is no player 'nobody'"}
        assert await page.run(text("reply")) == "vote refused: there is no player 'nobody'"
        assert await act(page, "say", text="I trust nobody.") == {"ok": True, "op": "say"}
        # A vote for a living player is taken; the last vote owed, it ends the day.
        state: GameState = day.payload
        suspect = next(p for p in state.alive if p not in mafia)
        assert await act(page, "vote", target=suspect) == {"ok": True, "op": "vote"}
        assert await page.run(text("reply")) == "vote: ok"
        dusk = await told(events, until="phase")
        assert dusk[-1].phase == "night" and dusk[-1].round == 2
        assert await until(page, f"{text('phase')} === 'night 2'")

        # The story as it was told on the game's events, since the page looked, in order.
        lines = [e.line for e in dawn + dusk if e.line]
        assert any(line.startswith("Night 1: the mafia ") for line in lines), lines
        assert any(re.match(r"Day 1: (the town lynched|the vote was tied)", x) for x in lines)
        story = await until(page, f"{STORY}.includes({json.dumps(lines[-1])}) && {STORY}")
        shown = iter(story)
        assert all(line in shown for line in lines), f"{lines} not told in order in {story}"
        assert f"{agent}: I trust nobody." in story
        assert f"{agent} votes for {suspect}" in story
        assert [line for line in story if re.fullmatch(r"\w+ \d+", line)] == ["day 1", "night 2"]


def test_the_seat_pins_the_same_mqtt_js_as_the_browser_agent() -> None:
    """mafia.html loads the mqtt.js of browser_agent.js (whose pin and Subresource Integrity
    hash test_agents_world.py checks against tests/node)."""
    pin = re.compile(r'const MQTTJS = \{\s*src: "[^"]+",\s*integrity: "[^"]+",\s*\};')
    agent_pin = pin.search((EXAMPLES / "browser_agent.js").read_text())
    seat_pin = pin.search((EXAMPLES / "mafia.html").read_text())
    assert agent_pin and seat_pin and seat_pin.group(0) == agent_pin.group(0)
