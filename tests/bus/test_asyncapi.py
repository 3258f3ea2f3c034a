"""docs/asyncapi.yaml: current, valid for the official AsyncAPI parser, faithful to topics.yaml."""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Annotated, Any, Literal

import jsonschema
import pytest
import referencing
import yaml
from pydantic import BaseModel, Field
from referencing.jsonschema import DRAFT7

from bus import codecs
from bus.asyncapi import (
    ENVELOPE_SCHEMA,
    HEADER,
    MQTT_BINDING_VERSION,
    package_version,
    render,
    render_yaml,
)
from bus.errors import PayloadError, TopicsFileError
from bus.topics import QoS, TopicTree, load

REPO = Path(__file__).resolve().parents[2]
TOPICS = REPO / "topics.yaml"
DOC = REPO / "docs" / "asyncapi.yaml"
NODE_DIR = REPO / "tests" / "node"
VALIDATOR = NODE_DIR / "validate_asyncapi.mjs"
DOC_URI = "urn:mapleverse:asyncapi"


@pytest.fixture(scope="module")
def tree() -> TopicTree:
    # The repository's own file, whatever MAPLEVERSE_TOPICS_FILE says; its root is `mv`.
    return load(TOPICS)


@pytest.fixture(scope="module")
def doc(tree: TopicTree) -> dict[str, Any]:
    return render(tree, version=package_version())


def _message_validator(doc: dict[str, Any], message: str) -> jsonschema.Draft7Validator:
    registry: referencing.Registry[Any] = referencing.Registry().with_resource(
        DOC_URI, DRAFT7.create_resource(doc)
    )
    ref = {"$ref": f"{DOC_URI}#/components/messages/{message}/payload"}
    return jsonschema.Draft7Validator(ref, registry=registry)


def _channel_message(doc: dict[str, Any], channel: str) -> str:
    (name,) = doc["channels"][channel]["messages"]
    return str(name)


def _run_parser(path: Path) -> tuple[int, dict[str, Any]]:
    node = shutil.which("node")
    installed = (NODE_DIR / "node_modules" / "@asyncapi" / "parser").is_dir()
    if node is None or not installed:
        reason = (
            "node is not installed"
            if node is None
            else "@asyncapi/parser is not installed: run `npm ci --prefix tests/node`"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true needs the AsyncAPI parser: {reason}")
        pytest.skip(reason)
    proc = subprocess.run(
        [node, str(VALIDATOR), str(path)],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"validator crashed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.returncode, report


# (a) the committed document is current --------------------------------------------------------


def test_committed_document_is_current(tree: TopicTree) -> None:
    expected = render_yaml(tree, package_version())
    actual = DOC.read_text() if DOC.exists() else ""
    if actual != expected:
        diff = "".join(
            list(
                difflib.unified_diff(
                    actual.splitlines(keepends=True),
                    expected.splitlines(keepends=True),
                    "docs/asyncapi.yaml (committed)",
                    "docs/asyncapi.yaml (from topics.yaml)",
                )
            )[:60]
        )
        pytest.fail(f"docs/asyncapi.yaml is stale: run `make generate`\n{diff}", pytrace=False)


def test_yaml_is_the_document_with_the_header(tree: TopicTree, doc: dict[str, Any]) -> None:
    text = render_yaml(tree, package_version())
    assert text.startswith(HEADER)
    assert "&id" not in text and "*id" not in text  # no YAML anchors or aliases
    assert yaml.safe_load(text) == doc


# (b) the official parser accepts it -----------------------------------------------------------


def test_official_parser_accepts_the_document(tree: TopicTree, tmp_path: Path) -> None:
    path = tmp_path / "asyncapi.yaml"
    path.write_text(render_yaml(tree, package_version()))
    code, report = _run_parser(path)
    problems = [d for d in report["diagnostics"] if d["severity"] in ("error", "warning")]
    assert code == 0 and report["ok"], problems
    assert report["asyncapi"] == "3.0.0"
    assert problems == []


def test_official_parser_rejects_a_broken_binding(doc: dict[str, Any], tmp_path: Path) -> None:
    # The validator can fail: a QoS MQTT does not have is an error in the bindings schema.
    broken = json.loads(json.dumps(doc))
    broken["operations"]["health.send"]["bindings"]["mqtt"]["qos"] = 3
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken, sort_keys=False))
    code, report = _run_parser(path)
    assert code == 1 and not report["ok"]
    assert any(
        d["severity"] == "error" and "operations/health.send/bindings" in d["path"]
        for d in report["diagnostics"]
    ), report["diagnostics"]


# (c) the staleness check can fail -------------------------------------------------------------


