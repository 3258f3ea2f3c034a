"""The AsyncAPI 3.0.0 document of the topic tree (docs/asyncapi.yaml).

Nothing in the document is written by hand: it is rendered from a `TopicTree` (topics.yaml) and
the pydantic payload models, so a change to either makes the committed copy stale, which a test
catches (`make generate` rewrites it). Shape::

    servers      embedded (amqtt, mqtt + ws), mosquitto, nats; MQTT 3.1.1, user/password
    channels     one per declared topic, keyed by its dotted name; address = full pattern
    operations   `<name>.send` (roles that may publish) and `<name>.receive` (roles that may
                 subscribe), each with the MQTT operation binding (qos, retain) and the roles
                 in `x-mapleverse-roles`
    components   messages: one per payload model, the envelope with `data` = the model
                 schemas: `Envelope` and every payload model (pydantic, `$defs` hoisted)

Output is deterministic: maps are sorted by key, except inside payload schemas where pydantic's
field order (the model's) is kept.
"""

from __future__ import annotations

import copy
import importlib.metadata
import inspect
import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from bus.codecs import SCHEMA_VERSION
from bus.errors import TopicsFileError
from bus.topics import Grant, QoS, TopicSpec, TopicTree

__all__ = [
    "ASYNCAPI_VERSION",
    "ENVELOPE_SCHEMA",
    "HEADER",
    "MQTT_BINDING_VERSION",
    "package_version",
    "render",
    "render_yaml",
]

ASYNCAPI_VERSION = "3.0.0"
# The only MQTT bindings version the AsyncAPI 3.0 schemas accept (operation: qos, retain).
MQTT_BINDING_VERSION = "0.2.0"
HEADER = "# generated from topics.yaml by `mapleverse topics generate`; do not edit\n"

_ENVELOPE = "Envelope"
_SCHEMAS = "#/components/schemas/"
_ID_PATTERN = "^[a-z0-9_-]+$"
_SECURITY = "#/components/securitySchemes/userPassword"
_NULLABLE_STRING = ["string", "null"]
_WRAP = 92  # columns of Markdown text in the YAML literal blocks

# The envelope every Mapleverse message carries; the topic's payload model is its `data`.
ENVELOPE_SCHEMA: dict[str, Any] = {
    "title": _ENVELOPE,
    "description": (
        "The envelope of every Mapleverse message (bus.codecs). Everything a message needs "
        "travels here rather than in MQTT 5 properties, so it works on MQTT 3.1.1 brokers. "
        "`corr`, `reply` and `trace` are left out when empty. Components always send the "
        "envelope; for plain MQTT clients they also accept the bare payload (the model alone)."
    ),
    "type": "object",
    "properties": {
        "id": {"type": "string", "minLength": 1, "description": "Unique id of this message."},
        "sender": {"type": "string", "description": "Id of the client that sent it."},
        "ts": {"type": "number", "description": "Send time, seconds since the Unix epoch."},
        "v": {
            "type": "integer",
            "minimum": 1,
            "maximum": SCHEMA_VERSION,
            "description": "Schema version; a receiver rejects a newer one than it knows.",
        },
        "corr": {
            "type": _NULLABLE_STRING,
            "default": None,
            "description": "Correlation id: on a reply, the id of the request it answers.",
        },
        "reply": {
            "type": _NULLABLE_STRING,
            "default": None,
            "description": "Topic the reply to this message is to be published on.",
        },
        "trace": {
            "type": _NULLABLE_STRING,
            "default": None,
            "description": "Trace id shared by every message of one causal chain.",
        },
        "data": {"description": "The payload; its schema is the topic's payload model."},
    },
    "required": ["id", "sender", "ts", "v", "data"],
}

_SERVERS: dict[str, dict[str, Any]] = {
    "embedded": {
        "host": "127.0.0.1:1883",
        "protocol": "mqtt",
        "title": "Embedded broker (amqtt)",
        "description": "The broker `mapleverse up` starts around its components.",
    },
    "embedded-ws": {
        "host": "127.0.0.1:9001",
        "pathname": "/mqtt",
        "protocol": "ws",
        "title": "Embedded broker (amqtt), MQTT over WebSocket",
        "description": (
            "MQTT over WebSocket (subprotocol `mqtt`) for browser agents; any path is accepted."
        ),
    },
    "mosquitto": {
        "host": "{host}:{port}",
        "protocol": "mqtt",
        "title": "Mosquitto",
        "description": "The Mosquitto broker of a deployment (`docker compose up`).",
        "variables": {
            "host": {"default": "localhost", "description": "Broker host name."},
            "port": {"default": "1883", "description": "MQTT listener port."},
        },
    },
    "nats": {
        "host": "{host}:{port}",
        "protocol": "mqtt",
        "title": "NATS (MQTT interface)",
        "description": (
            "A clustered NATS server with MQTT enabled: QoS 0 and 1 and retained messages."
        ),
        "variables": {
            "host": {"default": "localhost", "description": "NATS server host name."},
            "port": {"default": "1883", "description": "The `mqtt` block's listen port."},
        },
    },
}


