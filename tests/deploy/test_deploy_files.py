"""The docker compose deployment (deploy/), checked without a Docker engine.

What a deployer would hit: a component without a container, a container whose broker
credentials Mosquitto refuses, a component Prometheus never scrapes, a world component without
its database or a world whose regions go to a district server that has no container, an image
without its entrypoint or without topics.yaml. The last test runs the component containers'
exact settings against a Mosquitto started from the project's own mosquitto/ files, as
`docker compose up` would, with only the host names, ports and database changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from broker.mosquitto import render_test_conf
from broker.users import User, load_users
from bus import Bus, BusSettings, SettingsError, load_settings
from bus.payloads import HealthSummary, RpcRequest, Status
from components.registry import COMPONENTS, DEFAULT_UP, instance, resolve
from components.supervisor import DEFAULT_WORLD

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"

# ${VAR}, ${VAR:-default}, ${VAR-default} and the escape $$, as docker compose reads them.
_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """`value` with compose's variable substitution applied, recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, default = match.group("name", "op", "default")
        current = env.get(name)
        if op == ":-" and not current:
            return default
        if op == "-" and current is None:
            return default
        return current or ""

    return _INTERPOLATION.sub(substitute, value)


def compose_variables() -> dict[str, str | None]:
    """Every variable the compose file interpolates, with its default (None: no default)."""
    found: dict[str, str | None] = {}
    for match in _INTERPOLATION.finditer(COMPOSE.read_text()):
        if match.group("name"):
            found[match.group("name")] = match.group("default")
    return found


