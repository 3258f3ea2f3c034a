"""The Raft core rule by rule: votes, terms, log matching, the commit rule, idempotence."""

from __future__ import annotations

import ast
import json
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

import mesh
from mesh import (
    AppendEntries,
    AppendResponse,
    Envelope,
    LogEntry,
    MemoryStorage,
    MessageError,
    NotLeader,
    Proposed,
    RaftError,
    RaftNode,
    RequestVote,
    Role,
    StorageError,
    VoteResponse,
    message_from_dict,
)

TIMEOUT = (0.15, 0.30)
HEARTBEAT = 0.05


def make_node(
    node_id: str = "a",
    peers: Sequence[str] = ("a", "b", "c"),
    storage: MemoryStorage | None = None,
    *,
    pre_vote: bool = False,
    seed: int = 0,
) -> RaftNode:
    node = RaftNode(
        node_id,
        peers,
        storage if storage is not None else MemoryStorage(),
        rng=random.Random(seed),
        election_timeout=TIMEOUT,
        heartbeat_interval=HEARTBEAT,
        pre_vote=pre_vote,
    )
    node.tick(0.0)  # starts the election timer
    return node


def entries(*terms: int) -> list[LogEntry]:
    """A log whose entry i has terms[i - 1], each holding a distinct command."""
    return [LogEntry(term, i, {"n": i}) for i, term in enumerate(terms, start=1)]


def elect(node: RaftNode, now: float = 1.0) -> list[Envelope]:
    """Time `node` out and hand it the votes of all its peers; what it sends as leader."""
    assert node.tick(now), "the election timer should have run out"
    assert node.role is Role.CANDIDATE
    out: list[Envelope] = []
    for peer in node.peers:
        out += node.receive(VoteResponse(node.term, peer, True), now)
    assert node.role is Role.LEADER
    return out


def only(out: list[Envelope]) -> Envelope:
    assert len(out) == 1, out
    return out[0]


def vote(node: RaftNode, candidate: str, term: int, last: tuple[int, int] = (0, 0)) -> bool:
    answer = only(node.receive(RequestVote(term, candidate, *last), 0.01)).message
    assert isinstance(answer, VoteResponse)
    assert answer.voter == node.id and answer.term == node.term
    return answer.granted


# -- votes and terms ---------------------------------------------------------------------


def test_a_node_votes_once_per_term_and_repeats_that_vote_when_asked_again() -> None:
    node = make_node("a")
    assert vote(node, "b", 1)
    assert not vote(node, "c", 1)  # one vote per term
    assert vote(node, "b", 1)  # QoS 1 redelivered the request: the same answer
    assert vote(node, "c", 2)  # a new term, a new vote
    assert (node.term, node.voted_for) == (2, "c")


def test_the_vote_is_durable_before_the_node_hands_back_the_message_granting_it() -> None:
    storage = MemoryStorage()
    node = make_node("a", storage=storage)
    assert vote(node, "b", 3)
    assert (storage.term, storage.voted_for) == (3, "b")
    restarted = make_node("a", storage=storage)  # a crash loses everything but storage
    assert (restarted.term, restarted.voted_for) == (3, "b")
    assert not vote(restarted, "c", 3)
    assert vote(restarted, "b", 3)


def test_a_vote_that_cannot_be_stored_is_not_sent() -> None:
    class FullDisk(MemoryStorage):
        def save_term_vote(self, term: int, voted_for: str | None) -> None:
            if voted_for is not None:
                raise StorageError("disk full")
            super().save_term_vote(term, voted_for)

    node = make_node("a", storage=FullDisk())
    with pytest.raises(StorageError):
        node.receive(RequestVote(1, "b", 0, 0), 0.01)
    assert node.voted_for is None


def test_a_candidate_of_an_older_term_is_refused_and_told_the_term() -> None:
    node = make_node("a", storage=MemoryStorage(term=5))
    answer = only(node.receive(RequestVote(4, "b", 10, 4), 0.01)).message
    assert answer == VoteResponse(5, "a", False)
    assert node.voted_for is None


