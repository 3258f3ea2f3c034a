"""The ACL from topics.yaml: the checker, filter coverage, and the Mosquitto acl_file."""

from __future__ import annotations

import pytest

from broker.acl import Acl, Action, covers, render_acl_file
from broker.passwords import hash_password
from broker.users import User
from bus.topics import TopicTree, load, matches

HASH = hash_password("x", iterations=1)


@pytest.fixture(scope="module")
def tree() -> TopicTree:
    return load()


@pytest.fixture(scope="module")
def acl(tree: TopicTree) -> Acl:
    return Acl(tree)


@pytest.mark.parametrize(
    ("rule", "topic_filter", "expected"),
    [
        ("mv/agent/+/act", "mv/agent/+/act", True),
        ("mv/agent/+/act", "mv/agent/bob/act", True),
        ("mv/agent/bob/act", "mv/agent/+/act", False),
        ("mv/agent/+/act", "mv/agent/#", False),
        ("mv/agent/+/act", "mv/#", False),
        ("mv/agent/+/act", "#", False),
        ("mv/#", "mv/#", True),
        ("mv/#", "mv", True),
        ("mv/#", "mv/a/+/b", True),
        ("mv/+/#", "mv/#", False),  # mv/# also matches `mv` itself
        ("#", "+/x", True),
        ("+/x", "$SYS/x", False),
        ("mv/agent/+/act", "mv/agent/+", False),
        ("mv/agent/+/act", "mv/agent/+/act/more", False),
    ],
)
def test_covers(rule: str, topic_filter: str, expected: bool) -> None:
    assert covers(rule, topic_filter) is expected


def test_covers_agrees_with_matches_on_topics() -> None:
    for rule in ("mv/+/x", "mv/#", "mv/a/b", "+/+"):
        for topic in ("mv/a/x", "mv/a/b", "mv", "x/y", "mv/a/b/c"):
            assert covers(rule, topic) is matches(rule, topic)


@pytest.mark.parametrize(
    ("user", "role", "action", "topic", "expected"),
    [
        # an agent: only its own topics
        ("alice", "agent", "publish", "mv/agent/alice/act", True),
        ("alice", "agent", "publish", "mv/agent/bob/act", False),
        ("alice", "agent", "publish", "mv/agent/alice/state", True),
        ("alice", "agent", "publish", "mv/agent/bob/state", False),
        ("alice", "agent", "publish", "mv/agent/alice/obs", False),
        ("alice", "agent", "subscribe", "mv/agent/alice/obs", True),
        ("alice", "agent", "subscribe", "mv/agent/bob/obs", False),
        # As on Mosquitto 2: a filter overlapping something readable is granted and every
        # delivery is checked against the read rules ("receive").
        ("alice", "agent", "subscribe", "mv/agent/+/obs", True),
        ("alice", "agent", "subscribe", "mv/#", True),
        ("alice", "agent", "subscribe", "#", True),
        ("alice", "agent", "subscribe", "mv/agent/+/act", False),
        ("alice", "agent", "receive", "mv/agent/alice/obs", True),
        ("alice", "agent", "receive", "mv/agent/bob/obs", False),
        ("alice", "agent", "receive", "mv/agent/bob/state", False),
        ("alice", "agent", "subscribe", "mv/sys/health", True),
        # a device: telemetry out, health in
        ("drone1", "device", "publish", "mv/agent/drone1/telemetry", True),
        ("drone1", "device", "publish", "mv/agent/drone1/act", False),
        ("drone1", "device", "subscribe", "mv/agent/drone1/obs", False),
        # a component
        ("health-main", "component", "subscribe", "mv/agent/+/act", True),
        ("health-main", "component", "subscribe", "mv/sys/component/+/+/status", True),
        ("health-main", "component", "publish", "mv/agent/bob/act", True),  # hosted agents
        ("health-main", "component", "publish", "mv/agent/bob/obs", True),
        ("health-main", "component", "subscribe", "mv/sys/#", True),
        ("health-main", "component", "receive", "mv/sys/health", True),
        # an operator observes and sends commands
        ("op", "operator", "subscribe", "mv/agent/+/state", True),
        ("op", "operator", "subscribe", "mv/agent/+/obs", False),
        ("op", "operator", "publish", "mv/sys/component/health/main/cmd", True),
        ("op", "operator", "publish", "mv/sys/health", False),
        # malformed input is refused, never an error
        ("alice", "agent", "publish", "mv/agent/+/act", False),
        ("alice", "agent", "subscribe", "mv/agent/alice/obs/#/x", False),
        ("alice", "agent", "publish", "$SYS/x", False),
        ("al+ce", "agent", "publish", "mv/agent/al+ce/act", False),
        ("alice", "nobody", "publish", "mv/agent/alice/act", False),
    ],
)
def test_allowed(acl: Acl, user: str, role: str, action: str, topic: str, expected: bool) -> None:
    assert acl.allowed(user, role, action, topic) is expected  # type: ignore[arg-type]


