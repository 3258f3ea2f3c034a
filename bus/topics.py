"""The topic tree, loaded out of topics.yaml, and the one wildcard matcher.

`load()` reads and validates topics.yaml once; every problem names the entry and what is wrong.
A `TopicTree` hands out builders by dotted name::

    tree = load()
    tree.component.status(kind="health", id="main")   # -> Topic('mv/sys/component/health/main/status')
    tree.agent.act(agent="+")                          # a filter: '+' (or an omitted param) matches any

Both carry their `TopicSpec`, so QoS, retain and the payload model always come from the
declaration, never from the call site. `matches()` is the only MQTT wildcard matcher in the
codebase: routing, the in-memory broker and ACL checks all use it.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from bus.errors import TopicError, TopicsFileError

__all__ = [
    "AclRule",
    "Grant",
    "QoS",
    "Role",
    "Topic",
    "TopicSpec",
    "TopicTree",
    "default_topics_path",
    "load",
    "matches",
    "overlaps",
    "validate_filter",
    "validate_topic",
]

ID_RE = re.compile(r"^[a-z0-9_-]+$")
_PARAM_RE = re.compile(r"^\{([a-z_][a-z0-9_]*)\}$")
_ROOT_RE = re.compile(r"^[a-z0-9_-]+(/[a-z0-9_-]+)*$")


class QoS(IntEnum):
    """MQTT quality of service; the platform uses 0 and 1 (NATS offers no more)."""

    AT_MOST_ONCE = 0
    AT_LEAST_ONCE = 1


def matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` matches the MQTT filter `topic_filter` (`+` one level, `#` the rest).

    Topics starting with `$` are not matched by a filter starting with a wildcard (MQTT 4.7.2).
    """
    if topic_filter == topic:
        return True
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_parts = topic_filter.split("/")
    t_parts = topic.split("/")
    for i, part in enumerate(f_parts):
        if part == "#":
            return True
        if i >= len(t_parts):
            return False
        if part != "+" and part != t_parts[i]:
            return False
    return len(f_parts) == len(t_parts)


def overlaps(a: str, b: str) -> bool:
    """Whether some topic is matched by both filters `a` and `b` (a filter may be a topic)."""
    ap, bp = a.split("/"), b.split("/")
    for i in range(max(len(ap), len(bp))):
        x = ap[i] if i < len(ap) else None
        y = bp[i] if i < len(bp) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        if x != y and x != "+" and y != "+":
            return False
    return True


def validate_topic(topic: str) -> None:
    """Raise TopicError unless `topic` is a valid topic name to publish on."""
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        raise TopicError(f"invalid topic name {topic!r}", topic=topic)
    if len(topic.encode()) > 65535:
        raise TopicError("topic longer than 65535 bytes", topic=topic)


def validate_filter(topic_filter: str) -> None:
    """Raise TopicError unless `topic_filter` is a valid subscription filter."""
    if not topic_filter or "\x00" in topic_filter:
        raise TopicError(f"invalid topic filter {topic_filter!r}", topic=topic_filter)
    parts = topic_filter.split("/")
    for i, part in enumerate(parts):
        if "#" in part and (part != "#" or i != len(parts) - 1):
            raise TopicError("'#' must be a whole last level", topic=topic_filter)
        if "+" in part and part != "+":
            raise TopicError("'+' must be a whole level", topic=topic_filter)


@dataclass(frozen=True)
class Role:
    name: str
    description: str
    self_param: str | None = None


@dataclass(frozen=True)
class Grant:
    """A role allowed to publish or subscribe; `self_only` binds the role's self-parameter."""

    role: str
    self_only: bool = False

    def __str__(self) -> str:
        return f"{self.role}:self" if self.self_only else self.role


@dataclass(frozen=True)
class AclRule:
    """One broker access rule: `pattern` may hold `%u` (the username) in a self-bound level."""

    access: Literal["read", "write"]
    pattern: str
    topic: str  # the TopicSpec name it came from


class Topic(str):
    """A topic name or filter built from a declaration; carries its `TopicSpec`."""

    spec: TopicSpec
    is_filter: bool

    def __new__(cls, value: str, spec: TopicSpec, is_filter: bool) -> Topic:
        obj = super().__new__(cls, value)
        obj.spec = spec
        obj.is_filter = is_filter
        return obj