def env_example() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: not NAME=value: {line!r}"
            values[name.strip()] = value.strip()
    return values


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as `docker compose up` sees it without a .env (every default)."""
    doc: dict[str, Any] = interpolate(yaml.safe_load(COMPOSE.read_text()), {})
    return doc


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


@dataclass(frozen=True)
class ComponentService:
    """A service that runs `mapleverse component NAME` with MAPLEVERSE_ID=ID."""

    name: str  # the compose service
    component: str  # NAME in components/registry.py
    id: str
    spec: dict[str, Any]

    @property
    def env(self) -> dict[str, str]:
        return environment(self.spec)


def component_services(compose: dict[str, Any]) -> dict[str, ComponentService]:
    """Services that run `mapleverse component NAME`, by service name: `NAME` for the instance
    `main`, `NAME-ID` for another (the district servers `district-d1`, `district-d2`)."""
    found = {}
    for name, service in compose["services"].items():
        command = service.get("command") or []
        if command[:1] == ["component"]:
            assert len(command) == 2, f"service {name} runs {command}"
            component = command[1]
            ident = environment(service).get("MAPLEVERSE_ID", "main")
            expected = component if ident == "main" else f"{component}-{ident}"
            assert name == expected, f"service {name} runs {component} {ident}: call it {expected}"
            found[name] = ComponentService(name, component, ident, service)
    return found


def persists(component: str) -> bool:
    """Whether the component keeps state in the store (MAPLEVERSE_STORE_URL)."""
    return "store_url" in resolve(component).settings_model.model_fields


def depends_on(service: dict[str, Any]) -> set[str]:
    deps = service.get("depends_on") or []
    return set(deps)  # a list of names or a mapping keyed by name


# -- the compose file ------------------------------------------------------------------------


def test_every_registered_component_has_a_service(compose: dict[str, Any]) -> None:
    services = component_services(compose).values()
    missing = sorted(set(COMPONENTS) - {s.component for s in services})
    assert not missing, f"components without a service in {COMPOSE.name}: {missing}"
    # ... and every instance `mapleverse up` starts (`district:d1`) has its own.
    instances = {(s.component, s.id) for s in services}
    missing = [spec for spec in DEFAULT_UP if instance(spec) not in instances]
    assert not missing, f"instances of DEFAULT_UP without a service in {COMPOSE.name}: {missing}"
    for s in services:
        name, service = s.name, s.spec
        assert service["build"]["dockerfile"] == "deploy/Dockerfile", name
        assert (COMPOSE.parent / service["build"]["context"]).resolve() == REPO, name
        assert service.get("restart") == "unless-stopped", name
        assert "mosquitto" in depends_on(service), name


def test_broker_users_exist_with_their_roles_and_dev_passwords(compose: dict[str, Any]) -> None:
    users: dict[str, User] = load_users(REPO / "mosquitto" / "users.yaml")
    components = component_services(compose)
    for name, service in compose["services"].items():
        env = environment(service)
        if "MAPLEVERSE_USERNAME" not in env:
            continue
        username = env["MAPLEVERSE_USERNAME"]
        assert username in users, f"{name}: {username} is not in mosquitto/users.yaml"
        user = users[username]
        if name in components:
            assert user.role == "component", f"{name}: {username} has role {user.role}"
        # The default password (no .env) must be the one Mosquitto's passwd file holds.
        assert user.check_password(env["MAPLEVERSE_PASSWORD"]), (
            f"{name}: the default MAPLEVERSE_PASSWORD does not match {username}'s hash"
        )


def test_component_settings_load_as_the_container_would(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, service in component_services(compose).items():
        cls = resolve(service.component)
        env = service.env
        fields = set(cls.settings_model.model_fields)
        # pydantic ignores unknown variables: a misspelt one would silently do nothing.
        unknown = [k for k in env if k.startswith("MAPLEVERSE_") and k[11:].lower() not in fields]
        assert not unknown, f"{name}: not settings of {cls.settings_model.__name__}: {unknown}"
        for key in list(os.environ):
            if key.startswith("MAPLEVERSE_"):
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        try:
            settings = load_settings(cls.settings_model)
        except SettingsError as exc:
            pytest.fail(f"{name}: {exc}")
        assert settings.host == "mosquitto", name
        assert settings.metrics_port, f"{name}: no MAPLEVERSE_METRICS_PORT, nothing to scrape"
        assert settings.metrics_host == "0.0.0.0", f"{name}: /metrics unreachable from prometheus"
        assert settings.id == service.id, name
        # The username is the MQTT client id: `<kind>-<id>`, as in mosquitto/README.md.
        assert settings.username == f"{cls.kind}-{settings.id}", name


def test_world_components_persist_to_the_postgres_service(compose: dict[str, Any]) -> None:
    postgres = environment(compose["services"]["postgres"])
    world = [s for s in component_services(compose).values() if persists(s.component)]
    assert world, "no service runs a component that persists: nothing to check"
    for s in world:
        url = urlsplit(s.env.get("MAPLEVERSE_STORE_URL", ""))
        assert url.scheme == "postgresql+psycopg", f"{s.name}: MAPLEVERSE_STORE_URL {url.geturl()}"
        assert (url.hostname, url.port) == ("postgres", 5432), s.name
        assert (url.username, url.password, url.path) == (
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_PASSWORD"],
            "/" + postgres["POSTGRES_DB"],
        ), f"{s.name}: MAPLEVERSE_STORE_URL does not log in as the postgres service's user"
        # A component that opens its store before PostgreSQL accepts connections exits.
        assert s.spec["depends_on"]["postgres"] == {"condition": "service_healthy"}, s.name
        assert s.spec["depends_on"]["mosquitto"] == {"condition": "service_healthy"}, s.name
    # All of a world's components share one database and serve one world.
    assert len({s.env["MAPLEVERSE_STORE_URL"] for s in world}) == 1
    assert len({s.env.get("MAPLEVERSE_WORLD", "main") for s in world}) == 1


def test_the_default_world_runs_as_mapleverse_up_runs_it(compose: dict[str, Any]) -> None:
    """The world settings of `mapleverse up` (DEFAULT_WORLD), each given to every service whose
    component reads it; and every district server the regions are dealt to has a service."""
    services = component_services(compose).values()
    given: set[str] = set()
    for s in services:
        fields = resolve(s.component).settings_model.model_fields
        for key, value in DEFAULT_WORLD.items():
            if key[11:].lower() in fields:
                assert s.env.get(key) == value, f"{s.name}: {key}={s.env.get(key)!r}, not {value!r}"
                given.add(key)
    assert given == set(DEFAULT_WORLD), f"read by no service: {set(DEFAULT_WORLD) - given}"
    orchestrators = [s for s in services if s.component == "orchestrator"]
    assert orchestrators, "no orchestrator: the world's clock never ticks"
    districts = {s.id for s in services if s.component == "district"}
    for s in orchestrators:
        dealt = set(s.env["MAPLEVERSE_WORLD_DISTRICTS"].split(","))
        assert dealt == districts, (
            f"{s.name} deals regions to {sorted(dealt)}; district services: {sorted(districts)}"
        )


def test_prometheus_scrapes_every_component(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    scraped = {
        target
        for job in config["scrape_configs"]
        if job.get("metrics_path", "/metrics") == "/metrics"
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    for name, service in component_services(compose).items():
        target = f"{name}:{service.env['MAPLEVERSE_METRICS_PORT']}"
        assert target in scraped, f"prometheus.yml does not scrape {target}"


def test_mosquitto_runs_the_projects_config(compose: dict[str, Any]) -> None:
    mosquitto = compose["services"]["mosquitto"]
    assert mosquitto["image"] == "eclipse-mosquitto:2"
    mounts = {}
    for volume in mosquitto["volumes"]:
        source, target, *mode = volume.split(":")
        mounts[target] = (source, mode)
    assert mounts["/mosquitto/config"] == ("../mosquitto", ["ro"])
    assert (COMPOSE.parent / "../mosquitto").resolve() == REPO / "mosquitto"
    data_volume = mounts["/mosquitto/data"][0]
    assert data_volume in compose["volumes"], "/mosquitto/data is not a named volume"
    published = {port.rpartition(":")[2] for port in mosquitto["ports"]}
    assert published == {"1883", "9001"}
    # ... and mosquitto.conf listens there, reading files that exist in mosquitto/.
    conf = (REPO / "mosquitto" / "mosquitto.conf").read_text().splitlines()
    listeners = {line.split()[1] for line in conf if line.startswith("listener ")}
    assert listeners == published
    for key in ("password_file", "acl_file"):
        path = next(line.split()[1] for line in conf if line.startswith(f"{key} "))
        assert path.startswith("/mosquitto/config/"), key
        assert (REPO / "mosquitto" / path.removeprefix("/mosquitto/config/")).is_file(), key


def test_postgres_redis_and_their_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["image"] == "postgres:16"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["image"] == "redis:7"
    # The components wait for a broker that listens, not merely a started container.
    assert compose["services"]["health"]["depends_on"]["mosquitto"] == {
        "condition": "service_healthy"
    }
    assert "healthcheck" in services["mosquitto"]


def test_env_example_documents_every_variable_with_the_same_default() -> None:
    documented = env_example()
    for name, default in compose_variables().items():
        assert default is not None, f"${{{name}}} has no default: `docker compose up` needs .env"
        assert name in documented, f"{name} is not in deploy/.env.example"
        assert documented[name] == default, (
            f"{name}: .env.example says {documented[name]!r}, docker-compose.yml {default!r}"
        )
    assert not set(documented) - set(compose_variables()), "documented but unused variables"


def test_compose_file_is_valid_for_docker_compose() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker client not installed")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("docker compose plugin not installed")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# -- the image ---------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_entrypoint_is_the_cli_and_runs_as_non_root() -> None:
    instructions = dockerfile_instructions()
    bases = [rest.split()[0] for kw, rest in instructions if kw == "FROM"]
    assert bases and all(base == "python:3.11-slim" for base in bases), bases
    last_stage = instructions[max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM") :]
    entrypoints = [json.loads(rest) for kw, rest in last_stage if kw == "ENTRYPOINT"]
    assert entrypoints[-1:] == [["mapleverse"]]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "mapleverse" in scripts, "the entrypoint is not a console script of the package"
    users = [rest for kw, rest in last_stage if kw == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image runs as root"


def test_image_is_built_from_everything_the_package_needs() -> None:
    """A path the wheel needs but the Dockerfile does not COPY (or .dockerignore hides) would
    give an image without it: e.g. topics.yaml, force-included as bus/topics.yaml."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {"pyproject.toml", pyproject["project"]["readme"], *wheel["packages"]}
    needed |= set(wheel.get("force-include", {}))
    copied = set()
    for kw, rest in dockerfile_instructions():
        if kw == "COPY" and not rest.startswith("--from"):
            copied |= {src.rstrip("/") for src in rest.split()[:-1]}
    assert needed <= copied, f"not copied into the build stage: {sorted(needed - copied)}"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore and needed <= allowed, f"hidden by .dockerignore: {needed - allowed}"


