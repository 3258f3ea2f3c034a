"""bus.topics: the tree out of topics.yaml, its builders, ACLs, errors, and the one matcher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bus.errors import TopicError, TopicsFileError
from bus.payloads import Action, Batch, HealthSummary, RpcReply, Status
from bus.topics import AclRule, QoS, Topic, TopicTree, load, matches, validate_filter

REPO = Path(__file__).resolve().parents[2]
TOPICS = REPO / "topics.yaml"


@pytest.fixture(scope="module")
def tree() -> TopicTree:
    # The repository's own file, whatever MAPLEVERSE_TOPICS_FILE says.
    return load(TOPICS)


# -- the real topics.yaml ----------------------------------------------------------------------


def test_real_file_declares_the_system_topics_with_their_contract(tree: TopicTree) -> None:
    assert tree.root == "mv"
    status = tree["component.status"]
    assert status.full_pattern == "mv/sys/component/{kind}/{id}/status"
    assert status.params == ("kind", "id")
    assert status.payload is Status
    assert status.qos is QoS.AT_LEAST_ONCE
    assert status.retain is True
    assert tree["health"].payload is HealthSummary
    assert tree["probe.stream"].qos is QoS.AT_MOST_ONCE
    assert tree["probe.stream"].payload is Batch
    assert tree["agent.telemetry"].retain is False
    assert set(tree.roles) == {"component", "operator", "agent", "device"}
    assert tree.roles["agent"].self_param == "agent"


def test_every_declaration_is_reachable_by_dotted_attribute(tree: TopicTree) -> None:
    for spec in tree:
        node: Any = tree
        for part in spec.name.split("."):
            node = getattr(node, part)
        assert node is spec


def test_an_undeclared_name_is_an_error(tree: TopicTree) -> None:
    with pytest.raises(AttributeError, match="no topic 'nope' is declared"):
        _ = tree.nope
    with pytest.raises(TopicError, match=r"no topic 'component\.nope'"):
        tree["component.nope"]


# -- builders and filters ----------------------------------------------------------------------


def test_builder_with_every_parameter_is_a_topic_name(tree: TopicTree) -> None:
    topic = tree.component.status(kind="health", id="main")
    assert isinstance(topic, Topic)
    assert topic == "mv/sys/component/health/main/status"
    assert topic.is_filter is False
    assert topic.spec is tree["component.status"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, "mv/sys/component/+/+/status"),
        ({"kind": "health"}, "mv/sys/component/health/+/status"),
        ({"kind": "+", "id": "main"}, "mv/sys/component/+/main/status"),
        ({"kind": "+", "id": "+"}, "mv/sys/component/+/+/status"),
    ],
)
def test_omitted_or_plus_parameters_make_a_filter(
    tree: TopicTree, params: dict[str, str], expected: str
) -> None:
    topic = tree.component.status(**params)
    assert topic == expected
    assert topic.is_filter is True
    validate_filter(topic)


def test_a_topic_without_parameters_is_a_name(tree: TopicTree) -> None:
    topic = tree.health()
    assert topic == "mv/sys/health"
    assert topic.is_filter is False


@pytest.mark.parametrize("bad", ["Health", "a/b", "", "a b", "é", "#", "a+", "x\x00"])
def test_bad_parameter_values_are_rejected(tree: TopicTree, bad: str) -> None:
    with pytest.raises(TopicError):
        tree.component.status(kind=bad, id="main")


def test_unknown_parameter_is_rejected(tree: TopicTree) -> None:
    with pytest.raises(TopicError, match="unknown parameter"):
        tree.component.status(kind="a", id="b", colour="red")


def test_wildcard_is_the_filter_of_every_topic_of_a_declaration(tree: TopicTree) -> None:
    assert tree["agent.act"].wildcard == "mv/agent/+/act"
    assert tree["health"].wildcard == "mv/sys/health"


# -- with_root ---------------------------------------------------------------------------------


def test_with_root_moves_every_topic_and_leaves_the_original(tree: TopicTree) -> None:
    moved = tree.with_root("test/abc-1")
    assert moved.root == "test/abc-1"
    assert moved.component.status(kind="k", id="i") == "test/abc-1/sys/component/k/i/status"
    assert moved["agent.act"].full_pattern == "test/abc-1/agent/{agent}/act"
    assert moved["health"].qos == tree["health"].qos
    # the original is untouched
    assert tree.component.status(kind="k", id="i") == "mv/sys/component/k/i/status"
    # a multi-level root still parses
    assert moved["component.status"].parse("test/abc-1/sys/component/k/i/status") == {
        "kind": "k",
        "id": "i",
    }


@pytest.mark.parametrize("root", ["", "/mv", "mv/", "MV", "a//b", "a/+"])
def test_with_root_rejects_bad_roots(tree: TopicTree, root: str) -> None:
    with pytest.raises(TopicError, match="root"):
        tree.with_root(root)


# -- resolve -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "name"),
    [
        ("mv/sys/component/health/main/status", "component.status"),
        ("mv/sys/component/echo/e1/hb", "component.heartbeat"),
        ("mv/sys/health", "health"),
        ("mv/sys/dlq/client", "dlq"),
        ("mv/agent/bob/act", "agent.act"),
        ("mv/rpc/echo/ping", "rpc.request"),
    ],
)
def test_resolve_finds_the_declaration_of_a_topic(tree: TopicTree, topic: str, name: str) -> None:
    spec = tree.resolve(topic)
    assert spec is not None
    assert spec.name == name


@pytest.mark.parametrize(
    "topic",
    ["mv/sys/nope", "other/sys/health", "mv/agent/bob", "mv/agent/bob/act/extra", "mv", ""],
)
def test_resolve_returns_none_for_undeclared_topics(tree: TopicTree, topic: str) -> None:
    assert tree.resolve(topic) is None


def test_resolve_tells_a_reply_topic_from_a_request_topic(tree: TopicTree) -> None:
    reply = tree.resolve(str(tree.rpc.reply(client="cli-1")))
    assert reply is not None
    assert reply.name == "rpc.reply"
    assert reply.payload is RpcReply
    request = tree.resolve(str(tree.rpc.request(service="reply", method="x")))
    assert request is not None
    assert request.name == "rpc.request"


def _overlap(a: str, b: str) -> bool:
    """Whether some concrete topic fits both patterns (a '{param}' level fits any id)."""
    la, lb = a.split("/"), b.split("/")
    return len(la) == len(lb) and all(
        x == y or x.startswith("{") or y.startswith("{") for x, y in zip(la, lb, strict=True)
    )


def test_every_topic_belongs_to_exactly_one_declaration(tree: TopicTree) -> None:
    # otherwise resolve() would type a message by whichever declaration comes first
    specs = list(tree)
    clashes = [
        (a.name, b.name)
        for i, a in enumerate(specs)
        for b in specs[i + 1 :]
        if _overlap(a.pattern, b.pattern)
    ]
    assert clashes == []


def test_the_overlap_check_would_see_a_shadowed_declaration() -> None:
    assert _overlap("rpc/{service}/{method}", "rpc/reply/{client}")
    assert not _overlap("rpc/{service}/{method}", "reply/{client}")
    assert not _overlap("sys/health", "sys/dlq/{kind}")


# -- the one matcher ---------------------------------------------------------------------------

MATCH_CASES = [
    # (filter, topic, expected) -- MQTT 3.1.1 section 4.7 and its examples
    ("a/b/c", "a/b/c", True),
    ("a/b/c", "a/b", False),
    ("a/b", "a/b/c", False),
    ("a/b", "a/b/", False),
    ("A/b", "a/b", False),
    ("#", "a", True),
    ("#", "a/b/c", True),
    ("#", "/finance", True),
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/tennis/player1/#", "sport/tennis/player2", False),
    ("a/#", "a", True),
    ("a/#", "ab", False),
    ("a/#", "b/a", False),
    ("+", "a", True),
    ("+", "a/b", False),
    ("+", "/finance", False),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("a/+/c", "a//c", True),
    ("a/+/c", "a/b/d", False),
    ("+/+/#", "a/b", True),
    ("+/#", "a", True),
    # topics starting with '$' are not matched by a leading wildcard
    ("#", "$SYS/broker/uptime", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("+", "$SYS", False),
    ("$SYS/#", "$SYS/broker/uptime", True),
    ("$SYS/#", "$SYS", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("a/#", "a/$b", True),
]


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), MATCH_CASES)
def test_matches_follows_the_mqtt_spec(topic_filter: str, topic: str, expected: bool) -> None:
    assert matches(topic_filter, topic) is expected


def test_filters_built_from_declarations_match_their_topics(tree: TopicTree) -> None:
    assert matches(tree.component.status(), str(tree.component.status(kind="x", id="y")))
    assert not matches(tree.component.status(), str(tree.component.heartbeat(kind="x", id="y")))
    assert matches(tree.agent.act(), "mv/agent/bob/act")
    assert not matches(tree.agent.act(agent="alice"), "mv/agent/bob/act")


@pytest.mark.parametrize("bad", ["", "a/#/b", "a#", "a/b#", "a+/b", "+a", "a/\x00"])
def test_validate_filter_rejects_malformed_filters(bad: str) -> None:
    with pytest.raises(TopicError):
        validate_filter(bad)


# -- ACL rules ---------------------------------------------------------------------------------


def test_agent_acl_is_its_own_topics_and_the_health_summary(tree: TopicTree) -> None:
    rules = {(r.access, r.pattern) for r in tree.acl("agent")}
    assert ("write", "mv/agent/%u/act") in rules
    own = {(access, pattern) for access, pattern in rules if "/agent/" in pattern}
    assert own == {
        ("read", "mv/agent/%u/obs"),
        ("read", "mv/agent/%u/error"),
        ("write", "mv/agent/%u/act"),
        ("write", "mv/agent/%u/state"),
        ("read", "mv/agent/%u/state"),
        ("write", "mv/agent/%u/telemetry"),
    }
    # a game's player: its own secret view, and its own actions only
    game = {(access, pattern) for access, pattern in rules if "/game/" in pattern}
    assert game == {
        ("read", "mv/mesh/+/game/+/events"),
        ("read", "mv/mesh/+/game/+/state"),
        ("read", "mv/mesh/+/game/+/player/%u"),
        ("write", "mv/mesh/+/game/+/act/%u"),
    }
    # beyond those: reading the health summary and the public state of the world
    public = {pattern for access, pattern in rules - own - game if access == "read"}
    assert public == {
        "mv/sys/health",
        "mv/world/+/snapshot",
        "mv/world/+/regions",
        "mv/world/+/region/+/updates",
        "mv/world/+/region/+/snapshot/+",
        "mv/world/+/city/+/+/+",
        "mv/swarm/+/status",
    }
    assert not {pattern for access, pattern in rules - own - game if access == "write"}
    for _, pattern in rules:
        assert "#" not in pattern


def test_acl_rules_name_the_declaration_and_take_a_username_token(tree: TopicTree) -> None:
    rules = tree.acl("device", username_token="${username}")
    assert AclRule("write", "mv/agent/${username}/telemetry", "agent.telemetry") in rules
    assert {r.access for r in rules if r.topic == "agent.act"} == set()


def test_component_and_operator_acls(tree: TopicTree) -> None:
    component = {(r.access, r.pattern) for r in tree.acl("component")}
    assert ("read", "mv/agent/+/act") in component
    assert ("write", "mv/agent/+/obs") in component
    assert ("write", "mv/agent/+/act") in component  # the scheduler answers for hosted agents
    operator = {(r.access, r.pattern) for r in tree.acl("operator")}
    assert ("write", "mv/sys/component/+/+/cmd") in operator
    assert ("write", "mv/sys/component/+/+/status") not in operator
    assert ("read", "mv/agent/+/obs") not in operator


def test_acl_of_an_unknown_role_is_an_error(tree: TopicTree) -> None:
    with pytest.raises(TopicError, match="unknown role 'ghost'"):
        tree.acl("ghost")


def test_allows_binds_self_grants_to_the_username(tree: TopicTree) -> None:
    act = tree["agent.act"]
    assert act.allows(
        "publish", "agent", username="bob", topic="mv/agent/bob/act", roles=tree.roles
    )
    assert not act.allows(
        "publish", "agent", username="bob", topic="mv/agent/alice/act", roles=tree.roles
    )
    assert not act.allows("publish", "operator", topic="mv/agent/bob/act", roles=tree.roles)
    assert act.allows("subscribe", "component", topic="mv/agent/bob/act", roles=tree.roles)
    assert act.payload is Action


# -- topics.yaml documents that must be refused ------------------------------------------------


def _doc(*topics: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": 1,
        "root": "mv",
        "roles": {
            "component": {"description": "a component"},
            "agent": {"description": "an agent", "self": "agent"},
        },
        "topics": list(topics),
    }


def _entry(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": "thing.status",
        "pattern": "thing/{id}/status",
        "payload": "Status",
        "qos": 1,
        "retain": True,
        "publish": ["component"],
        "subscribe": ["component"],
        "description": "A thing's status.",
    }
    entry.update(overrides)
    return entry


def _write(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "topics.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_a_minimal_valid_document_loads(tmp_path: Path) -> None:
    tree = load(_write(tmp_path, _doc(_entry())))
    assert tree.thing.status(id="a") == "mv/thing/a/status"
    assert load(_write(tmp_path, _doc(_entry())), root="x/y").thing.status(id="a") == (
        "x/y/thing/a/status"
    )


def _without(key: str) -> dict[str, Any]:
    entry = _entry()
    del entry[key]
    return entry


@pytest.mark.parametrize(
    ("entries", "entry", "problem"),
    [
        ([_without("qos")], "thing.status", "missing key(s) ['qos']"),
        ([_without("description")], "thing.status", "missing key(s) ['description']"),
        ([_entry(publish=["ghost"])], "thing.status", "unknown role 'ghost'"),
        ([_entry(subscribe=["component", "nobody"])], "thing.status", "unknown role 'nobody'"),
        ([_entry(qos=2)], "thing.status", "qos must be 0 or 1"),
        ([_entry(qos="1")], "thing.status", "qos must be 0 or 1"),
        ([_entry(qos=-1)], "thing.status", "qos must be 0 or 1"),
        ([_entry(qos=True)], "thing.status", "qos must be 0 or 1"),  # YAML's yes/on
        ([_entry(qos=1.0)], "thing.status", "qos must be 0 or 1"),
        ([_entry(publish=["agent:self"])], "thing.status", "self parameter {agent}"),
        ([_entry(publish=["component:owner"])], "thing.status", "only ':self' may follow a role"),
        ([_entry(), _entry()], "thing.status", "declared twice"),
        (
            [_entry(), _entry(name="thing.other", pattern="thing/{name}/status")],
            "thing.other",
            "pattern clashes with 'thing.status'",
        ),
        ([_entry(payload="no_such_module_xyz:Model")], "thing.status", "cannot be imported"),
        ([_entry(payload="bus.payloads:NoSuchModel")], "thing.status", "is not a pydantic model"),
        ([_entry(payload="Envelope")], "thing.status", "is not a pydantic model"),
        ([_entry(pattern="/thing/{id}")], "thing.status", "no leading '/'"),
        ([_entry(pattern="thing/{id}/{id}")], "thing.status", "parameter 'id' appears twice"),
        ([_entry(pattern="Thing/{id}")], "thing.status", "level 'Thing'"),
        ([_entry(retain="yes")], "thing.status", "retain must be true or false"),
        ([_entry(name="Thing")], "Thing", "name must be dotted lower-case words"),
        ([_entry(colour="red")], "thing.status", "unknown key(s) ['colour']"),
    ],
)
def test_bad_entries_are_refused_naming_the_entry_and_the_problem(
    tmp_path: Path, entries: list[dict[str, Any]], entry: str, problem: str
) -> None:
    path = _write(tmp_path, _doc(*entries))
    with pytest.raises(TopicsFileError) as info:
        load(path)
    assert info.value.entry == entry
    message = str(info.value)
    assert f"entry {entry!r}" in message
    assert problem in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ([], "the document must be a mapping"),
        ({**_doc(_entry()), "version": 2}, "'version: 1' is required"),
        ({**_doc(_entry()), "roles": {}}, "'roles' must be a non-empty mapping"),
        ({**_doc(_entry()), "topics": []}, "'topics' must be a non-empty list"),
        ({**_doc(_entry()), "root": "Bad Root"}, "root 'Bad Root'"),
    ],
)
def test_bad_documents_are_refused(tmp_path: Path, document: Any, problem: str) -> None:
    with pytest.raises(TopicsFileError) as info:
        load(_write(tmp_path, document))
    assert problem in str(info.value)


def test_unreadable_and_invalid_yaml_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TopicsFileError, match="cannot read"):
        load(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\ntopics: [unclosed\n")
    with pytest.raises(TopicsFileError, match="not valid YAML"):
        load(broken)