@dataclass(frozen=True)
class TopicSpec:
    """One declared topic."""

    name: str
    pattern: str  # relative to the root, e.g. 'sys/component/{kind}/{id}/status'
    params: tuple[str, ...]
    payload_ref: str
    payload: type[BaseModel]
    qos: QoS
    retain: bool
    publish: tuple[Grant, ...]
    subscribe: tuple[Grant, ...]
    description: str
    root: str = "mv"
    _levels: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @property
    def full_pattern(self) -> str:
        """The pattern with the root prefix, e.g. 'mv/sys/health'."""
        return f"{self.root}/{self.pattern}"

    @property
    def wildcard(self) -> str:
        """The filter matching every topic of this declaration."""
        return self._render({}, "+")

    def _render(self, values: Mapping[str, str], default: str | None) -> str:
        out = [self.root]
        for level in self._levels:
            m = _PARAM_RE.match(level)
            if m is None:
                out.append(level)
                continue
            name = m.group(1)
            value = values.get(name, default)
            if value is None:
                raise TopicError(f"{self.name}: missing parameter {name!r}", topic=self.pattern)
            out.append(value)
        return "/".join(out)

    def build(self, **params: str) -> Topic:
        """A topic name or filter: a parameter that is omitted or '+' matches any id."""
        unknown = set(params) - set(self.params)
        if unknown:
            raise TopicError(f"{self.name}: unknown parameter(s) {sorted(unknown)}")
        is_filter = False
        for key, value in params.items():
            if value in ("+", "#"):
                if value == "#":
                    raise TopicError(f"{self.name}: '#' is not a parameter value; use '+'")
                is_filter = True
            elif not isinstance(value, str) or not ID_RE.match(value):
                raise TopicError(
                    f"{self.name}: parameter {key}={value!r} must match [a-z0-9_-]+",
                    topic=self.pattern,
                )
        if len(params) < len(self.params):
            is_filter = True
        return Topic(self._render(params, "+"), self, is_filter)

    __call__ = build

    def parse(self, topic: str) -> dict[str, str] | None:
        """The parameters of a concrete topic of this declaration, or None if it is not one."""
        prefix = self.root + "/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix) :].split("/")
        levels = self._levels
        if len(parts) != len(levels):
            return None
        values: dict[str, str] = {}
        for level, part in zip(levels, parts, strict=True):
            if level[0] == "{":
                if not part or part in ("+", "#"):
                    return None
                values[level[1:-1]] = part
            elif level != part:
                return None
        return values

    def allows(
        self,
        action: Literal["publish", "subscribe"],
        role: str,
        *,
        username: str | None = None,
        topic: str | None = None,
        roles: Mapping[str, Role] | None = None,
    ) -> bool:
        """Whether a user of `role` may publish/subscribe on `topic` of this declaration."""
        for grant in self.publish if action == "publish" else self.subscribe:
            if grant.role != role:
                continue
            if not grant.self_only:
                return True
            role_def = (roles or {}).get(role)
            if role_def is None or role_def.self_param is None or topic is None:
                continue
            values = self.parse(topic)
            if values is not None and values.get(role_def.self_param) == username:
                return True
        return False


class _Namespace:
    """Attribute access to builders by dotted name: tree.component.status(...)."""

    def __init__(self, tree: TopicTree, prefix: str) -> None:
        self._tree = tree
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        full = f"{self._prefix}.{name}" if self._prefix else name
        spec = self._tree.specs.get(full)
        if spec is not None and not any(k.startswith(full + ".") for k in self._tree.specs):
            return spec
        if spec is None and not any(k.startswith(full + ".") for k in self._tree.specs):
            raise AttributeError(f"no topic {full!r} is declared in topics.yaml")
        return _Namespace(self._tree, full)