@pytest.mark.parametrize(
    ("last_index", "last_term", "granted"),
    [
        (3, 1, False),  # last term older, longer log: older all the same
        (1, 2, False),  # same last term, shorter log
        (2, 2, True),  # same last term, same length
        (1, 3, True),  # later last term, shorter log
    ],
)
def test_a_candidate_whose_log_is_behind_is_refused_but_its_term_is_adopted(
    last_index: int, last_term: int, granted: bool
) -> None:
    node = make_node("a", storage=MemoryStorage(term=2, entries=entries(1, 2)))
    assert vote(node, "b", 3, (last_index, last_term)) is granted
    assert node.term == 3
    assert node.voted_for == ("b" if granted else None)


def higher_term_messages(term: int) -> list[object]:
    return [
        RequestVote(term, "b", 0, 0),
        VoteResponse(term, "b", False),
        AppendEntries(term, "b", 0, 0, (), 0),
        AppendResponse(term, "b", False, 0, 1),
    ]


@pytest.mark.parametrize("index", range(4), ids=["vote?", "vote", "append", "append-reply"])
def test_a_leader_steps_down_on_any_message_of_a_higher_term(index: int) -> None:
    storage = MemoryStorage()
    leader = make_node("a", storage=storage)
    elect(leader)
    assert leader.fencing_token() == 1
    message = higher_term_messages(7)[index]
    leader.receive(message, 1.01)  # type: ignore[arg-type]
    assert leader.role is Role.FOLLOWER
    assert leader.term == 7 == storage.term
    assert leader.fencing_token() is None
    assert isinstance(leader.propose({"x": 1}, 1.02), NotLeader)


def test_a_candidate_wins_with_a_majority_counting_each_voter_once() -> None:
    node = make_node("a", ("a", "b", "c", "d", "e"))
    node.tick(1.0)
    assert node.role is Role.CANDIDATE and node.term == 1 and node.voted_for == "a"
    node.receive(VoteResponse(1, "b", True), 1.01)
    node.receive(VoteResponse(1, "b", True), 1.02)  # duplicate
    node.receive(VoteResponse(1, "c", False), 1.02)
    node.receive(VoteResponse(0, "d", True), 1.02)  # a stale term
    assert node.role is Role.CANDIDATE
    node.receive(VoteResponse(1, "e", True), 1.03)
    assert node.role is Role.LEADER


def test_the_election_timeout_is_drawn_in_its_range_and_reset_by_the_leader() -> None:
    draws = []
    for seed in range(50):
        node = make_node("a", seed=seed)
        deadline = node.next_deadline()
        assert deadline is not None
        draws.append(deadline)
        assert TIMEOUT[0] <= deadline < TIMEOUT[1]
        assert node.tick(deadline - 1e-9) == []
    assert len(set(draws)) == 50
    node = make_node("a")
    for step in range(1, 20):  # heartbeats keep it a follower indefinitely
        node.receive(AppendEntries(1, "b", 0, 0, (), 0), step * 0.1)
        assert node.tick(step * 0.1 + 0.1) == []
    assert node.role is Role.FOLLOWER and node.leader_id == "b"


def test_a_leader_sends_a_heartbeat_to_every_peer_each_interval() -> None:
    leader = make_node("a")
    elect(leader, now=1.0)
    assert leader.next_deadline() == pytest.approx(1.0 + HEARTBEAT)
    assert leader.tick(1.0 + HEARTBEAT / 2) == []
    beats = leader.tick(1.0 + HEARTBEAT)
    assert sorted(e.to for e in beats) == ["b", "c"]
    assert all(isinstance(e.message, AppendEntries) and e.message.term == 1 for e in beats)


# -- pre-vote ----------------------------------------------------------------------------


def test_a_pre_candidate_keeps_its_term_until_a_majority_would_vote() -> None:
    node = make_node("a", pre_vote=True)
    asks = node.tick(1.0)
    assert node.role is Role.PRE_CANDIDATE and node.term == 0 and node.voted_for is None
    assert all(e.message == RequestVote(1, "a", 0, 0, pre_vote=True) for e in asks)
    out = node.receive(VoteResponse(1, "b", True, pre_vote=True), 1.01)
    assert node.role is Role.CANDIDATE and node.term == 1 and node.voted_for == "a"
    assert all(e.message == RequestVote(1, "a", 0, 0) for e in out)