def test_a_different_tree_renders_a_different_document(tree: TopicTree, tmp_path: Path) -> None:
    document = yaml.safe_load(TOPICS.read_text())
    document["topics"].append(
        {
            "name": "probe.extra",
            "pattern": "sys/probe/{id}/extra",
            "payload": "Probe",
            "qos": 0,
            "retain": True,
            "publish": ["operator"],
            "subscribe": ["operator"],
            "description": "One topic more than the repository declares.",
        }
    )
    path = tmp_path / "topics.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    other = load(path)

    assert render_yaml(other, package_version()) != render_yaml(tree, package_version())
    channel = render(other, version=package_version())["channels"]["probe.extra"]
    assert channel["address"] == "mv/sys/probe/{id}/extra"


def test_version_qos_and_root_all_reach_the_document(tree: TopicTree) -> None:
    base = render_yaml(tree, "0.1.0")
    assert render_yaml(tree, "9.9.9") != base
    health = tree["health"]
    flipped = {**tree.specs, "health": dataclasses.replace(health, qos=QoS.AT_MOST_ONCE)}
    assert render_yaml(TopicTree(tree.root, tree.roles, flipped, tree.path), "0.1.0") != base
    rooted = render(tree.with_root("t/x1"), version="0.1.0")
    assert rooted["channels"]["health"]["address"] == "t/x1/sys/health"


def test_output_does_not_depend_on_declaration_order(tree: TopicTree) -> None:
    reordered = TopicTree(
        tree.root, dict(reversed(tree.roles.items())), dict(reversed(tree.specs.items()))
    )
    assert render_yaml(reordered, "0.1.0") == render_yaml(tree, "0.1.0")


# (d) every declared topic is in the document as declared --------------------------------------


def test_every_topic_has_its_channel_operations_and_bindings(
    tree: TopicTree, doc: dict[str, Any]
) -> None:
    assert set(doc["channels"]) == set(tree.specs)
    for spec in tree:
        channel = doc["channels"][spec.name]
        assert channel["address"] == spec.full_pattern
        assert list(channel.get("parameters", {})) == list(spec.params)
        for param in channel.get("parameters", {}).values():
            assert param["description"]
            assert param["x-mapleverse-pattern"] == "^[a-z0-9_-]+$"
        message = _channel_message(doc, spec.name)
        assert doc["components"]["messages"][message]["payload"]["allOf"][1]["properties"][
            "data"
        ] == {"$ref": f"#/components/schemas/{message}"}
        assert spec.payload.__name__ == message

        for action, grants in (("send", spec.publish), ("receive", spec.subscribe)):
            op = doc["operations"][f"{spec.name}.{action}"]
            assert op["action"] == action
            assert op["channel"] == {"$ref": f"#/channels/{spec.name}"}
            assert op["messages"] == [{"$ref": f"#/channels/{spec.name}/messages/{message}"}]
            assert op["bindings"]["mqtt"] == {
                "qos": int(spec.qos),
                "retain": spec.retain,
                "bindingVersion": MQTT_BINDING_VERSION,
            }, f"{spec.name}.{action}"
            assert op["x-mapleverse-roles"] == sorted(str(g) for g in grants)
    assert len(doc["operations"]) == 2 * len(tree.specs)


def test_self_bound_roles_are_spelled_out(doc: dict[str, Any]) -> None:
    send = doc["operations"]["agent.act.send"]
    assert send["x-mapleverse-roles"] == ["agent:self", "component"]
    assert "`{agent}` is its own username" in send["description"]
    param = doc["channels"]["agent.telemetry"]["parameters"]["agent"]["description"]
    assert "`agent:self`, `device:self`" in param


def test_servers_speak_mqtt_3_1_1_with_user_and_password(doc: dict[str, Any]) -> None:
    servers = doc["servers"]
    assert servers["embedded"]["host"] == "127.0.0.1:1883"
    assert servers["embedded-ws"]["host"] == "127.0.0.1:9001"
    assert {"mosquitto", "nats"} <= set(servers)
    for server in servers.values():
        assert server["protocolVersion"] == "3.1.1"
        assert server["security"] == [{"$ref": "#/components/securitySchemes/userPassword"}]
    assert doc["components"]["securitySchemes"]["userPassword"]["type"] == "userPassword"


# payload schemas ------------------------------------------------------------------------------


def test_every_schema_is_a_valid_json_schema(doc: dict[str, Any]) -> None:
    for name, schema in doc["components"]["schemas"].items():
        try:
            jsonschema.Draft7Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            pytest.fail(f"components/schemas/{name}: {exc.message}")
    for name, message in doc["components"]["messages"].items():
        jsonschema.Draft7Validator.check_schema(message["payload"])
        assert "$defs" not in json.dumps(message), name
    assert "$defs" not in json.dumps(doc["components"]["schemas"])


