"""The seeded sweep: Raft stays safe under drops, duplicates, reordering, partitions, crashes.

Ten chunks of 1,000 seeds (each its own test, a few seconds apiece), every seed drawing its
cluster size and faults. A failure prints the seed and the command that replays it. The sweep
is only worth something if it can fail: nodes broken on purpose are caught within a few
hundred seeds.
"""

from __future__ import annotations

import pytest

from mesh import AppendEntries, Envelope, RaftNode, RequestVote, Role, VoteResponse
from mesh.simulation import SimResult, SimulationFailure, main, simulate

SEEDS = 10_000
CHUNKS = 10
PER_CHUNK = SEEDS // CHUNKS


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_every_seed_is_safe_and_recovers_after_healing(chunk: int) -> None:
    results = [simulate(seed) for seed in range(chunk * PER_CHUNK, (chunk + 1) * PER_CHUNK)]
    failed = [r for r in results if not r.ok]
    assert not failed, f"{len(failed)} seeds failed:\n" + "\n".join(r.report() for r in failed[:5])
    # The chunk exercised what the sweep claims to.
    assert {r.nodes for r in results} == {3, 5}
    assert {r.pre_vote for r in results} == {True, False}
    assert sum(r.partitions for r in results) > PER_CHUNK // 2
    assert sum(r.crashes for r in results) > PER_CHUNK // 2
    assert sum(r.dropped for r in results) > 0 and sum(r.duplicated for r in results) > 0
    assert any(r.faults.reorder for r in results)
    assert sum(r.leaders for r in results) > 2 * PER_CHUNK  # leadership changes hands
    assert sum(r.committed for r in results) > 5 * PER_CHUNK


def test_a_seed_replays_exactly() -> None:
    first, again = simulate(42, trace=True), simulate(42, trace=True)
    assert first == again
    assert len(first.trace) > 100
    assert any("==" in line for line in first.trace)  # faults are in the trace
    drawn = simulate(42, nodes=first.nodes, steps=first.steps)
    assert drawn.events == first.events  # the replay command's explicit values change nothing


# -- nodes broken on purpose -------------------------------------------------------------


class CountsOneVoteShort(RaftNode):
    """Takes a minority for a majority."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._quorum -= 1


class VotesTwicePerTerm(RaftNode):
    """Grants a second candidate of the same term, when its log is up to date."""

    def _on_request_vote(self, m: RequestVote, now: float) -> list[Envelope]:
        if (
            not m.pre_vote
            and m.term == self.term
            and self.role is Role.FOLLOWER
            and self._log_up_to_date(m.last_log_index, m.last_log_term)
        ):
            return [Envelope(m.candidate, VoteResponse(self.term, self.id, True))]
        return super()._on_request_vote(m, now)


class VotesForStaleLogs(RaftNode):
    """Votes without comparing logs (§5.4.1)."""

    def _log_up_to_date(self, last_index: int, last_term: int) -> bool:
        return True


class CommitsOlderTerms(RaftNode):
    """Figure 8: commits by counting replicas whatever their term, and appends no no-op."""

    def _become_leader(self, now: float) -> list[Envelope]:
        self._role = Role.LEADER
        self._leader_id = self.id
        self._probing = set(self.peers)
        self._match = dict.fromkeys(self.peers, 0)
        self._next = dict.fromkeys(self.peers, len(self._log) + 1)
        self._heartbeat_due = now + self._heartbeat
        return [self._append_to(peer) for peer in self.peers]

    def _maybe_commit(self) -> None:
        index = sorted(self._match.values(), reverse=True)[self._quorum - 2]
        if index > self.commit_index:
            self._commit_to(index)


class TruncatesOnEveryAppend(RaftNode):
    """Drops everything after prev_log_index before each append: a reordered, older append
    then erases entries the follower has acknowledged."""

    def _on_append(self, m: AppendEntries, now: float) -> list[Envelope]:
        prev = m.prev_log_index
        if (
            m.term >= self.term
            and m.entries
            and self.commit_index <= prev < len(self._log)
            and (prev == 0 or self._log[prev - 1].term == m.prev_log_term)
        ):
            self._storage.truncate_from(prev + 1)
            del self._log[prev:]
        return super()._on_append(m, now)


class NeverVotes(RaftNode):
    def _on_request_vote(self, m: RequestVote, now: float) -> list[Envelope]:
        return [Envelope(m.candidate, VoteResponse(self.term, self.id, False, m.pre_vote))]


def first_unsafe(factory: type[RaftNode], seeds: int) -> SimResult:
    for seed in range(seeds):
        result = simulate(seed, node_factory=factory)
        if not result.safe:
            return result
    pytest.fail(f"{factory.__name__} passed {seeds} seeds: the checker cannot see its bug")


@pytest.mark.parametrize(
    ("factory", "seeds", "invariants"),
    [
        (CountsOneVoteShort, 50, {"election safety", "state machine safety"}),
        (VotesTwicePerTerm, 50, {"one vote per term"}),
        (VotesForStaleLogs, 100, {"leader completeness", "state machine safety"}),
        (CommitsOlderTerms, 500, {"leader completeness", "state machine safety"}),
        (TruncatesOnEveryAppend, 1000, {"leader completeness", "state machine safety"}),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_the_checker_catches_a_broken_node(
    factory: type[RaftNode], seeds: int, invariants: set[str]
) -> None:
    result = first_unsafe(factory, seeds)
    assert result.violation is not None, result.report()
    assert result.violation.invariant in invariants, result.report()
    assert f"--seed {result.seed}" in result.report()
    assert simulate(result.seed, node_factory=factory).violation == result.violation
    with pytest.raises(SimulationFailure, match=f"seed {result.seed}"):
        result.raise_for_failure()


def test_the_sweep_reports_a_cluster_that_never_recovers_as_liveness_not_safety() -> None:
    result = simulate(0, node_factory=NeverVotes)
    assert result.safe and not result.ok
    assert result.liveness is not None and "within" in result.liveness
    assert result.leaders == 0


def test_a_node_that_raises_fails_the_seed() -> None:
    class Explodes(RaftNode):
        def propose(self, command: object, now: float) -> object:  # type: ignore[override]
            raise RuntimeError("boom")

    result = simulate(0, node_factory=Explodes)
    assert result.violation is not None and "boom" in result.violation.detail


def test_the_command_line_replays_a_seed_with_its_trace(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert "seed 7:" in out and "** n" in out and "ok; recovered" in out
    assert main(["--seeds", "0:5"]) == 0
    assert "seeds=5 failures=0" in capsys.readouterr().out
