"""The docs' runnable examples (docs/examples/), run as a reader runs them, against real brokers:
the embedded amqtt always, Mosquitto when it is installed. Then the checks that keep the prose
honest: every Python snippet in docs/*.md is an excerpt of an example, links resolve, and every
declared topic and every MAPLEVERSE_* setting is documented.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from brokers import BrokerHandle
from docs_support import EXAMPLES, bus_settings, environment, run_example

from broker.settings import BrokerSettings
from bus import Bus, BusSettings
from bus.payloads import Action, AgentState, Observation, Status
from bus.topics import load
from components.district import DistrictSettings
from components.health import HealthSettings
from components.orchestrator import OrchestratorSettings
from components.router import RouterSettings
from components.runtime import ComponentSettings
from components.runtime.settings import WorldSettings
from components.scheduler import SchedulerSettings
from components.swarm import SwarmSettings

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
TIMEOUT = 20.0


@contextlib.asynccontextmanager
async def component(
    handle: BrokerHandle, root: str, tmp_path: Path, kind: str, *argv: str, **extra: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """A component process (`python ARGV...`), its username; yielded once it has sent its
    third heartbeat: by then it has subscribed to everything it serves (a broker handles one
    client's packets in order)."""
    env = {**environment(handle, root, "component"), "MAPLEVERSE_HEARTBEAT_INTERVAL": "0.1"}
    env.update(extra)
    log = tmp_path / f"{kind}.log"
    async with Bus(bus_settings(environment(handle, root, "operator"))) as bus:
        beats = await bus.subscribe(bus.topics.component.heartbeat(kind=kind, id="main"))
        with log.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, *argv, env=env, cwd=REPO, stdout=sink, stderr=sink
            )
        try:
            try:
                async with asyncio.timeout(TIMEOUT):
                    while (await beats.get()).payload.seq < 2:
                        pass
            except TimeoutError:
                pytest.fail(f"{kind} sent no heartbeats:\n{log.read_text()}")
            yield proc, env["MAPLEVERSE_USERNAME"]
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


def echo_service(
    handle: BrokerHandle, root: str, tmp_path: Path
) -> contextlib.AbstractAsyncContextManager[tuple[asyncio.subprocess.Process, str]]:
    """The echo service, run as `mapleverse component echo` runs it."""
    return component(handle, root, tmp_path, "echo", "-m", "components", "component", "echo")


# -- the examples ------------------------------------------------------------------------------


async def test_bus_hello_reads_back_what_it_published(docs_broker: BrokerHandle, root: str) -> None:
    env = environment(docs_broker, root, "operator")
    out = await run_example("bus_hello.py", env)
    sender = env["MAPLEVERSE_USERNAME"]
    assert out.splitlines() == [
        f"{root}/sys/probe/hello/echo seq={seq} text=hello from {sender}" for seq in range(3)
    ]


async def test_bus_request_gets_the_echo_services_reply(
    docs_broker: BrokerHandle, root: str, tmp_path: Path
) -> None:
    async with echo_service(docs_broker, root, tmp_path) as (_, echo):
        out = await run_example("bus_request.py", environment(docs_broker, root, "operator"))
    assert out == f"{echo} answered: {{'method': 'ping', 'args': {{'name': 'ada'}}}}\n"


async def test_bus_batching_delivers_every_record_in_few_messages(
    docs_broker: BrokerHandle, root: str
) -> None:
    out = await run_example("bus_batching.py", environment(docs_broker, root, "operator"))
    found = re.fullmatch(
        r"sent 5000 records in (\d+) messages; received 5000 records in (\d+) messages\n", out
    )
    assert found, out
    assert found.group(1) == found.group(2)
    assert 1 < int(found.group(1)) < 50  # batched by the packet limit, not one per record


async def test_bus_dlq_shows_why_a_command_was_rejected(
    docs_broker: BrokerHandle, root: str, tmp_path: Path
) -> None:
    async with echo_service(docs_broker, root, tmp_path) as (proc, echo):
        out = await run_example("bus_dlq.py", environment(docs_broker, root, "operator"))
        assert proc.returncode is None, "a bad command must not crash the component"
    first, second = out.splitlines()
    assert first.startswith(f"{echo} rejected {root}/sys/component/echo/main/cmd: Command.command")
    assert second == 'the payload was: {"command": "explode"}'


async def test_greeter_component_answers_announces_itself_and_leaves_cleanly(
    docs_broker: BrokerHandle, root: str, tmp_path: Path
) -> None:
    greeter = str(EXAMPLES / "greeter.py")
    operator = environment(docs_broker, root, "operator")
    async with component(
        docs_broker, root, tmp_path, "greeter", greeter, MAPLEVERSE_GREETING="howdy"
    ) as (proc, user):
        out = await run_example("bus_request.py", operator, "greeter", "hello")
        assert out == f"{user} answered: howdy, ada\n"
        out = await run_example("bus_request.py", operator, "greeter", "shout")
        assert out == f"{user} refused: no method 'shout'\n"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    async with Bus(bus_settings(environment(docs_broker, root, "operator"))) as bus:
        statuses = await bus.subscribe(bus.topics.component.status(kind="greeter", id="main"))
        msg = await statuses.get(timeout=TIMEOUT)
    assert isinstance(msg.payload, Status) and msg.retain
    assert msg.payload.state == "offline"
    assert f"{root}/rpc/greeter/+" in msg.payload.topics


