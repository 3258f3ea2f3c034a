"""A mesh manager: one Raft node of a mesh, carried over MQTT QoS 1.

Subscribes                                  Publishes
  mesh/{m}/raft/{me}      Raft to me          mesh/{m}/raft/{peer}     Raft to a peer
  rpc/mesh-{m}/+          requests (leader)   mesh/{m}/leader          retained, when elected
  mesh/{m}/worker/+/hb    worker beats        mesh/{m}/status          retained, leader
                                              mesh/{m}/topology        retained, leader
                                              mesh/{m}/agent/{a}/health  retained, leader

Every call into the (pure, synchronous) `RaftNode` is followed by one flush of what it wrote to
the store, and only then are its votes and acknowledgements sent: a vote or an accepted entry
is durable before anyone hears of it. (The leader's own AppendEntries go out before its flush,
as Raft §10.2.1 allows: their answers are handled only after it.) Only the leader answers requests; a write request is answered once its entry is
committed and applied, with what applying it gave. The leader also writes the applied state
for everyone to read (`FencedStore`), stamped with its term: a leader that was paused and
deposed writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from bus import Bus, BusError, PacketTooLarge, Subscription
from components.mesh_manager.games import GameMaster, mafia_rules
from components.mesh_manager.settings import MeshManagerSettings
from components.mesh_manager.store import Fenced, FencedStore, MeshLogStore, PendingStorage
from components.runtime.component import Component
from mesh import (
    AppendEntries,
    Envelope,
    LogEntry,
    Message,
    MessageError,
    NotLeader,
    RaftError,
    RaftNode,
    Role,
    message_from_dict,
)
from mesh.payloads import AgentHealth, ManagerInfo, MeshLeader, MeshStatus, MeshTopology, RaftPacket
from mesh.state import MeshState, check_command
from store import Store, StoreError, StoreSettings, open_store

__all__ = ["MeshManager"]

WRITE_METHODS = {
    "join": "join",
    "leave": "leave",
    "add-agent": "add_agent",
    "remove-agent": "remove_agent",
    "update": "update",
}
MEMBERSHIP = frozenset({"join", "leave", "add_agent", "remove_agent", "create"})
COMMIT_TIMEOUT = 5.0
MAX_COMMAND_BYTES = (
    16 * 1024
)  # a log entry; an AppendEntries batches them up to its limit  # seconds a write request waits for its entry to commit


class MeshManager(Component):
    kind = "mesh-manager"
    settings_model = MeshManagerSettings
    settings: MeshManagerSettings

    def __init__(self, settings: MeshManagerSettings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        s = settings
        self.mesh = s.mesh
        t = self.topics
        self.inbox_topic = t["mesh.raft"].build(mesh=self.mesh, node=self.id)
        self.rpc_topic = t["rpc.request"].build(service=f"mesh-{self.mesh}", method="+")
        self.state = MeshState(self.mesh)
        self.state.game_rules = mafia_rules
        self.games = GameMaster(self)
        self.node: RaftNode | None = None
        self.db: Store | None = None
        self.fenced: FencedStore | None = None
        self._log_store: MeshLogStore | None = None
        self._storage: PendingStorage | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._waiting: dict[int, tuple[int, asyncio.Future[dict[str, Any]]]] = {}
        self._led_term = 0  # the term this node last announced itself leader in
        self._leader_since = 0.0
        self._beats: dict[str, tuple[float, float]] = {}  # worker -> (monotonic, interval)
        self._health: dict[str, str] = {}
        self._failed_at: dict[str, float] = {}
        self._peer_seen: dict[str, float] = {}
        self._state_dirty = asyncio.Event()
        self._broken: StoreError | None = None
        self.fenced_refusals = 0
        """Writes the store refused because a newer leader had written (for tests)."""

    def serves(self) -> list[str]:
        return [*super().serves(), str(self.inbox_topic), str(self.rpc_topic)]

    @property
    def role(self) -> Role | None:
        return self.node.role if self.node is not None else None

    # -- wiring ---------------------------------------------------------------------------------
    async def main(self, bus: Bus) -> None:
        s = self.settings
        self.db = await open_store(StoreSettings(url=s.store_url))
        log_db = self.db
        try:
            if s.log_url() != s.store_url:
                log_db = await open_store(StoreSettings(url=s.log_url()))
            self._log_store = MeshLogStore(log_db, self.mesh, self.id)
            self._storage = self._log_store.storage(await self._log_store.load())
            self.fenced = FencedStore(self.db)
            self.node = RaftNode(
                self.id,
                s.manager_ids(),
                self._storage,
                rng=random.Random(),
                election_timeout=(s.mesh_election_min, s.mesh_election_max),
                heartbeat_interval=s.mesh_heartbeat,
                # an AppendEntries fits the packet limit with room for its envelope
                max_batch_bytes=s.max_packet_size // 2,
                entry_size=_entry_size,
            )
            inbox = bus.subscribe(self.inbox_topic, maxsize=100_000)
            requests = bus.subscribe(self.rpc_topic)
            beats = bus.subscribe(self.topics["mesh.worker.heartbeat"].build(mesh=self.mesh))
            actions = bus.subscribe(self.topics["mafia.act"].build(mesh=self.mesh))
            for sub in (inbox, requests, beats, actions):
                await sub.start()
            self.serving()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._inbox(inbox), name="mesh-inbox")
                tg.create_task(self._timers(), name="mesh-timers")
                tg.create_task(self._requests(requests), name="mesh-requests")
                tg.create_task(self._worker_beats(beats), name="mesh-beats")
                tg.create_task(self._watch_workers(), name="mesh-health")
                tg.create_task(self._publish_state(), name="mesh-state")
                tg.create_task(self.games.actions(actions), name="mesh-game-actions")
                tg.create_task(self.games.run(), name="mesh-games")
        finally:
            if self._log_store is not None:
                self._log_store.close()
            if log_db is not self.db:
                await log_db.close()
            await self.db.close()

    # -- driving the Raft node ------------------------------------------------------------------
    async def _step(self, work: Callable[[float], list[Envelope]]) -> None:
        """Run `work` on the node, persist what it wrote, apply what committed, then send."""
        assert self.node is not None and self._log_store is not None and self._storage
        async with self._lock:
            if self._broken is not None:
                raise self._broken
            out = work(time.monotonic())
            # The leader's AppendEntries may leave before its own write is durable (Raft
            # §10.2.1): their answers are handled under this lock, after the flush, so nothing
            # commits on a write that could still be lost. Votes and acknowledgements wait.
            later = []
            for envelope in out:
                if type(envelope.message) is AppendEntries:
                    await self._send(envelope)
                else:
                    later.append(envelope)
            try:
                await self._log_store.flush(self._storage)
            except StoreError as exc:
                # The node's memory is now ahead of its disk, and its AppendEntries may be out:
                # going on could commit an entry held durably by too few. Stop; a restart
                # resumes from what is stored.
                self.log.critical("the Raft log could not be written, stopping: %s", exc)
                self._broken = exc
                self._wake.set()  # the timer loop's next step raises it out of main()
                raise
            self._apply_committed()
            for envelope in later:
                await self._send(envelope)
            await self._after_step()
        self._wake.set()

    async def _send(self, envelope: Envelope) -> None:
        topic = self.topics["mesh.raft"].build(mesh=self.mesh, node=envelope.to)
        packet = RaftPacket(to=envelope.to, message=envelope.message.to_dict())
        try:
            await self.bus.publish(topic, packet)
        except PacketTooLarge as exc:  # never expected: batches and commands are capped
            self.log.error("Raft message to %s not sent: %s", envelope.to, exc)
        except BusError:  # a lost message is Raft's everyday weather
            pass

    async def _inbox(self, sub: Subscription) -> None:
        assert self.node is not None
        node = self.node
        async for msg in sub:
            try:
                message = message_from_dict(msg.payload.message)
            except MessageError as exc:
                await self.bus.dead_letter(msg, f"not a Raft message: {exc}")
                continue
            if message.sender not in node.peers:
                await self.bus.dead_letter(
                    msg, f"{message.sender!r} is not a manager of {self.mesh}"
                )
                continue
            self._peer_seen[message.sender] = time.time()
            try:
                await self._step(functools.partial(_receive, node, message))
            except RaftError as exc:  # a message no correct peer sends (a forged one)
                await self.bus.dead_letter(msg, f"refused by Raft: {exc}")

    async def _timers(self) -> None:
        assert self.node is not None
        node = self.node
        await self._step(node.tick)  # starts the election timer
        loop = asyncio.get_running_loop()
        while True:
            deadline = node.next_deadline()
            delay = 0.05 if deadline is None else max(0.0, deadline - time.monotonic())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(loop.time() + delay):
                    await self._wake.wait()
                continue  # something happened: the deadline may have moved
            await self._step(node.tick)

    def _apply_committed(self) -> None:
        assert self.node is not None
        for entry in self.node.take_applied():
            result = self.state.apply(entry.index, entry.command)
            if entry.command.get("op") in MEMBERSHIP:  # the topology changed: publish it now
                self._state_dirty.set()
            waiting = self._waiting.pop(entry.index, None)
            if waiting is None:
                continue
            term, future = waiting
            if future.done():
                continue
            if entry.term == term:
                future.set_result(result)
            else:  # another leader's entry took the index: ours was never committed
                future.set_result(_not_committed())

    async def _after_step(self) -> None:
        node = self.node
        assert node is not None
        if node.role is Role.LEADER and self._led_term != node.term:
            self._led_term = node.term
            self._leader_since = time.time()
            now = time.monotonic()
            for worker in self.state.workers:  # every worker gets a full grace from now
                self._beats.setdefault(worker, (now, self.settings.mesh_heartbeat))
            self.log.info("leader of mesh %s in term %d", self.mesh, node.term)
            await self._announce()
        elif node.role is not Role.LEADER:
            for index, (_, future) in list(self._waiting.items()):
                if not future.done():
                    future.set_result(_not_committed())
                del self._waiting[index]

    # -- requests (the leader answers) -----------------------------------------------------------
    async def _requests(self, sub: Subscription) -> None:
        tasks: set[asyncio.Task[None]] = set()
        async for msg in sub:
            if self.role is not Role.LEADER:
                continue  # followers stay silent: the caller retries until a leader answers
            task = asyncio.get_running_loop().create_task(self._answer(msg, self.handle))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def handle(self, method: str, args: dict[str, Any]) -> Any:
        if method in WRITE_METHODS:
            command = {**args, "op": WRITE_METHODS[method]}
            command.setdefault("request", uuid.uuid4().hex)
            return await self.propose(command)
        if method == "agents":  # through the log: a deposed leader cannot commit it
            command = {"op": "read", "request": uuid.uuid4().hex}
            for key in ("agent", "worker"):
                if args.get(key) is not None:
                    command[key] = args[key]
            return await self.propose(command)
        if method == "status":
            return self._mesh_status().model_dump(mode="json")
        if method == "create":
            by = str(args.get("by", "")) or None
            return await self.propose({"op": "create", "at": time.time(), "by": by})
        if method == "provision":
            return await self._provision(args)
        if method == "terminate":
            return await self._terminate(args)
        if method == "mafia-start":
            return await self.games.start(args)
        if method == "mafia-story":
            return await self.games.story(args)
        raise KeyError(f"unknown method {method!r}; choose one of {sorted(self._methods())}")

    def _methods(self) -> set[str]:
        return {
            *WRITE_METHODS,
            "agents",
            "status",
            "create",
            "provision",
            "terminate",
            "mafia-start",
            "mafia-story",
        }

    async def _provision(self, args: dict[str, Any]) -> dict[str, Any]:
        """A worker's place in the mesh and `agents` agents for it (`WORKER-aN`), at once."""
        worker, count = str(args["worker"]), int(args.get("agents", 1))
        if not 0 <= count <= 1000:
            raise ValueError(f"agents must be 0 to 1000, got {count}")
        joined = await self.propose({"op": "join", "worker": worker})
        if not joined.get("ok"):
            return joined
        have = set(joined["agents"])
        added: list[str] = []
        n = 0
        while len(added) < count:
            n += 1
            agent = f"{worker}-a{n}"
            if agent in have or agent in self.state.agents:
                continue
            result = await self.propose(
                {"op": "add_agent", "worker": worker, "agent": agent, "state": {}}
            )
            if not result.get("ok"):
                return {**result, "added": added}
            added.append(agent)
        return {"ok": True, "worker": worker, "added": added, "agents": sorted(have | set(added))}

    async def _terminate(self, args: dict[str, Any]) -> dict[str, Any]:
        """An agent out of the mesh (`agent`), or a worker with all its agents (`worker`)."""
        agent = args.get("agent")
        if agent is not None:
            known = self.state.agents.get(str(agent))
            if known is None:
                raise KeyError(f"unknown agent {agent!r} in mesh {self.mesh!r}")
            return await self.propose(
                {"op": "remove_agent", "worker": known["worker"], "agent": str(agent)}
            )
        worker = str(args["worker"])
        if worker not in self.state.workers:
            raise KeyError(f"unknown worker {worker!r} in mesh {self.mesh!r}")
        return await self.propose({"op": "leave", "worker": worker, "reason": "terminated"})

    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        """Append `command` to the log; the result of applying it once committed."""
        bad = check_command(command)
        if bad is not None:
            raise ValueError(bad)
        size = len(orjson.dumps(command))
        if size > MAX_COMMAND_BYTES:
            raise ValueError(f"the command is {size} bytes; at most {MAX_COMMAND_BYTES} fit")
        node = self.node
        assert node is not None
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        result: list[Any] = []

        def work(now: float) -> list[Envelope]:
            proposed = node.propose(command, now)
            result.append(proposed)
            if isinstance(proposed, NotLeader):
                return []
            self._waiting[proposed.index] = (proposed.term, future)
            return list(proposed.messages)

        await self._step(work)
        if isinstance(result[0], NotLeader):
            return {"ok": False, "error": "not the leader any more; retry"}
        try:
            async with asyncio.timeout(COMMIT_TIMEOUT):
                return await future
        except TimeoutError:
            return {"ok": False, "error": "not committed in time (no majority?); retry"}

    # -- workers' health --------------------------------------------------------------------------
    async def _worker_beats(self, sub: Subscription) -> None:
        async for msg in sub:
            beat = msg.payload
            self._beats[beat.worker] = (time.monotonic(), beat.interval)

    async def _watch_workers(self) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(s.mesh_heartbeat)
            if self.role is not Role.LEADER:
                continue
            now = time.monotonic()
            for worker in list(self.state.workers):
                last, interval = self._beats.get(worker, (now, s.mesh_heartbeat))
                missed = int((now - last) / interval)
                health = (
                    "ok" if missed < 1 else "late" if missed < s.mesh_worker_misses else "failed"
                )
                if health != self._health.get(worker):
                    self._health[worker] = health
                    await self._publish_health(worker, health, missed)
                if health != "failed":
                    self._failed_at.pop(worker, None)
                    continue
                since = self._failed_at.setdefault(worker, now)
                if now - since >= s.mesh_worker_grace:
                    self.log.warning("worker %s missed its beats: removing it", worker)
                    agents = list(self.state.workers.get(worker, []))
                    result = await self.propose(
                        {"op": "leave", "worker": worker, "reason": "failed"}
                    )
                    if result.get("ok"):
                        self._failed_at.pop(worker, None)
                        self._health.pop(worker, None)
                        for agent in agents:
                            await self._agent_health(agent, worker, "removed", missed)

    async def _publish_health(self, worker: str, health: str, missed: int) -> None:
        for agent in self.state.workers.get(worker, []):
            await self._agent_health(agent, worker, health, missed)
        self._state_dirty.set()

    async def _agent_health(self, agent: str, worker: str, health: str, missed: int) -> None:
        last = self._beats.get(worker)
        beat = time.time() - (time.monotonic() - last[0]) if last else None
        topic = self.topics["mesh.agent.health"].build(mesh=self.mesh, agent=agent)
        payload = AgentHealth(
            mesh=self.mesh, agent=agent, worker=worker, health=health, last_beat=beat, missed=missed
        )
        with contextlib.suppress(BusError):
            await self.bus.publish(topic, payload)

    # -- what the leader publishes and writes -----------------------------------------------------
    async def _announce(self) -> None:
        node = self.node
        assert node is not None
        leader = MeshLeader(
            mesh=self.mesh,
            leader=self.id,
            term=node.term,
            since=self._leader_since,
            commit_index=node.commit_index,
        )
        with contextlib.suppress(BusError):
            await self.bus.publish(self.topics["mesh.leader"].build(mesh=self.mesh), leader)
        self._state_dirty.set()

    async def republish(self, bus: Bus) -> None:
        if self.role is Role.LEADER:
            await self._announce()

    async def _publish_state(self) -> None:
        """While leading: the retained status and topology, and the fenced write of the state,
        when workers or agents came or went (at most every heartbeat), and every status
        interval."""
        s = self.settings
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(s.mesh_status_interval):
                    await self._state_dirty.wait()
            self._state_dirty.clear()
            node = self.node
            if node is None or node.role is not Role.LEADER:
                continue
            token = node.fencing_token()
            t = self.topics
            with contextlib.suppress(BusError):
                await self.bus.publish(t["mesh.status"].build(mesh=self.mesh), self._mesh_status())
                topology = MeshTopology(
                    mesh=self.mesh,
                    leader=self.id,
                    term=node.term,
                    managers=[self.id, *node.peers],
                    workers={w: list(a) for w, a in self.state.workers.items()},
                )
                await self.bus.publish(t["mesh.topology"].build(mesh=self.mesh), topology)
            if token is not None:
                await self.write_state(token)
            await asyncio.sleep(s.mesh_heartbeat)

    async def write_state(self, token: int) -> bool:
        """Write the applied state for everyone to read, fenced by `token` (the term)."""
        assert self.fenced is not None
        try:
            await self.fenced.write(self.mesh, "state", self.state.dump(), token)
        except Fenced as exc:
            self.fenced_refusals += 1
            self.log.warning("%s (a newer leader wrote since)", exc)
            return False
        except StoreError as exc:
            self.log.error("mesh state not written: %s", exc)
            return False
        return True

    def _mesh_status(self) -> MeshStatus:
        node = self.node
        assert node is not None
        managers = [ManagerInfo(id=self.id, role=str(node.role), term=node.term)]
        for peer in node.peers:
            managers.append(
                ManagerInfo(
                    id=peer, role="follower", term=node.term, last_seen=self._peer_seen.get(peer)
                )
            )
        return MeshStatus(
            mesh=self.mesh,
            leader=self.id,
            term=node.term,
            commit_index=node.commit_index,
            applied=self.state.applied,
            managers=managers,
            workers={w: self._health.get(w, "ok") for w in self.state.workers},
            agents=len(self.state.agents),
            updated=time.time(),
        )


def _entry_size(entry: LogEntry) -> int:
    return len(orjson.dumps(dict(entry.command))) + 48  # + index, term, keys


def _receive(node: RaftNode, message: Message, now: float) -> list[Envelope]:
    return node.receive(message, now)


def _not_committed() -> dict[str, Any]:
    return {"ok": False, "error": "not committed: the leader changed; retry"}