def test_the_checker_agrees_with_topic_spec_allows(tree: TopicTree, acl: Acl) -> None:
    """On every declared topic with concrete ids, the ACL says what topics.yaml says."""
    for spec in tree:
        for ident in ("alice", "bob"):
            topic = spec.build(**{p: ident for p in spec.params})
            for role in tree.roles:
                action: Action
                for action in ("publish", "subscribe"):
                    want = spec.allows(
                        action, role, username="alice", topic=topic, roles=tree.roles
                    )
                    got = acl.allowed("alice", role, action, topic)
                    # rpc/{service}/{method} also matches rpc/reply/{client}: the checker is
                    # per rule, so on rpc/reply/... it may allow what the one spec does not.
                    assert got == want or (got and spec.name == "rpc.reply"), (role, action, topic)


def test_any_one_level_root(tree: TopicTree) -> None:
    acl = Acl(tree, root="+")
    assert acl.allowed("alice", "agent", "publish", "t1234abcd/agent/alice/act")
    assert acl.allowed("alice", "agent", "subscribe", "+/agent/alice/obs")
    assert not acl.allowed("alice", "agent", "publish", "t1234abcd/agent/bob/act")
    assert not acl.allowed("alice", "agent", "publish", "a/b/agent/alice/act")
    assert Acl(tree, root="x/y").allowed("alice", "agent", "publish", "x/y/agent/alice/act")


USERS = [
    User("alice", "agent", HASH),
    User("drone1", "device", HASH),
    User("health-main", "component", HASH),
    User("op", "operator", HASH),
]


def test_acl_file_layout(acl: Acl) -> None:
    text = render_acl_file(acl, reversed(USERS))
    assert text == render_acl_file(acl, USERS)  # deterministic
    assert "generated from topics.yaml by `mapleverse topics generate`" in text.splitlines()[0]
    assert "Do not edit" in text
    body = [line for line in text.splitlines() if line and not line.startswith("#")]
    patterns = [line for line in body if line.startswith("pattern ")]
    assert patterns == [
        "pattern read mv/sys/health",
        "pattern read mv/agent/%u/obs",
        "pattern write mv/agent/%u/act",
        "pattern write mv/agent/%u/state",
        "pattern read mv/agent/%u/state",
        "pattern write mv/agent/%u/telemetry",
        "pattern read mv/agent/%u/error",
        "pattern read mv/world/+/snapshot",
        "pattern read mv/world/+/regions",
        "pattern read mv/world/+/region/+/updates",
        "pattern read mv/world/+/region/+/snapshot/+",
        "pattern read mv/world/+/city/+/+/+",
        "pattern read mv/swarm/+/status",
        "pattern read mv/mesh/+/game/+/events",
        "pattern read mv/mesh/+/game/+/state",
        "pattern read mv/mesh/+/game/+/player/%u",
        "pattern write mv/mesh/+/game/+/act/%u",
    ]
    assert "user alice" not in body  # an agent has exactly the pattern grants
    sections = "\n".join(body)
    assert (
        "user drone1\ntopic deny mv/agent/drone1/obs\ntopic deny mv/agent/drone1/act\n"
        "topic deny mv/agent/drone1/state\n"
    ) in sections + "\n"
    # a component answers for hosted agents, so only an agent's telemetry is not its to write
    assert "user health-main\ntopic deny mv/agent/health-main/telemetry\n" in sections
    assert "topic read mv/agent/+/act" in sections
    assert "user op\ntopic deny mv/agent/op/obs\n" in sections


def _mosquitto_decides(text: str, username: str, access: str, topic: str) -> bool:
    """Mosquitto 2.0's acl_file evaluation: the user's denies, its topics, then patterns."""
    patterns: list[tuple[str, str]] = []
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "user":
            current = sections.setdefault(words[1], [])
        elif words[0] == "pattern":
            patterns.append((words[1], words[2]))
        elif words[0] == "topic" and current is not None:
            current.append((words[1], words[2]))
    own = sections.get(username, [])
    if any(a == "deny" and matches(t, topic) for a, t in own):
        return False
    if any(a == access and matches(t, topic) for a, t in own):
        return True
    return any(a == access and matches(t.replace("%u", username), topic) for a, t in patterns)


def test_mosquitto_acl_file_never_grants_more_than_the_checker(tree: TopicTree, acl: Acl) -> None:
    """Simulated Mosquitto decisions equal the checker's, except for the denied topics under a
    non-agent user's own name (no agent can have that id, since usernames are unique)."""
    text = render_acl_file(acl, USERS)
    for user in USERS:
        for spec in tree:
            for ident in (user.name, "bob"):
                topic = str(spec.build(**{p: ident for p in spec.params}))
                for action, access in (("publish", "write"), ("subscribe", "read")):
                    ours = acl.allowed(user.name, user.role, action, topic)  # type: ignore[arg-type]
                    theirs = _mosquitto_decides(text, user.name, access, topic)
                    assert not (theirs and not ours), (user, action, topic)
                    if ours and not theirs:
                        assert user.role != "agent" and f"/agent/{user.name}/" in topic