class TopicTree:
    """Every declared topic under one root prefix."""

    def __init__(
        self,
        root: str,
        roles: Mapping[str, Role],
        specs: Mapping[str, TopicSpec],
        path: str | None = None,
    ) -> None:
        self.root = root
        self.roles: dict[str, Role] = dict(roles)
        self.specs: dict[str, TopicSpec] = dict(specs)
        self.path = path
        self._resolve_cache: dict[str, TopicSpec | None] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(_Namespace(self, ""), name)

    def __getitem__(self, name: str) -> TopicSpec:
        try:
            return self.specs[name]
        except KeyError:
            raise TopicError(f"no topic {name!r} is declared in topics.yaml") from None

    def __iter__(self) -> Iterator[TopicSpec]:
        return iter(self.specs.values())

    def with_root(self, root: str) -> TopicTree:
        """The same declarations under another root prefix (each test uses its own)."""
        _check_root(root, self.path)
        specs = {n: _rooted(s, root) for n, s in self.specs.items()}
        return TopicTree(root, self.roles, specs, self.path)

    def resolve(self, topic: str) -> TopicSpec | None:
        """The declaration a concrete topic belongs to, or None."""
        try:
            return self._resolve_cache[topic]
        except KeyError:
            pass
        found = None
        for spec in self.specs.values():
            if spec.parse(topic) is not None:
                found = spec
                break
        if len(self._resolve_cache) > 65536:
            self._resolve_cache.clear()
        self._resolve_cache[topic] = found
        return found

    def acl(self, role: str, username_token: str = "%u") -> list[AclRule]:
        """Broker access rules of a role; self-bound levels hold `username_token`."""
        if role not in self.roles:
            raise TopicError(f"unknown role {role!r}")
        self_param = self.roles[role].self_param
        rules: list[AclRule] = []
        for spec in self.specs.values():
            for access, grants in (("write", spec.publish), ("read", spec.subscribe)):
                for grant in grants:
                    if grant.role != role:
                        continue
                    values = {self_param: username_token} if grant.self_only and self_param else {}
                    rules.append(AclRule(access, spec._render(values, "+"), spec.name))  # type: ignore[arg-type]
        return rules


def _rooted(spec: TopicSpec, root: str) -> TopicSpec:
    return TopicSpec(
        name=spec.name,
        pattern=spec.pattern,
        params=spec.params,
        payload_ref=spec.payload_ref,
        payload=spec.payload,
        qos=spec.qos,
        retain=spec.retain,
        publish=spec.publish,
        subscribe=spec.subscribe,
        description=spec.description,
        root=root,
        _levels=spec._levels,
    )


def _check_root(root: str, path: str | None) -> None:
    if not isinstance(root, str) or not _ROOT_RE.match(root):
        raise TopicsFileError(
            f"root {root!r} must be levels of [a-z0-9_-]+ separated by '/'", path=path
        )


def default_topics_path() -> Path:
    """MAPLEVERSE_TOPICS_FILE, else topics.yaml beside the packages (repo or installed copy)."""
    env = os.environ.get("MAPLEVERSE_TOPICS_FILE")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "topics.yaml", here / "topics.yaml"):
        if candidate.exists():
            return candidate
    return here.parent / "topics.yaml"