def package_version() -> str:
    """The installed Mapleverse version, the `info.version` of the committed document."""
    return importlib.metadata.version("mapleverse")


def render(tree: TopicTree, *, version: str) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of every topic in `tree`, as plain JSON-compatible data."""
    specs = sorted(tree, key=lambda s: s.name)
    schemas, message_of = _payload_schemas(tree, specs)
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for spec in specs:
        message = message_of[spec.payload]
        channels[spec.name] = _channel(tree, spec, message)
        for action, grants in (("receive", spec.subscribe), ("send", spec.publish)):
            if grants:
                operations[f"{spec.name}.{action}"] = _operation(tree, spec, message, action)
    messages = {
        name: _message(model, name)
        for model, name in sorted(message_of.items(), key=lambda item: item[1])
    }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": _info(tree, version),
        "defaultContentType": "application/json",
        "servers": {name: _server(body) for name, body in sorted(_SERVERS.items())},
        "channels": channels,
        "operations": dict(sorted(operations.items())),
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": {
                "userPassword": {
                    "type": "userPassword",
                    "description": (
                        "MQTT username and password; the username selects the role and, for "
                        "agents and devices, is their own id."
                    ),
                },
            },
        },
    }


def render_yaml(tree: TopicTree, version: str) -> str:
    """The document as the YAML text committed to docs/asyncapi.yaml."""
    body = yaml.dump(
        render(tree, version=version),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )
    return HEADER + body


class _Dumper(yaml.SafeDumper):
    """Block style with indented lists and no anchors (the document never shares nodes)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None  # multi-line Markdown stays readable
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _info(tree: TopicTree, version: str) -> dict[str, Any]:
    roles = [
        f"- `{role.name}`: {role.description}"
        + (
            f" Granted as `{role.name}:self`, only where `{{{role.self_param}}}` is its username."
            if role.self_param
            else ""
        )
        for role in sorted(tree.roles.values(), key=lambda r: r.name)
    ]
    paragraphs = [
        "The MQTT topic contract of Mapleverse, generated from `topics.yaml`.",
        f"Every topic lives under the root prefix `{tree.root}` (set by `MAPLEVERSE_ROOT`); "
        "a `{param}` level is one id matching `[a-z0-9_-]+`. MQTT 3.1.1 is the baseline "
        "(QoS 0 and 1, retained messages): every message is a JSON `Envelope` whose `data` is "
        "the topic's payload, and no MQTT 5 property is required.",
        "Roles (the broker ACLs come from the same declaration; each operation lists its roles "
        "in `x-mapleverse-roles`):",
        "\n".join(_fill(item, subsequent_indent="  ") for item in roles),
    ]
    return {
        "title": "Mapleverse",
        "version": version,
        "description": "\n\n".join(p if p.startswith("- ") else _fill(p) for p in paragraphs)
        + "\n",
        "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
    }


def _fill(text: str, subsequent_indent: str = "") -> str:
    return textwrap.fill(
        text,
        _WRAP,
        subsequent_indent=subsequent_indent,
        break_long_words=False,
        break_on_hyphens=False,
    )


def _server(body: dict[str, Any]) -> dict[str, Any]:
    return {
        **body,
        "protocolVersion": "3.1.1",
        "security": [{"$ref": _SECURITY}],
    }


def _payload_schemas(
    tree: TopicTree, specs: Sequence[TopicSpec]
) -> tuple[dict[str, Any], dict[type[BaseModel], str]]:
    """components/schemas (Envelope and every model, `$defs` hoisted) and each model's name."""
    models = sorted({s.payload for s in specs}, key=lambda m: (m.__module__, m.__qualname__))
    refs, defs = models_json_schema(
        [(model, "validation") for model in models], ref_template=_SCHEMAS + "{model}"
    )
    names = {model: refs[(model, "validation")]["$ref"].removeprefix(_SCHEMAS) for model in models}
    hoisted = {name: _draft7(schema) for name, schema in defs.get("$defs", {}).items()}
    if _ENVELOPE in hoisted:
        users = [s.name for s in specs if names[s.payload] == _ENVELOPE] or ["?"]
        raise TopicsFileError(
            f"payload schema name {_ENVELOPE!r} is reserved for the message envelope; "
            "rename the model",
            entry=users[0],
            path=tree.path,
        )
    hoisted[_ENVELOPE] = copy.deepcopy(ENVELOPE_SCHEMA)  # callers may edit the document
    return dict(sorted(hoisted.items())), names