def test_a_pre_vote_does_not_change_the_voters_term_nor_its_vote() -> None:
    node = make_node("a")
    answer = only(node.receive(RequestVote(5, "b", 0, 0, pre_vote=True), 1.0)).message
    assert answer == VoteResponse(5, "a", True, pre_vote=True)
    assert (node.term, node.voted_for) == (0, None)


def test_a_node_that_hears_its_leader_refuses_pre_votes_so_a_returning_node_cannot_disrupt() -> (
    None
):
    follower = make_node("a", pre_vote=True)
    follower.receive(AppendEntries(3, "b", 0, 0, (), 0), 1.0)
    answer = only(follower.receive(RequestVote(4, "c", 0, 0, pre_vote=True), 1.05)).message
    assert answer == VoteResponse(3, "a", False, pre_vote=True)
    # Once the leader has been silent for the minimum election timeout, the pre-vote is granted.
    answer = only(follower.receive(RequestVote(4, "c", 0, 0, pre_vote=True), 1.2)).message
    assert answer.granted  # type: ignore[union-attr]


def test_a_refused_pre_vote_from_a_later_term_brings_the_pre_candidate_up_to_it() -> None:
    node = make_node("a", pre_vote=True)
    node.tick(1.0)
    node.receive(VoteResponse(6, "b", False, pre_vote=True), 1.01)
    assert node.role is Role.FOLLOWER and node.term == 6


# -- replication: the follower -----------------------------------------------------------


def append(node: RaftNode, message: AppendEntries, now: float = 1.0) -> AppendResponse:
    answer = only(node.receive(message, now)).message
    assert isinstance(answer, AppendResponse)
    return answer


def test_a_follower_refuses_an_append_whose_previous_entry_it_lacks() -> None:
    node = make_node("a", storage=MemoryStorage(term=1, entries=entries(1, 1)))
    answer = append(node, AppendEntries(1, "b", 5, 1, (), 0))
    assert (answer.success, answer.conflict_index) == (False, 3)  # retry from my last + 1


def test_a_follower_names_the_first_index_of_the_conflicting_term() -> None:
    node = make_node("a", storage=MemoryStorage(term=3, entries=entries(1, 2, 2, 2)))
    answer = append(node, AppendEntries(3, "b", 4, 3, (), 0))
    assert (answer.success, answer.conflict_index) == (False, 2)
    assert [e.term for e in node.log] == [1, 2, 2, 2]  # a refusal changes nothing


def test_conflicting_entries_are_truncated_and_replaced_in_the_log_and_in_storage() -> None:
    storage = MemoryStorage(term=2, entries=entries(1, 1, 2, 2))
    node = make_node("a", storage=storage)
    new = (LogEntry(3, 3, {"new": 3}), LogEntry(3, 4, {"new": 4}), LogEntry(3, 5, {"new": 5}))
    answer = append(node, AppendEntries(3, "b", 2, 1, new, 0))
    assert (answer.success, answer.match_index) == (True, 5)
    assert [e.term for e in node.log] == [1, 1, 3, 3, 3]
    assert storage.entries == tuple(node.log)


def test_a_duplicate_append_changes_nothing_and_gets_the_same_answer() -> None:
    storage = MemoryStorage()
    node = make_node("a", storage=storage)
    message = AppendEntries(1, "b", 0, 0, tuple(entries(1, 1)), 0)
    first = append(node, message)
    writes = storage.writes
    assert append(node, message) == first
    assert storage.writes == writes
    assert len(node.log) == 2


def test_an_older_append_arriving_late_truncates_nothing() -> None:
    node = make_node("a")
    log = tuple(entries(1, 1, 1))
    newer = AppendEntries(1, "b", 0, 0, log, 0)
    older = AppendEntries(1, "b", 0, 0, log[:1], 0)
    assert append(node, newer).match_index == 3
    answer = append(node, older)
    assert (answer.success, answer.match_index) == (True, 1)  # what that message proves
    assert len(node.log) == 3