def _envelope(data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": "m-1", "sender": "health-main", "ts": 1.7e9, "v": 1, "data": data, **extra}


def test_messages_accept_what_the_models_produce(tree: TopicTree, doc: dict[str, Any]) -> None:
    samples = {
        "agent.telemetry": {"x": 1.0, "y": 2.0, "battery": 0.5},
        "component.status": {"state": "online", "kind": "health", "id": "main", "epoch": 3},
        "rpc.reply": {"ok": True, "result": [1, 2]},
        "agent.act": {"action": "move", "params": {"dx": 1}},
    }
    for name, raw in samples.items():
        spec = tree[name]
        data = spec.payload.model_validate(raw).model_dump(mode="json")
        validator = _message_validator(doc, _channel_message(doc, name))
        validator.validate(_envelope(data))
        validator.validate(_envelope(data, corr="m-0", reply="mv/rpc/reply/c1", trace="t"))


def test_envelope_schema_is_the_codecs_envelope(tree: TopicTree, doc: dict[str, Any]) -> None:
    fields = set(codecs.Envelope._fields)
    assert set(ENVELOPE_SCHEMA["properties"]) == fields | {"data"}
    assert doc["components"]["schemas"]["Envelope"] == ENVELOPE_SCHEMA
    telemetry = tree["agent.telemetry"].payload.model_validate({"x": 1.0, "y": 2.0})
    validator = _message_validator(doc, "Telemetry")
    for extra in ({}, {"corr": "m-0", "reply": "mv/rpc/reply/c1", "trace": "t-1"}):
        raw = codecs.encode(telemetry, id=codecs.IdGenerator()(), sender="drone-7", **extra)
        validator.validate(json.loads(raw))
    newer = json.loads(codecs.encode(telemetry, id="m", sender="s")) | {"v": 2}
    with pytest.raises(PayloadError, match="newer"):
        codecs.decode(json.dumps(newer).encode(), None)
    assert not validator.is_valid(newer)


@pytest.mark.parametrize(
    ("channel", "message", "why"),
    [
        ("agent.telemetry", _envelope({"x": 1.0, "y": 2.0, "battery": 2.0}), "battery > 1"),
        ("component.status", _envelope({"state": "gone", "kind": "k", "id": "i", "epoch": 0}), ""),
        (
            "component.status",
            _envelope({"state": "online", "kind": "K!", "id": "i", "epoch": 0}),
            "",
        ),
        ("agent.act", {"id": "m", "sender": "a", "ts": 1.0, "v": 1}, "no data"),
        ("agent.act", {"id": "m", "sender": "a", "ts": 1.0, "data": {"action": "x"}}, "no v"),
        ("agent.act", _envelope({"action": "x"}, corr=5), "corr is not a string"),
    ],
)
def test_messages_reject_bad_payloads(
    doc: dict[str, Any], channel: str, message: dict[str, Any], why: str
) -> None:
    validator = _message_validator(doc, _channel_message(doc, channel))
    assert not validator.is_valid(message), why


# payload models beyond today's: tuples, discriminated unions, reserved names -------------------


class _Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = 9


class _Dog(BaseModel):
    kind: Literal["dog"]
    good: bool = True


class Exotic(BaseModel):
    """A payload with a tuple and a discriminated union."""

    point: tuple[float, float]
    pet: Annotated[_Cat | _Dog, Field(discriminator="kind")]


class Envelope(BaseModel):
    """A payload model whose name clashes with the envelope's schema."""

    x: int = 0


def _with_payload(tree: TopicTree, name: str, model: type[BaseModel]) -> TopicTree:
    specs = {**tree.specs, name: dataclasses.replace(tree[name], payload=model)}
    return TopicTree(tree.root, tree.roles, specs, tree.path)


def test_exotic_models_become_draft7_schemas(tree: TopicTree, tmp_path: Path) -> None:
    doc = render(_with_payload(tree, "probe.echo", Exotic), version="0.1.0")
    schema = doc["components"]["schemas"]["Exotic"]
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["properties"]["point"]["items"] == [{"type": "number"}] * 2
    assert "discriminator" not in json.dumps(schema)
    validator = _message_validator(doc, "Exotic")
    assert validator.is_valid(_envelope({"point": [1, 2], "pet": {"kind": "cat"}}))
    assert not validator.is_valid(_envelope({"point": [1, 2], "pet": {"kind": "cow"}}))

    path = tmp_path / "exotic.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, report = _run_parser(path)
    assert code == 0 and report["ok"], report["diagnostics"]


def test_a_payload_named_envelope_is_refused(tree: TopicTree) -> None:
    with pytest.raises(TopicsFileError, match="reserved for the message envelope"):
        render(_with_payload(tree, "probe.echo", Envelope), version="0.1.0")