_SCHEMA_MAPS = ("properties", "patternProperties", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
_SCHEMA_VALUES = (
    "items", "additionalItems", "additionalProperties", "not", "if", "then", "else",
    "contains", "propertyNames",
)  # fmt: skip


def _draft7(schema: Any) -> Any:
    """A pydantic (2020-12) schema in the AsyncAPI Schema dialect, a superset of draft 07.

    `prefixItems` becomes the draft 07 array form of `items`, and pydantic's OpenAPI-style
    `discriminator` object is dropped (AsyncAPI's is a plain property name with other
    semantics; the `oneOf` alone still validates exactly). Values of data keywords (`default`,
    `const`, `enum`, `examples`) are left alone.
    """
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "discriminator" and isinstance(value, dict):
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _draft7(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [_draft7(sub) for sub in value]
        elif key in _SCHEMA_VALUES:
            out[key] = _draft7(value)
        elif key == "prefixItems" and isinstance(value, list):
            continue  # handled below, with `items`
        else:
            out[key] = value
    prefix = schema.get("prefixItems")
    if isinstance(prefix, list):
        rest = out.pop("items", None)
        out["items"] = [_draft7(sub) for sub in prefix]
        if rest is not None:
            out["additionalItems"] = rest
    return out


def _roles(tree: TopicTree, grants: Iterable[Grant]) -> str:
    parts = []
    for grant in sorted(grants, key=str):
        param = tree.roles[grant.role].self_param if grant.self_only else None
        note = f" (only where `{{{param}}}` is its own username)" if param else ""
        parts.append(f"`{grant}`{note}")
    return ", ".join(parts)


def _delivery(spec: TopicSpec) -> str:
    qos = "QoS 1, at least once" if spec.qos == QoS.AT_LEAST_ONCE else "QoS 0, at most once"
    return f"{qos}; retained" if spec.retain else qos


def _channel(tree: TopicTree, spec: TopicSpec, message: str) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "address": spec.full_pattern,
        "title": spec.name,
        "description": spec.description,
    }
    if spec.params:
        channel["parameters"] = {param: _parameter(tree, spec, param) for param in spec.params}
    channel["messages"] = {message: {"$ref": f"#/components/messages/{message}"}}
    channel["tags"] = [{"name": spec.pattern.split("/", 1)[0]}]
    return channel


def _parameter(tree: TopicTree, spec: TopicSpec, param: str) -> dict[str, Any]:
    description = f"The `{param}` level: one id matching `[a-z0-9_-]+`."
    bound = sorted(
        str(g)
        for g in (*spec.publish, *spec.subscribe)
        if g.self_only and tree.roles[g.role].self_param == param
    )
    if bound:
        roles = ", ".join(f"`{g}`" for g in dict.fromkeys(bound))
        description += f" For {roles} it must be the client's own username."
    return {"description": description, "x-mapleverse-pattern": _ID_PATTERN}


def _operation(tree: TopicTree, spec: TopicSpec, message: str, action: str) -> dict[str, Any]:
    if action == "send":
        grants = spec.publish
        title = f"Publish {spec.name}"
        how = f"Publish on `{spec.full_pattern}` ({_delivery(spec)})."
        who = f"May publish: {_roles(tree, grants)}."
    else:
        grants = spec.subscribe
        title = f"Subscribe to {spec.name}"
        how = f"Subscribe with `{spec.wildcard}` or a concrete topic ({_delivery(spec)})."
        if spec.retain:
            how += " A new subscriber gets the current retained message at once."
        who = f"May subscribe: {_roles(tree, grants)}."
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{spec.name}"},
        "title": title,
        "summary": spec.description,
        "description": f"{how} {who}",
        "messages": [{"$ref": f"#/channels/{spec.name}/messages/{message}"}],
        "bindings": {
            "mqtt": {
                "qos": int(spec.qos),
                "retain": spec.retain,
                "bindingVersion": MQTT_BINDING_VERSION,
            },
        },
        "x-mapleverse-roles": sorted(str(g) for g in grants),
    }


def _message(model: type[BaseModel], name: str) -> dict[str, Any]:
    doc = inspect.cleandoc(model.__doc__ or "").split("\n\n", 1)[0].replace("\n", " ")
    return {
        "name": name,
        "title": name,
        "summary": doc or f"A {name} payload.",
        "correlationId": {
            "description": "On a reply, the envelope's `corr` is the id of the request.",
            "location": "$message.payload#/corr",
        },
        "payload": {
            "allOf": [
                {"$ref": _SCHEMAS + _ENVELOPE},
                {
                    "type": "object",
                    "properties": {"data": {"$ref": _SCHEMAS + name}},
                    "required": ["data"],
                },
            ],
        },
        "x-mapleverse-model": f"{model.__module__}:{model.__qualname__}",
    }