def test_a_follower_commits_no_further_than_what_the_append_proved() -> None:
    # Entries 3 and 4 are from a deposed leader; the new one says commit 4 of its own log.
    node = make_node("a", storage=MemoryStorage(term=2, entries=entries(1, 1, 2, 2)))
    append(node, AppendEntries(3, "b", 2, 1, (), 4))
    assert node.commit_index == 2
    assert [e.index for e in node.take_applied()] == [1, 2]
    assert node.take_applied() == []


def test_an_append_of_an_older_term_is_refused_with_the_current_term() -> None:
    node = make_node("a", storage=MemoryStorage(term=4))
    answer = append(node, AppendEntries(3, "b", 0, 0, tuple(entries(3)), 0))
    assert (answer.term, answer.success) == (4, False)
    assert node.log == []


def test_an_append_that_would_rewrite_a_committed_entry_raises() -> None:
    node = make_node("a")
    append(node, AppendEntries(1, "b", 0, 0, tuple(entries(1, 1)), 2))
    assert node.commit_index == 2
    with pytest.raises(RaftError, match="committed"):
        node.receive(AppendEntries(2, "c", 0, 0, (LogEntry(2, 1, {"x": 1}),), 0), 1.1)


def test_a_second_leader_in_the_leaders_own_term_raises() -> None:
    leader = make_node("a")
    elect(leader)
    with pytest.raises(RaftError, match="also claims"):
        leader.receive(AppendEntries(1, "b", 0, 0, (), 0), 1.1)


# -- replication: the leader -------------------------------------------------------------


def test_a_new_leader_appends_a_no_op_of_its_term_and_sends_it() -> None:
    leader = make_node("a", storage=MemoryStorage(term=2, entries=entries(1, 2)))
    out = elect(leader)
    noop = leader.log[-1]
    assert (noop.index, noop.term, noop.is_noop) == (3, 3, True)
    assert sorted(e.to for e in out) == ["b", "c"]
    for envelope in out:
        assert isinstance(envelope.message, AppendEntries)
        assert envelope.message.entries[-1] == noop


def test_a_follower_answers_propose_with_not_leader_naming_the_leader_it_knows() -> None:
    node = make_node("a")
    assert node.propose({"x": 1}, 0.5) == NotLeader(None, 0)
    node.receive(AppendEntries(2, "b", 0, 0, (), 0), 0.6)
    assert node.propose({"x": 1}, 0.7) == NotLeader("b", 2)
    with pytest.raises(ValueError, match="no-op"):
        node.propose({}, 0.7)


def test_a_leader_commits_on_a_majority_and_applies_in_order() -> None:
    leader = make_node("a", ("a", "b", "c", "d", "e"))
    elect(leader)
    leader.receive(AppendResponse(1, "b", True, 1), 1.01)  # the no-op
    result = leader.propose({"x": 1}, 1.02)
    assert isinstance(result, Proposed) and result.index == 2
    # Sent at once to b, which has answered; the others are still being probed.
    assert [(e.to, e.message.entries) for e in result.messages] == [  # type: ignore[union-attr]
        ("b", (leader.log[1],))
    ]
    leader.receive(AppendResponse(1, "b", True, 2), 1.03)
    assert leader.commit_index == 0  # 2 of 5
    leader.receive(AppendResponse(1, "c", True, 2), 1.04)
    assert leader.commit_index == 2
    assert [dict(e.command) for e in leader.take_applied()] == [{}, {"x": 1}]
    leader.receive(AppendResponse(1, "c", True, 1), 1.05)  # a late, smaller answer
    assert leader.commit_index == 2