# -- the stack against the project's Mosquitto config ----------------------------------------


class Stack:
    """Mosquitto from mosquitto/ (passwd, acl) and the component containers' processes."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.logs: dict[str, list[str]] = {}
        self.metrics: dict[str, str] = {}
        self._drains: list[asyncio.Task[None]] = []

    def start_broker(self) -> Any:
        import brokers

        binary = brokers.require_binary("mosquitto")
        for name in ("passwd", "acl"):
            target = self.workdir / name
            shutil.copyfile(REPO / "mosquitto" / name, target)
            target.chmod(0o600)
        (self.workdir / "data").mkdir()
        port = brokers.free_port()
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            render_test_conf(
                port, self.workdir / "data", self.workdir / "passwd", self.workdir / "acl"
            )
        )
        handle = brokers.ProcessBroker(
            kind="mosquitto", host="127.0.0.1", port=port, ws_port=None,
            capabilities=frozenset(), workdir=self.workdir, command=[binary, "-c", str(conf)],
        )  # fmt: skip
        handle.start()
        return handle

    async def start_component(self, name: str, component: str, env: dict[str, str]) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "components", "component", component,
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self.procs[name] = proc
        log = self.logs[name] = []
        assert proc.stderr is not None
        try:
            async with asyncio.timeout(20):
                while True:
                    line = (await proc.stderr.readline()).decode(errors="replace")
                    if not line:
                        pytest.fail(f"{name} exited: {''.join(log)}")
                    log.append(line)
                    found = re.search(r"metrics on (http://\S+/metrics)", line)
                    if found:
                        self.metrics[name] = found.group(1)
                        break
        except TimeoutError:
            pytest.fail(f"{name} did not log its /metrics address in 20 s: {''.join(log)}")
        self._drains.append(asyncio.create_task(self._drain(proc, log)))

    @staticmethod
    async def _drain(proc: asyncio.subprocess.Process, log: list[str]) -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            log.append(line.decode(errors="replace"))

    async def stop(self, name: str) -> int:
        proc = self.procs[name]
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)  # what `docker compose stop` sends
        async with asyncio.timeout(15):
            return await proc.wait()

    async def close(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for task in self._drains:
            task.cancel()


@contextlib.asynccontextmanager
async def stack(workdir: Path) -> AsyncIterator[tuple[Stack, Any]]:
    s = Stack(workdir)
    handle = s.start_broker()
    try:
        yield s, handle
    finally:
        await s.close()
        handle.close()


@pytest.mark.mosquitto
async def test_component_containers_run_against_the_projects_mosquitto(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """Each component with its service's environment (host, ports and database aside) logs in
    to a Mosquitto loaded with mosquitto/passwd and mosquitto/acl, serves /metrics, shows up in
    the health summary and answers; SIGTERM leaves a retained offline status."""
    services = component_services(compose)
    cli = environment(compose["services"]["cli"])
    # The world components share one database, as they share the postgres service.
    store_url = f"sqlite+aiosqlite:///{tmp_path / 'mapleverse.db'}"
    async with stack(tmp_path) as (s, broker):
        base = {k: v for k, v in os.environ.items() if not k.startswith("MAPLEVERSE_")}
        for name, service in services.items():
            env = {**base, **service.env}
            env.update(
                MAPLEVERSE_HOST=broker.host,
                MAPLEVERSE_PORT=str(broker.port),
                MAPLEVERSE_METRICS_HOST="127.0.0.1",
                MAPLEVERSE_METRICS_PORT="0",  # tests bind free ports
            )
            if persists(service.component):
                env["MAPLEVERSE_STORE_URL"] = store_url
            await s.start_component(name, service.component, env)
        operator = BusSettings(
            host=broker.host,
            port=broker.port,
            username=cli["MAPLEVERSE_USERNAME"],
            password=cli["MAPLEVERSE_PASSWORD"],
            clean_session=True,
        )
        async with Bus(operator, kind="cli") as bus:
            summaries = await bus.subscribe(bus.topics.health())
            want = {(resolve(c.component).kind, c.id, "online") for c in services.values()}
            async with asyncio.timeout(20):
                async for msg in summaries:
                    assert isinstance(msg.payload, HealthSummary)
                    if want <= {(c.kind, c.id, c.state) for c in msg.payload.components}:
                        break
            if "echo" in services:
                topic = bus.topics.rpc.request(service="echo", method="ping")
                reply = await bus.request(topic, RpcRequest(args={"n": 1}), timeout=10)
                assert reply.payload.ok and reply.envelope.sender == "echo-main"
            for name, url in s.metrics.items():
                body = await asyncio.to_thread(
                    lambda u=url: urllib.request.urlopen(u, timeout=5).read().decode()
                )
                assert "mapleverse_bus_published" in body, f"{name}: {url}"
            for name in services:
                assert await s.stop(name) == 0, "".join(s.logs[name])
        async with Bus(operator, kind="cli") as bus:
            statuses = await bus.subscribe(bus.topics.component.status())
            seen: dict[tuple[str, str], str] = {}
            deadline = time.monotonic() + 10
            while len(seen) < len(services) and time.monotonic() < deadline:
                msg = await statuses.get(timeout=10)
                assert isinstance(msg.payload, Status) and msg.retain
                seen[msg.payload.kind, msg.payload.id] = msg.payload.state
            assert seen == {(resolve(c.component).kind, c.id): "offline" for c in services.values()}
