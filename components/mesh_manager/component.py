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
as Raft §10.2.1 allows: their answers are handled only after it.) Only the leader answers
requests (`handlers.py`); a write request is answered once its entry is committed and
applied, with what applying it gave. The leader also writes the applied state
for everyone to read (`FencedStore`), stamped with its term: a leader that was paused and
deposed writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Callable
from typing import Any

import orjson

from bus import Bus, BusError, PacketTooLarge, Subscription
from components.mesh_manager.games import GameMaster, mafia_rules
from components.mesh_manager.handlers import MeshRequests
from components.mesh_manager.health import WorkerHealth
from components.mesh_manager.settings import MeshManagerSettings
from components.mesh_manager.store import Fenced, FencedStore, MeshLogStore, PendingStorage
from components.runtime.component import Component
from mesh import (
    AppendEntries,
    AppendResponse,
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
from mesh.payloads import ManagerInfo, MeshLeader, MeshStatus, MeshTopology, RaftPacket
from mesh.state import MeshState, check_command
from store import Store, StoreError, StoreSettings, open_store

__all__ = ["MeshManager"]

MEMBERSHIP = frozenset({"join", "leave", "add_agent", "remove_agent", "create"})
COMMIT_TIMEOUT = 5.0  # seconds a write request waits for its entry to commit
MAX_COMMAND_BYTES = 16 * 1024  # a log entry; an AppendEntries batches them up to its limit


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
        self.requests = MeshRequests(self)
        self.node: RaftNode | None = None
        self.db: Store | None = None
        self.fenced: FencedStore | None = None
        self._log_store: MeshLogStore | None = None
        self._storage: PendingStorage | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._waiting: dict[int, tuple[int, asyncio.Future[dict[str, Any]]]] = {}
        self._led_term = 0  # the term this node last became leader in
        self._announced = 0  # the term it last announced itself leader in
        self._term_start = 0  # the index of its first entry as leader (its no-op)
        self._acked: dict[str, float] = {}  # peer -> when we sent the latest it answered
        self._leader_since = 0.0
        self.health = WorkerHealth(self)
        self._peer_seen: dict[str, float] = {}
        self._state_dirty = asyncio.Event()
        self._broken: StoreError | None = None
        self._inflight: dict[str, asyncio.Task[Any]] = {}  # request id -> its answer
        self._owner = f"{self.mesh}/{self.id}"
        self._snapshot_at = 0  # the applied index of the last snapshot
        self._snapshotting: asyncio.Task[None] | None = None
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
            self._log_store = MeshLogStore(
                log_db, self.mesh, self.id, exclusive=log_db is not self.db
            )
            stored = await self._log_store.load()
            self._storage = self._log_store.storage(stored)
            snapshot = await self.db.get_snapshot("raft-state", self._owner, "state")
            if snapshot is not None and int(snapshot.payload["applied"]) <= len(stored.entries):
                self.state.load(snapshot.payload)  # the log up to it is applied already
                self._snapshot_at = self.state.applied
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
                tg.create_task(self.health.follow(beats), name="mesh-beats")
                tg.create_task(self.health.watch(), name="mesh-health")
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
    async def _step(
        self, work: Callable[[float], list[Envelope]], answering: tuple[str, float] | None = None
    ) -> None:
        """Run `work` on the node, persist what it wrote, apply what committed, then send.
        `answering`: the peer and stamp of the AppendEntries being answered (echoed back)."""
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
                await self._send(envelope, answering)
            await self._after_step()
        self._wake.set()

    async def _send(self, envelope: Envelope, answering: tuple[str, float] | None = None) -> None:
        """Publish one Raft message: an AppendEntries stamped with when it went, an answer to
        the AppendEntries of `answering` (peer, stamp) carrying its stamp back."""
        topic = self.topics["mesh.raft"].build(mesh=self.mesh, node=envelope.to)
        message = envelope.message
        stamp = answers = None
        if type(message) is AppendEntries:
            stamp = time.monotonic()
        elif type(message) is AppendResponse and answering and answering[0] == envelope.to:
            answers = answering[1]
        packet = RaftPacket(to=envelope.to, message=message.to_dict(), stamp=stamp, answers=answers)
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
            asked = msg.payload.answers  # when we sent what this answers (our clock)
            if (
                type(message) is AppendResponse
                and node.role is Role.LEADER
                and message.term == node.term
                and asked is not None
            ):
                self._acked[message.sender] = max(asked, self._acked.get(message.sender, asked))
            stamp = msg.payload.stamp
            answering = (message.sender, stamp) if stamp is not None else None
            try:
                await self._step(functools.partial(_receive, node, message), answering)
            except RaftError as exc:  # a message no correct peer sends (a forged one)
                await self.bus.dead_letter(msg, f"refused by Raft: {exc}")
                continue
            if self._announced != node.term and self.has_lease():
                self._announced = node.term
                await self._announce()

    def caught_up(self) -> bool:
        """Whether this node leads with a lease and has applied its own term's first entry
        (so its state holds everything committed before it was elected)."""
        return self.has_lease() and self.state.applied >= self._term_start

    def mark_dirty(self) -> None:
        """Something the retained status shows changed: publish it soon."""
        self._state_dirty.set()

    def has_lease(self) -> bool:
        """Whether this node leads and a majority answered AppendEntries it sent within the
        shortest election timeout: no other leader can have been elected meanwhile. Only then
        does it publish what a leader publishes (a leader that was paused or cut off learns of
        a newer term only from a message it may not have read yet). The time counts from when
        it sent what was answered, not when the answer was read: answers that waited in the
        socket through a pause prove nothing about now."""
        node = self.node
        if node is None or node.role is not Role.LEADER:
            return False
        since = time.monotonic() - self.settings.mesh_election_min
        fresh = sum(1 for p in node.peers if self._acked.get(p, -1.0) >= since)
        return fresh + 1 > (len(node.peers) + 1) // 2

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
            op = entry.command.get("op")
            if op in MEMBERSHIP:  # the topology changed: publish it now
                self._state_dirty.set()
            elif op == "game" and result.get("ok") and not result.get("duplicate"):
                self.games.observe(str(entry.command["game"]), result.get("events", []))
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
        every = self.settings.mesh_snapshot_every
        busy = self._snapshotting is not None and not self._snapshotting.done()
        if self.state.applied - self._snapshot_at >= every and not busy:
            self._snapshot_at = self.state.applied
            self._snapshotting = asyncio.get_running_loop().create_task(
                self._snapshot(self.state.dump())
            )

    async def _after_step(self) -> None:
        node = self.node
        assert node is not None
        if node.role is Role.LEADER and self._led_term != node.term:
            self._led_term = node.term
            self._leader_since = time.time()
            self._term_start = node.last_log_index  # its no-op
            self._forget_leadership()
            self.health.grace(self.state.workers)
            self.log.info("leader of mesh %s in term %d", self.mesh, node.term)
            # announced once a majority answered its first heartbeats (has_lease, _inbox)
        elif node.role is not Role.LEADER:
            if self._led_term:
                self._forget_leadership()
                self._led_term = 0
            for index, (_, future) in list(self._waiting.items()):
                if not future.done():
                    future.set_result(_not_committed())
                del self._waiting[index]

    def _forget_leadership(self) -> None:
        """What one leadership learnt is not the next one's: health is judged afresh."""
        self._acked.clear()
        self.health.reset()
        self.games.reset()

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
        """Answer one request. A request sent again (same `request` id) while the first is
        still being answered waits for that answer instead of running twice."""
        request = args.get("request")
        if not isinstance(request, str):
            return await self.requests(method, args)
        running = self._inflight.get(request)
        if running is None:
            running = asyncio.get_running_loop().create_task(self.requests(method, args))
            self._inflight[request] = running
            running.add_done_callback(lambda _: self._inflight.pop(request, None))
        return await asyncio.shield(running)

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
        if self.has_lease():
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
            if node is None or not self.has_lease():
                continue
            token = node.fencing_token()
            t = self.topics
            with contextlib.suppress(BusError):
                await self.bus.publish(t["mesh.status"].build(mesh=self.mesh), self.mesh_status())
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

    async def _snapshot(self, state: dict[str, Any]) -> None:
        """This manager's applied state at an index, for its own restart (in the background:
        the log holds everything meanwhile)."""
        assert self.db is not None
        try:
            await self.db.put_snapshot("raft-state", self._owner, "state", state)
        except StoreError as exc:
            self.log.error(
                "snapshot at %d not written (the log has it all): %s", state["applied"], exc
            )

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

    def mesh_status(self) -> MeshStatus:
        node = self.node
        assert node is not None
        managers = [ManagerInfo(id=self.id, role=str(node.role), term=node.term)]
        recent = time.monotonic() - self.settings.mesh_election_max
        for peer in node.peers:
            answers = self._acked.get(peer, -1.0) >= recent  # it follows this leader
            managers.append(
                ManagerInfo(
                    id=peer,
                    role="follower" if answers else "unknown",
                    term=node.term,
                    last_seen=self._peer_seen.get(peer),
                )
            )
        return MeshStatus(
            mesh=self.mesh,
            leader=self.id,
            term=node.term,
            commit_index=node.commit_index,
            applied=self.state.applied,
            managers=managers,
            workers={w: self.health.of(w) for w in self.state.workers},
            agents=len(self.state.agents),
            updated=time.time(),
        )


def _entry_size(entry: LogEntry) -> int:
    return len(orjson.dumps(dict(entry.command))) + 48  # + index, term, keys


def _receive(node: RaftNode, message: Message, now: float) -> list[Envelope]:
    return node.receive(message, now)


def _not_committed() -> dict[str, Any]:
    return {"ok": False, "error": "not committed: the leader changed; retry"}