def test_figure_8_a_leader_never_commits_an_older_terms_entry_by_counting_replicas() -> None:
    # Raft's Figure 8 (c): S1 leads term 4 with (2, term 2) on S1, S2, S3 -- a majority of
    # five -- but not its own term's entry. S5 holds (2, term 3) and can still be elected by
    # S2, S3 and S4, overwriting index 2: so index 2 must not be committed yet.
    s1 = make_node("s1", ("s1", "s2", "s3", "s4", "s5"), MemoryStorage(3, None, entries(1, 2)))
    elect(s1)  # term 4; its no-op (3, term 4) goes out
    s1.receive(AppendResponse(4, "s2", True, 2), 1.01)
    s1.receive(AppendResponse(4, "s3", True, 2), 1.02)
    assert s1.commit_index == 0
    s5 = make_node("s5", ("s1", "s2", "s3", "s4", "s5"), MemoryStorage(4, None, entries(1, 3)))
    for voter_log in (entries(1, 2), entries(1, 2), entries(1)):
        voter = make_node("v", ("v", "s5"), MemoryStorage(4, None, voter_log))
        assert vote(voter, "s5", 5, (2, 3))
    # (e): once a majority holds an entry of S1's own term, it commits it and all before it.
    s1.receive(AppendResponse(4, "s2", True, 3), 1.03)
    s1.receive(AppendResponse(4, "s3", True, 3), 1.04)
    assert s1.commit_index == 3
    assert [e.index for e in s1.take_applied()] == [1, 2, 3]
    assert s5.role is Role.FOLLOWER


def test_duplicate_and_stale_append_answers_move_nothing_and_send_nothing() -> None:
    leader = make_node("a")
    elect(leader)
    assert leader.receive(AppendResponse(1, "b", True, 1), 1.01) == []
    assert leader.commit_index == 1
    assert leader.receive(AppendResponse(1, "b", True, 1), 1.02) == []  # duplicate
    assert leader.receive(AppendResponse(0, "b", False, 0, 1), 1.02) == []  # older term
    assert leader.receive(AppendResponse(1, "b", True, 0), 1.02) == []  # reordered
    assert leader.commit_index == 1


def test_a_refusal_is_answered_with_one_probe_and_the_same_refusal_again_with_none() -> None:
    leader = make_node("a", storage=MemoryStorage(term=1, entries=entries(1, 1)))
    elect(leader)  # term 2, the no-op at 3
    probe = only(leader.receive(AppendResponse(2, "c", False, 0, 2), 1.04)).message
    assert isinstance(probe, AppendEntries)
    assert (probe.prev_log_index, [e.index for e in probe.entries]) == (1, [2, 3])
    assert leader.receive(AppendResponse(2, "c", False, 0, 2), 1.05) == []
    assert leader.receive(AppendResponse(2, "c", False, 0, 3), 1.05) == []  # an older probe's


def test_a_follower_that_lost_entries_is_probed_back_to_where_it_stands() -> None:
    leader = make_node("a")
    follower = make_node("b")
    for envelope in elect(leader):
        if envelope.to == "b":
            for answer in follower.receive(envelope.message, 1.01):
                leader.receive(answer.message, 1.02)
    leader.propose({"x": 1}, 1.1)  # the message to b is lost
    leader.propose({"x": 2}, 1.2)  # and this one too
    beat = next(e for e in leader.tick(1.3) if e.to == "b")
    messages = [beat]
    for _ in range(4):  # heartbeat refused -> probe from b's last + 1 -> accepted
        replies = [r for m in messages for r in follower.receive(m.message, 1.31)]
        messages = [o for r in replies for o in leader.receive(r.message, 1.32)]
    assert [e.term for e in follower.log] == [1, 1, 1]
    assert leader.commit_index == 3


def test_messages_from_outside_the_cluster_are_ignored() -> None:
    node = make_node("a")
    assert node.receive(RequestVote(1, "mallory", 0, 0), 0.01) == []
    assert node.receive(AppendEntries(9, "mallory", 0, 0, tuple(entries(9)), 1), 0.01) == []
    assert (node.term, node.voted_for, list(node.log)) == (0, None, [])


def test_a_single_node_leads_and_commits_on_its_own() -> None:
    node = make_node("a", ("a",))
    node.tick(1.0)
    assert node.role is Role.LEADER
    result = node.propose({"x": 1}, 1.1)
    assert isinstance(result, Proposed) and result.messages == ()
    assert node.commit_index == 2


