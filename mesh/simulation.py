"""The deterministic simulation that proves the Raft core safe, seed by seed.

`simulate(seed)` runs a cluster of `RaftNode`s over a simulated network on a virtual clock.
Every random choice comes from `random.Random(seed)`, so a seed is a run, replayed exactly:

    python -m mesh.simulation --seed 1234          one seed, with its trace
    python -m mesh.simulation --seeds 0:10000      a sweep; prints the seeds that fail

A run, as hashicorp/raft's fuzzy tests have it:

1. The seed draws the cluster (3 or 5 nodes, pre-vote on or off) and its faults: message drops,
   duplicates, delay spikes that reorder messages, partitions, crashes.
2. `steps` rounds of a few election timeouts each. At the start of each, a partition cuts the
   leader plus a random minority off, or an earlier one is healed (none, all, or part of the
   cut-off nodes rejoin); a node crashes, or a crashed one restarts from its storage (which
   survives the crash; everything else is lost). A client proposes commands throughout, to
   the node it believes leads, following NotLeader redirects.
3. Healing: the partition and the message faults end and every crashed node restarts. Within
   `LIVENESS_BOUND` of virtual time a leader must be elected and a command proposed after
   the healing must be applied by every node.

The checker runs after every event on the node the event touched, and verifies over the whole
run (Raft's Figure 3, plus the rule behind the first):

- **election safety**: at most one leader per term;
- **one vote per term**: no node grants its vote to two candidates in one term, across crashes;
- **log matching**: entries with the same index and term hold the same command and follow
  entries of the same term, in every log, at all times; by induction the logs are identical
  up to them. Checked on every write to a node's storage;
- **leader completeness**: an entry committed in a term is in the log of every leader of a
  later term (the term an entry was committed in is bounded above by the term of the first
  node that applied it, so the check never accuses a correct node);
- **state machine safety**: nodes apply entries in index order, and no two apply different
  entries at one index.

A safety violation stops the run; the result names the invariant, the virtual time and the
event. A liveness failure (no leader, or no command applied everywhere in time after healing)
is reported apart from safety.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mesh.checker import Broken, Checker, ObservedStorage
from mesh.messages import (
    AppendEntries,
    AppendResponse,
    Envelope,
    LogEntry,
    MeshError,
    Message,
    RequestVote,
    VoteResponse,
)
from mesh.raft import NotLeader, RaftNode, Role
from mesh.storage import RaftStorage

__all__ = [
    "ELECTION_TIMEOUT",
    "HEARTBEAT_INTERVAL",
    "LIVENESS_BOUND",
    "Faults",
    "NodeFactory",
    "SimResult",
    "SimulationFailure",
    "Violation",
    "main",
    "simulate",
]

ELECTION_TIMEOUT = (0.15, 0.30)
HEARTBEAT_INTERVAL = 0.05
LATENCY = (0.001, 0.010)
"""Every message takes this long, uniformly, plus a spike when it is reordered."""
SPIKE = 0.25
"""The longest extra delay of a reordered message (more than an election timeout)."""
LIVENESS_BOUND = 5.0
"""Virtual seconds after healing within which a command must be applied by every node."""
MAX_EVENTS = 200_000
"""A run that needs more events than this is reported as a liveness failure (a storm)."""

_DELIVER, _TICK, _CLIENT, _FAULT, _HEAL = range(5)


class NodeFactory(Protocol):
    """Builds a node: `RaftNode` itself, or a subclass (the tests break one on purpose)."""

    def __call__(
        self,
        node_id: str,
        peers: Sequence[str],
        storage: RaftStorage,
        *,
        rng: random.Random,
        election_timeout: tuple[float, float],
        heartbeat_interval: float,
        pre_vote: bool,
    ) -> RaftNode: ...


@dataclass(frozen=True, slots=True)
class Faults:
    """The network and process faults of one run."""

    drop: float
    """Probability that a message is lost."""
    duplicate: float
    """Probability that a message is delivered twice (QoS 1 redelivers)."""
    reorder: float
    """Probability that a message is held back by up to `SPIKE`, overtaken by later ones."""
    partitions: bool
    crashes: bool


@dataclass(frozen=True, slots=True)
class Violation:
    """A safety invariant broken at virtual time `time`, by event number `event`."""

    invariant: str
    detail: str
    time: float
    event: int


@dataclass(frozen=True)
class SimResult:
    """What one seed did, and what went wrong if anything did."""

    seed: int
    nodes: int
    steps: int
    pre_vote: bool
    faults: Faults
    violation: Violation | None
    liveness: str | None
    """Why the cluster did not recover after healing, or None when it did."""
    recovery: float | None
    """Virtual seconds from healing until every node applied a new command."""
    events: int
    virtual_time: float
    leaders: int
    """Terms that had a leader."""
    max_term: int
    committed: int
    proposals: int
    dropped: int
    duplicated: int
    partitions: int
    crashes: int
    trace: tuple[str, ...] = field(default=(), repr=False)

    @property
    def safe(self) -> bool:
        return self.violation is None

    @property
    def ok(self) -> bool:
        return self.violation is None and self.liveness is None

    def replay_command(self) -> str:
        seed, nodes, steps = self.seed, self.nodes, self.steps
        return f"python -m mesh.simulation --seed {seed} --nodes {nodes} --steps {steps}"

    def report(self) -> str:
        f = self.faults
        head = (
            f"seed {self.seed}: {self.nodes} nodes, {self.steps} steps, "
            f"pre_vote={self.pre_vote}, drop={f.drop}, duplicate={f.duplicate}, "
            f"reorder={f.reorder}, partitions={f.partitions}, crashes={f.crashes}; "
            f"{self.events} events, {self.virtual_time:.3f} s virtual, {self.leaders} leaders, "
            f"max term {self.max_term}, {self.committed} committed"
        )
        lines = [head]
        if self.violation is not None:
            v = self.violation
            lines.append(
                f"  SAFETY: {v.invariant} broken at t={v.time:.4f} (event {v.event}): {v.detail}"
            )
        if self.liveness is not None:
            lines.append(f"  LIVENESS: {self.liveness}")
        if self.ok:
            lines.append(f"  ok; recovered {self.recovery:.3f} s after healing")
        else:
            lines.append(f"  replay: {self.replay_command()}")
        return "\n".join(lines)

    def raise_for_failure(self) -> None:
        """Raise SimulationFailure, naming the seed, unless the run was safe and live."""
        if not self.ok:
            raise SimulationFailure(self)


class SimulationFailure(MeshError, AssertionError):
    """A seed broke an invariant or did not recover; `result` says which and how to replay."""

    def __init__(self, result: SimResult) -> None:
        self.result = result
        super().__init__(result.report())


@dataclass
class _Counters:
    events: int = 0
    proposals: int = 0
    dropped: int = 0
    duplicated: int = 0
    partitions: int = 0
    crashes: int = 0


class _Run:
    """One seed's cluster, network, client and fault schedule."""

    def __init__(
        self,
        rng: random.Random,
        n: int,
        steps: int,
        pre_vote: bool,
        faults: Faults,
        client_interval: float,
        factory: NodeFactory,
        trace: list[str] | None,
    ) -> None:
        self.rng = rng
        self.pre_vote = pre_vote
        self.faults = faults
        self.drop, self.duplicate, self.reorder = faults.drop, faults.duplicate, faults.reorder
        self.client_interval = client_interval
        self.factory = factory
        self.trace = trace
        self.checker = Checker()
        self.count = _Counters()
        self.ids = [f"n{i}" for i in range(n)]
        self.storage = {i: ObservedStorage(i, self.checker) for i in self.ids}
        self.nodes: dict[str, RaftNode | None] = dict.fromkeys(self.ids)
        self.group = dict.fromkeys(self.ids, 0)
        self.cut: list[str] = []
        self.scheduled = dict.fromkeys(self.ids, math.inf)
        self.seen_role: dict[str, tuple[Role, int]] = {}
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.now = 0.0
        self.healed_at: float | None = None
        self.deadline = math.inf
        self.command = 0
        self.first_after_heal = math.inf
        self.live_nodes: set[str] = set()
        self.recovery: float | None = None
        self.guess = self.ids[0]

        for node_id in self.ids:
            self._start(node_id)
        start = rng.uniform(0.2, 0.6)
        self._push(start * rng.random(), _CLIENT, None)
        for _ in range(steps):
            self._push(start, _FAULT, None)
            start += rng.uniform(0.5, 2.0) * ELECTION_TIMEOUT[1]
        self._push(start, _HEAL, None)

    # -- the event loop -------------------------------------------------------------------

    def run(self) -> str | None:
        """Run to recovery; the liveness failure, if any. Safety violations raise Broken."""
        heap, nodes, count = self.heap, self.nodes, self.count
        tracing = self.trace is not None
        while heap:
            now, _, kind, payload = heapq.heappop(heap)
            if now > self.deadline:
                return self._stuck()
            self.now = now
            count.events += 1
            if count.events > MAX_EVENTS:
                return f"more than {MAX_EVENTS} events: a message storm"
            if kind == _DELIVER:
                src, envelope = payload
                node = nodes[envelope.to]
                if tracing or node is None or self.group[src] != self.group[envelope.to]:
                    self._deliver(payload)  # the slow path: lost, or traced
                else:
                    self._after(node, node.receive(envelope.message, now))
            elif kind == _TICK:
                if self.scheduled[payload] == now:
                    self.scheduled[payload] = math.inf
                    node = self.nodes[payload]
                    if node is not None:
                        self._after(node, node.tick(now))
            elif kind == _CLIENT:
                self._client()
            elif kind == _FAULT:
                self._fault()
            else:
                self._heal()
            if self.recovery is not None:
                return None
        return self._stuck()  # nothing left to happen (cannot be: nodes tick forever)

    def _push(self, at: float, kind: int, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, payload))

    def _deliver(self, payload: tuple[str, Envelope]) -> None:
        src, envelope = payload
        dst = envelope.to
        node = self.nodes[dst]
        if node is None or self.group[src] != self.group[dst]:
            self.count.dropped += 1
            if self.trace is not None:
                self._log(f"lost {src}->{dst} {_show(envelope.message)}")
            return
        if self.trace is not None:
            self._log(f"{src}->{dst} {_show(envelope.message)}")
        self._after(node, node.receive(envelope.message, self.now))

    def _after(self, node: RaftNode, out: list[Envelope]) -> None:
        """Check `node` after it handled an event, send what it returned, schedule its tick."""
        node_id = node.id
        if node.role is Role.LEADER and self.checker.leaders.get(node.term) != node_id:
            self.checker.on_leader(node)
        applied = node.take_applied()
        if applied:
            self.checker.on_applied(node_id, node.term, applied)
            if self.healed_at is not None:
                self._note_applied(node_id, applied)
        if self.trace is not None:
            self._note_role(node)
        if out:
            self._send(node_id, out)
        deadline = node.next_deadline()
        scheduled = self.scheduled
        if deadline is not None and deadline < scheduled[node_id]:
            scheduled[node_id] = deadline
            self.seq += 1
            heapq.heappush(self.heap, (deadline, self.seq, _TICK, node_id))

    def _send(self, src: str, out: Sequence[Envelope]) -> None:
        rand = self.rng.random
        group, heap, push = self.group, self.heap, heapq.heappush
        home = group[src]
        drop, reorder, duplicate = self.drop, self.reorder, self.duplicate
        now = self.now + LATENCY[0]
        spread = LATENCY[1] - LATENCY[0]
        for envelope in out:
            message = envelope.message
            if type(message) is VoteResponse and message.granted and not message.pre_vote:
                self.checker.on_vote(src, message.term, envelope.to)
            if group[envelope.to] != home or (drop and rand() < drop):
                self.count.dropped += 1
                if self.trace is not None:
                    self._log(f"drop {src}->{envelope.to} {_show(message)}")
                continue
            at = now + rand() * spread
            if reorder and rand() < reorder:
                at += rand() * SPIKE
            self.seq += 1
            push(heap, (at, self.seq, _DELIVER, (src, envelope)))
            if duplicate and rand() < duplicate:
                self.count.duplicated += 1
                self.seq += 1
                push(heap, (at + rand() * SPIKE, self.seq, _DELIVER, (src, envelope)))

    # -- the client -----------------------------------------------------------------------

    def _client(self) -> None:
        self._push(self.now + self.client_interval, _CLIENT, None)
        node = self.nodes[self.guess]
        for _ in range(2):  # the node it believes leads, then the one that node names
            if node is None:
                break
            self.command += 1
            result = node.propose({"c": self.command}, self.now)
            if isinstance(result, NotLeader):
                if self.trace is not None:
                    self._log(f"client -> {node.id}: not leader, try {result.leader_id}")
                self.guess = result.leader_id or self.rng.choice(self.ids)
                node = self.nodes[self.guess]
                continue
            self.count.proposals += 1
            if self.trace is not None:
                self._log(f"client -> {node.id}: c={self.command} at {result.index}")
            self._send(node.id, result.messages)
            return
        if node is None:
            self.guess = self.rng.choice(self.ids)

    def _note_applied(self, node_id: str, applied: Sequence[LogEntry]) -> None:
        if any(entry.command.get("c", 0) >= self.first_after_heal for entry in applied):
            self.live_nodes.add(node_id)
            if len(self.live_nodes) == len(self.ids) and self.healed_at is not None:
                self.recovery = self.now - self.healed_at

    # -- faults ---------------------------------------------------------------------------

    def _fault(self) -> None:
        rng, faults = self.rng, self.faults
        if faults.partitions:
            if not self.cut or rng.random() < 0.3:
                self._partition()
            else:
                self._heal_partition(rng.choice(("none", "all", "part")))
        if faults.crashes:
            up = [i for i in self.ids if self.nodes[i] is not None]
            down = [i for i in self.ids if self.nodes[i] is None]
            roll = rng.random()
            if roll < 0.5 and up:
                leader = self._leader()
                victim = leader if leader is not None and rng.random() < 0.5 else rng.choice(up)
                self._crash(victim)
            elif roll < 0.8 and down:
                self._start(rng.choice(down))

    def _leader(self) -> str | None:
        """The live node leading the highest term, as the fuzzy tests ask the cluster."""
        leaders = [n for n in self.nodes.values() if n is not None and n.role is Role.LEADER]
        return max(leaders, key=lambda n: n.term).id if leaders else None

    def _partition(self) -> None:
        """Cut the leader (or any node, without one) and a random minority off the rest."""
        rng = self.rng
        first = self._leader() or rng.choice(self.ids)
        others = [i for i in self.ids if i != first]
        size = rng.randint(1, (len(self.ids) - 1) // 2)
        self.cut = [first, *rng.sample(others, size - 1)]
        self.group = {i: int(i in self.cut) for i in self.ids}
        self.count.partitions += 1
        self._log_fault(f"partition: {sorted(self.cut)} cut off")

    def _heal_partition(self, how: str) -> None:
        if how == "all":
            rejoin = list(self.cut)
        elif how == "part" and len(self.cut) > 1:
            rejoin = self.rng.sample(self.cut, self.rng.randint(1, len(self.cut) - 1))
        else:
            rejoin = []
        for node_id in rejoin:
            self.group[node_id] = 0
            self.cut.remove(node_id)
        self._log_fault(f"heal {how}: {sorted(rejoin)} rejoin, {sorted(self.cut)} still cut off")

    def _crash(self, node_id: str) -> None:
        self.nodes[node_id] = None
        self.scheduled[node_id] = math.inf
        self.count.crashes += 1
        self._log_fault(f"crash {node_id}")

    def _start(self, node_id: str) -> None:
        """Start (or restart) a node from its storage, with nothing volatile kept."""
        node = self.factory(
            node_id,
            self.ids,
            self.storage[node_id],
            rng=random.Random(self.rng.getrandbits(64)),
            election_timeout=ELECTION_TIMEOUT,
            heartbeat_interval=HEARTBEAT_INTERVAL,
            pre_vote=self.pre_vote,
        )
        self.nodes[node_id] = node
        self.checker.on_restart(node_id)
        self._log_fault(f"start {node_id} (term {node.term}, log {node.last_log_index})")
        self._after(node, node.tick(self.now))

    def _heal(self) -> None:
        """End every fault; from now on the cluster must recover within LIVENESS_BOUND."""
        self.drop = self.duplicate = self.reorder = 0.0
        self.group = dict.fromkeys(self.ids, 0)
        self.cut = []
        self._log_fault("heal: network whole, no drops, no duplicates, no reordering")
        for node_id in self.ids:
            if self.nodes[node_id] is None:
                self._start(node_id)
        self.healed_at = self.now
        self.deadline = self.now + LIVENESS_BOUND
        self.first_after_heal = self.command + 1

    def _stuck(self) -> str:
        states = ", ".join(
            f"{i}: {n.role.value} term {n.term} commit {n.commit_index} log {n.last_log_index}"
            if n is not None
            else f"{i}: down"
            for i, n in self.nodes.items()
        )
        return (
            f"no command applied by every node within {LIVENESS_BOUND} s of healing "
            f"(applied by {sorted(self.live_nodes)}); {states}"
        )

    def final_check(self) -> None:
        """Each node's log is the one in its storage (what a restart would find)."""
        for node_id, node in self.nodes.items():
            if node is not None and tuple(node.log) != self.storage[node_id].entries:
                raise Broken("log matching", f"{node_id}'s log differs from its storage")

    # -- the trace ------------------------------------------------------------------------

    def _log(self, line: str) -> None:
        if self.trace is not None:
            self.trace.append(f"{self.now:9.4f}  {line}")

    def _log_fault(self, line: str) -> None:
        self._log(f"== {line}")

    def _note_role(self, node: RaftNode) -> None:
        state = (node.role, node.term)
        if self.seen_role.get(node.id) != state:
            self.seen_role[node.id] = state
            self._log(f"** {node.id} is {node.role.value} in term {node.term}")


def _show(message: Message) -> str:
    if isinstance(message, AppendEntries):
        entries = ",".join(f"{e.index}:{e.term}" for e in message.entries)
        return (
            f"append t{message.term} prev={message.prev_log_index}:{message.prev_log_term} "
            f"[{entries}] commit={message.leader_commit}"
        )
    if isinstance(message, AppendResponse):
        outcome = f"ok {message.match_index}" if message.success else f"no {message.conflict_index}"
        return f"append-reply t{message.term} {outcome}"
    if isinstance(message, RequestVote):
        kind = "pre-vote?" if message.pre_vote else "vote?"
        return f"{kind} t{message.term} last={message.last_log_index}:{message.last_log_term}"
    kind = "pre-vote" if message.pre_vote else "vote"
    return f"{kind} t{message.term} {'yes' if message.granted else 'no'}"


def simulate(
    seed: int,
    *,
    nodes: int | None = None,
    steps: int | None = None,
    node_factory: NodeFactory = RaftNode,
    trace: bool = False,
) -> SimResult:
    """Run one seed; `nodes` (3 or 5) and `steps` (3 to 8) are drawn from it unless given.

    The draws are made whether or not they are used, so passing the drawn values replays the
    same run. With `trace`, the result carries a line per event.
    """
    rng = random.Random(seed)
    drawn_nodes = rng.choice((3, 5))
    drawn_steps = rng.randint(3, 8)
    n = drawn_nodes if nodes is None else nodes
    k = drawn_steps if steps is None else steps
    if n < 3 or k < 0:
        raise ValueError(f"need at least 3 nodes and no negative steps, got {n} and {k}")
    pre_vote = rng.random() < 0.75
    faults = Faults(
        drop=rng.choice((0.0, 0.0, 0.02, 0.1, 0.3)),
        duplicate=rng.choice((0.0, 0.05, 0.2)),
        reorder=rng.choice((0.0, 0.05, 0.2)),
        partitions=rng.random() < 0.6,
        crashes=rng.random() < 0.5,
    )
    client_interval = rng.uniform(1.0, 4.0) * HEARTBEAT_INTERVAL
    lines: list[str] | None = [] if trace else None
    run = _Run(rng, n, k, pre_vote, faults, client_interval, node_factory, lines)
    violation = liveness = None
    try:
        liveness = run.run()
        run.final_check()
    except Broken as broken:
        violation = Violation(broken.invariant, broken.detail, run.now, run.count.events)
        liveness = None
    except Exception as error:  # a node that raises is as broken as one that lies
        detail = "".join(traceback.format_exception_only(error)).strip()
        if lines is not None:
            lines.append(traceback.format_exc())
        violation = Violation("no errors", detail, run.now, run.count.events)
        liveness = None
    live = [node for node in run.nodes.values() if node is not None]
    return SimResult(
        seed=seed,
        nodes=n,
        steps=k,
        pre_vote=pre_vote,
        faults=faults,
        violation=violation,
        liveness=liveness,
        recovery=run.recovery,
        events=run.count.events,
        virtual_time=run.now,
        leaders=len(run.checker.leaders),
        max_term=max((node.term for node in live), default=0),
        committed=len(run.checker.committed),
        proposals=run.count.proposals,
        dropped=run.count.dropped,
        duplicated=run.count.duplicated,
        partitions=run.count.partitions,
        crashes=run.count.crashes,
        trace=tuple(lines or ()),
    )


def _seed_range(text: str) -> range:
    first, _, last = text.partition(":")
    return range(int(first), int(last))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m mesh.simulation`: replay one seed with its trace, or sweep a range."""
    parser = argparse.ArgumentParser(prog="python -m mesh.simulation", description=__doc__)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--seed", type=int, help="replay one seed and print its trace")
    which.add_argument("--seeds", type=_seed_range, help="sweep A:B (B excluded)")
    parser.add_argument("--nodes", type=int, help="cluster size (default: drawn from the seed)")
    parser.add_argument("--steps", type=int, help="fault rounds (default: drawn from the seed)")
    parser.add_argument("--quiet", action="store_true", help="no trace for --seed")
    args = parser.parse_args(argv)
    if args.seed is not None:
        result = simulate(args.seed, nodes=args.nodes, steps=args.steps, trace=not args.quiet)
        for line in result.trace:
            print(line)
        print(result.report())
        return 0 if result.ok else 1
    started = time.perf_counter()
    failures = 0
    for seed in args.seeds:
        result = simulate(seed, nodes=args.nodes, steps=args.steps)
        if not result.ok:
            failures += 1
            print(result.report(), flush=True)
    elapsed = time.perf_counter() - started
    print(f"seeds={len(args.seeds)} failures={failures} seconds={elapsed:.2f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