async def test_greeter_names_a_bad_setting_and_exits(docs_broker: BrokerHandle, root: str) -> None:
    env = {**environment(docs_broker, root, "component"), "MAPLEVERSE_GREETING": ""}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "greeter.py"), env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 2
    assert err.decode().startswith("greeter: MAPLEVERSE_GREETING: expected ")


async def test_paho_agent_answers_observations_and_keeps_its_state_retained(
    docs_broker: BrokerHandle, root: str
) -> None:
    agent_env = environment(docs_broker, root, "agent")
    agent = agent_env["MAPLEVERSE_USERNAME"]
    async with Bus(bus_settings(environment(docs_broker, root, "component"))) as bus:
        topics = bus.topics
        acts = await bus.subscribe(topics.agent.act(agent="+"))
        states = await bus.subscribe(topics.agent.state(agent=agent))
        sent = await bus.subscribe(topics.agent.obs(agent=agent))  # to learn the obs ids
        run = asyncio.create_task(run_example("paho_agent.py", agent_env, "--max-obs", "2"))
        ready = await states.get(timeout=TIMEOUT)
        assert isinstance(ready.payload, AgentState) and ready.payload.status == "ready"
        assert ready.envelope.sender == agent
        for tick in (1, 2):
            await bus.publish(topics.agent.obs(agent=agent), Observation(tick=tick))
            obs = await sent.get(timeout=TIMEOUT)
            act = await acts.get(timeout=TIMEOUT)
            assert act.topic == f"{root}/agent/{agent}/act"
            assert isinstance(act.payload, Action) and act.payload.action == "move"
            assert act.envelope.sender == agent and act.envelope.corr == obs.envelope.id
        out = await run
    assert out.splitlines() == [
        f"{agent}: ready, listening on {root}/agent/{agent}/obs",
        f"{agent}: tick 1 -> move",
        f"{agent}: tick 2 -> move",
        f"{agent}: answered 2 observations, offline",
    ]
    # A late joiner sees the agent's last word at once: retained.
    async with Bus(bus_settings(environment(docs_broker, root, "operator"))) as bus:
        states = await bus.subscribe(bus.topics.agent.state(agent=agent))
        last = await states.get(timeout=TIMEOUT)
    assert last.retain and isinstance(last.payload, AgentState)
    assert last.payload.status == "offline" and last.envelope.sender == agent


async def test_paho_agent_with_a_wrong_password_says_so(
    docs_broker: BrokerHandle, root: str
) -> None:
    env = {**environment(docs_broker, root, "agent"), "MAPLEVERSE_PASSWORD": "wrong"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "paho_agent.py"), env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 1
    assert "the broker refused the connection" in err.decode()


# -- the prose ---------------------------------------------------------------------------------


def pages() -> dict[Path, str]:
    return {path: path.read_text() for path in sorted(DOCS.glob("*.md"))}


def _dedented(lines: list[str]) -> list[str]:
    """Non-blank lines with their common indentation removed (relative indentation kept)."""
    kept = [line.rstrip() for line in lines if line.strip()]
    indent = min((len(line) - len(line.lstrip()) for line in kept), default=0)
    return [line[indent:] for line in kept]


def test_python_snippets_are_excerpts_of_the_runnable_examples() -> None:
    """A snippet in the prose is a run of consecutive lines of a tested example file, with the
    same relative indentation (blank lines aside)."""
    examples = {
        p.name: [line for line in p.read_text().splitlines() if line.strip()]
        for p in EXAMPLES.glob("*.py")
    }
    snippets = 0
    for page, text in pages().items():
        for block in re.findall(r"```python\n(.*?)```", text, re.S):
            snippet = _dedented(block.splitlines())
            n = len(snippet)
            snippets += 1
            assert any(
                _dedented(lines[i : i + n]) == snippet
                for lines in examples.values()
                for i in range(len(lines) - n + 1)
            ), f"{page.name}: this snippet is in no docs/examples/*.py file:\n{block}"
    assert snippets, "no ```python snippets found"


def test_every_example_is_shown_in_the_docs() -> None:
    text = "\n".join(pages().values())
    for example in EXAMPLES.glob("*.py"):
        assert f"examples/{example.name}" in text, f"{example.name} is not referenced in docs/"


def test_relative_links_resolve() -> None:
    for page, text in pages().items():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def test_every_declared_topic_is_documented() -> None:
    topics_md = (DOCS / "topics.md").read_text()
    for spec in load():
        assert f"`{spec.full_pattern}`" in topics_md, f"{spec.full_pattern} is not in topics.md"


@pytest.mark.parametrize(
    "model",
    [
        BusSettings,
        ComponentSettings,
        HealthSettings,
        BrokerSettings,
        WorldSettings,
        OrchestratorSettings,
        DistrictSettings,
        SwarmSettings,
        SchedulerSettings,
        RouterSettings,
    ],
    ids=lambda m: m.__name__,
)
def test_every_setting_is_documented(model: type[BusSettings]) -> None:
    text = "\n".join(pages().values())
    prefix = str(model.model_config.get("env_prefix", ""))
    for field in model.model_fields:
        variable = f"{prefix}{field}".upper()
        assert f"`{variable}`" in text, f"{variable} is not documented in docs/"