def test_a_restarted_node_keeps_term_vote_and_log_and_forgets_the_rest() -> None:
    storage = MemoryStorage()
    leader = make_node("a", storage=storage)
    elect(leader)
    leader.receive(AppendResponse(1, "b", True, 1), 1.01)
    assert leader.commit_index == 1
    again = make_node("a", storage=storage)
    assert (again.term, again.voted_for, list(again.log)) == (1, "a", list(leader.log))
    assert (again.role, again.commit_index, again.leader_id) == (Role.FOLLOWER, 0, None)


# -- messages and storage ----------------------------------------------------------------

MESSAGES = [
    RequestVote(3, "a", 7, 2),
    RequestVote(4, "a", 7, 2, pre_vote=True),
    VoteResponse(3, "b", True),
    VoteResponse(4, "b", False, pre_vote=True),
    AppendEntries(3, "a", 1, 1, (LogEntry(3, 2, {"k": [1, "two"]}), LogEntry(3, 3, {})), 1),
    AppendEntries(3, "a", 0, 0, (), 0),
    AppendResponse(3, "c", True, 3),
    AppendResponse(3, "c", False, 0, 2),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_through_json(message: object) -> None:
    envelope = Envelope("z", message)  # type: ignore[arg-type]
    payload = json.loads(json.dumps(envelope.to_dict()))
    assert Envelope.from_dict(payload) == envelope
    assert message_from_dict(payload["message"]) == message


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "gossip", "term": 1},
        {"type": "vote_response", "term": 1, "voter": "a", "granted": True},
        {"type": "vote_response", "term": True, "voter": "a", "granted": True, "pre_vote": False},
        {"type": "vote_response", "term": "1", "voter": "a", "granted": True, "pre_vote": False},
        {
            "type": "append_entries",
            "term": 1,
            "leader": "a",
            "prev_log_index": 0,
            "prev_log_term": 0,
            "entries": [{"term": 1, "index": 2, "command": {}}],
            "leader_commit": 0,
        },
        ["not", "a", "mapping"],
    ],
    ids=["unknown type", "missing field", "bool term", "str term", "gap", "list"],
)
def test_a_payload_that_is_no_message_is_refused_with_the_reason(payload: object) -> None:
    with pytest.raises(MessageError) as caught:
        message_from_dict(payload)  # type: ignore[arg-type]
    assert caught.value.payload == payload


def test_a_log_entry_keeps_its_own_read_only_copy_of_the_command() -> None:
    command = {"x": 1}
    entry = LogEntry(1, 1, command)
    command["x"] = 2
    assert entry.command == {"x": 1}
    with pytest.raises(TypeError):
        entry.command["x"] = 3  # type: ignore[index]
    assert entry == LogEntry(1, 1, {"x": 1})


def test_memory_storage_keeps_the_contract() -> None:
    storage = MemoryStorage()
    storage.append(entries(1, 1))
    with pytest.raises(StorageError, match="continue"):
        storage.append([LogEntry(1, 4, {"n": 4})])
    with pytest.raises(StorageError, match="truncate"):
        storage.truncate_from(3)
    storage.truncate_from(2)
    assert storage.load().entries == tuple(entries(1))
    storage.save_term_vote(2, "a")
    with pytest.raises(StorageError, match="lower"):
        storage.save_term_vote(1, None)
    assert storage.load()[:2] == (2, "a")


def test_bad_timings_are_refused() -> None:
    with pytest.raises(ValueError, match="heartbeat"):
        RaftNode("a", ["b"], MemoryStorage(), rng=random.Random(0), heartbeat_interval=0.5)


def test_the_package_all_is_sorted_and_complete() -> None:
    assert mesh.__all__ == sorted(mesh.__all__)
    assert mesh.__file__ is not None
    tree = ast.parse(Path(mesh.__file__).read_text())
    imported = {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module != "__future__"
        for alias in node.names
    }
    assert imported == set(mesh.__all__)