def _import_model(ref: str, entry: str, path: str) -> type[BaseModel]:
    module_name, _, attr = ref.rpartition(":")
    module_name = module_name or "bus.payloads"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TopicsFileError(
            f"payload module {module_name!r} cannot be imported: {exc}", entry=entry, path=path
        ) from exc
    model = getattr(module, attr, None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TopicsFileError(f"payload {ref!r} is not a pydantic model", entry=entry, path=path)
    return model


def _grants(
    raw: Any, key: str, entry: str, path: str, roles: Mapping[str, Role]
) -> tuple[Grant, ...]:
    if not isinstance(raw, list):
        raise TopicsFileError(f"{key!r} must be a list of roles", entry=entry, path=path)
    out = []
    for item in raw:
        if not isinstance(item, str):
            raise TopicsFileError(f"{key!r}: {item!r} is not a role", entry=entry, path=path)
        role, _, qualifier = item.partition(":")
        if role not in roles:
            raise TopicsFileError(
                f"{key!r}: unknown role {role!r} (declared: {sorted(roles)})",
                entry=entry,
                path=path,
            )
        if qualifier not in ("", "self"):
            raise TopicsFileError(
                f"{key!r}: {item!r}: only ':self' may follow a role", entry=entry, path=path
            )
        out.append(Grant(role, qualifier == "self"))
    return tuple(out)


_ENTRY_KEYS = {"name", "pattern", "payload", "qos", "retain", "publish", "subscribe", "description"}


def parse(document: Any, path: str = "topics.yaml", root: str | None = None) -> TopicTree:
    """Validate a loaded topics document and build the tree."""
    if not isinstance(document, dict):
        raise TopicsFileError("the document must be a mapping", path=path)
    if document.get("version") != 1:
        raise TopicsFileError("'version: 1' is required", path=path)
    root = root or document.get("root", "mv")
    _check_root(root, path)
    raw_roles = document.get("roles")
    if not isinstance(raw_roles, dict) or not raw_roles:
        raise TopicsFileError("'roles' must be a non-empty mapping", path=path)
    roles: dict[str, Role] = {}
    for name, body in raw_roles.items():
        if not isinstance(body, dict) or not isinstance(body.get("description"), str):
            raise TopicsFileError("a role needs a description", entry=name, path=path)
        roles[name] = Role(name, body["description"], body.get("self"))
    raw_topics = document.get("topics")
    if not isinstance(raw_topics, list) or not raw_topics:
        raise TopicsFileError("'topics' must be a non-empty list", path=path)
    specs: dict[str, TopicSpec] = {}
    patterns: dict[str, str] = {}
    for index, raw in enumerate(raw_topics):
        entry = raw.get("name") if isinstance(raw, dict) else None
        label = entry if isinstance(entry, str) else f"#{index}"
        if not isinstance(raw, dict):
            raise TopicsFileError("each topic must be a mapping", entry=label, path=path)
        missing = _ENTRY_KEYS - set(raw)
        if missing:
            raise TopicsFileError(f"missing key(s) {sorted(missing)}", entry=label, path=path)
        extra = set(raw) - _ENTRY_KEYS
        if extra:
            raise TopicsFileError(f"unknown key(s) {sorted(extra)}", entry=label, path=path)
        if not re.match(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$", label):
            raise TopicsFileError("name must be dotted lower-case words", entry=label, path=path)
        if label in specs:
            raise TopicsFileError("declared twice", entry=label, path=path)
        pattern = raw["pattern"]
        if not isinstance(pattern, str) or pattern.startswith("/") or not pattern:
            raise TopicsFileError(
                "pattern must be a relative topic (no leading '/')", entry=label, path=path
            )
        levels = tuple(pattern.split("/"))
        params = []
        for level in levels:
            m = _PARAM_RE.match(level)
            if m:
                if m.group(1) in params:
                    raise TopicsFileError(
                        f"parameter {m.group(1)!r} appears twice", entry=label, path=path
                    )
                params.append(m.group(1))
            elif not ID_RE.match(level):
                raise TopicsFileError(
                    f"level {level!r} must be [a-z0-9_-]+ or {{param}}", entry=label, path=path
                )
        shape = "/".join("{}" if _PARAM_RE.match(lv) else lv for lv in levels)
        if shape in patterns:
            raise TopicsFileError(
                f"pattern clashes with {patterns[shape]!r}", entry=label, path=path
            )
        patterns[shape] = label
        if type(raw["qos"]) is not int or raw["qos"] not in (0, 1):
            raise TopicsFileError(
                "qos must be 0 or 1 (MQTT 3.1.1 brokers here offer no more)", entry=label, path=path
            )
        if not isinstance(raw["retain"], bool):
            raise TopicsFileError("retain must be true or false", entry=label, path=path)
        if not isinstance(raw["description"], str) or not raw["description"].strip():
            raise TopicsFileError("description must be a non-empty string", entry=label, path=path)
        if not isinstance(raw["payload"], str):
            raise TopicsFileError("payload must name a model", entry=label, path=path)
        publish = _grants(raw["publish"], "publish", label, path, roles)
        subscribe = _grants(raw["subscribe"], "subscribe", label, path, roles)
        for grant in (*publish, *subscribe):
            if grant.self_only:
                sp = roles[grant.role].self_param
                if sp is None or sp not in params:
                    raise TopicsFileError(
                        f"'{grant}' needs the pattern to have the role's self parameter {{{sp}}}",
                        entry=label,
                        path=path,
                    )
        specs[label] = TopicSpec(
            name=label,
            pattern=pattern,
            params=tuple(params),
            payload_ref=raw["payload"],
            payload=_import_model(raw["payload"], label, path),
            qos=QoS(raw["qos"]),
            retain=raw["retain"],
            publish=publish,
            subscribe=subscribe,
            description=" ".join(raw["description"].split()),
            root=root,
            _levels=levels,
        )
    return TopicTree(root, roles, specs, path)


@functools.lru_cache(maxsize=16)
def _load_cached(path: str, mtime: float, root: str | None) -> TopicTree:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise TopicsFileError(f"cannot read: {exc.strerror}", path=path) from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TopicsFileError(f"not valid YAML: {exc}", path=path) from exc
    return parse(document, path, root)


def load(path: str | os.PathLike[str] | None = None, *, root: str | None = None) -> TopicTree:
    """Load and validate topics.yaml (cached while the file is unchanged)."""
    p = Path(path) if path is not None else default_topics_path()
    try:
        mtime = p.stat().st_mtime
    except OSError as exc:
        raise TopicsFileError(f"cannot read: {exc.strerror}", path=str(p)) from exc
    return _load_cached(str(p), mtime, root)
