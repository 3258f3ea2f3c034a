"""Topic access control for every role, derived from topics.yaml.

Two products of one rule set (`TopicTree.acl(role)`):

* `Acl.allowed()`, the checker the embedded broker calls on every PUBLISH and SUBSCRIBE;
* `render_acl_file()`, the Mosquitto `acl_file` of a deployment.

Publishing needs a write rule that matches the topic (`bus.topics.matches`, the one matcher).
The embedded broker follows Mosquitto 2 on subscriptions: a SUBSCRIBE is granted when its
filter overlaps at least one read rule (`bus.topics.overlaps`; a filter that can match nothing
the user may read is refused with 0x80), and every message is checked again on delivery
(`receive`): it reaches the subscriber only if a read rule matches its topic. So an operator's
`mosquitto_sub -t 'mv/#'` shows everything an operator may read, and an agent's `mv/#` shows
only its own topics, on both brokers. `covers()` (does one rule cover a whole filter?) remains
for tools that want the stricter question answered.

Self-bound grants (`agent:self`) hold `%u` where the self parameter stands; the username is
substituted. A username that is not `[a-z0-9_-]+` gets nothing (as Mosquitto refuses pattern
checks for names holding `+`, `#` or `/`).

`root` re-roots the rules: `Acl(tree, root="+")` applies them under any one-level root, which
is what test brokers use so each test can work under its own root.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Literal

from broker.users import USERNAME_RE, User
from bus.errors import TopicError
from bus.topics import AclRule, TopicTree, matches, overlaps, validate_filter, validate_topic

__all__ = ["Acl", "Action", "covers", "render_acl_file"]

Action = Literal["publish", "subscribe", "receive"]
USER_TOKEN = "%u"
_ROOT_RE = re.compile(r"^([a-z0-9_-]+|\+)(/([a-z0-9_-]+|\+))*$")
_FRESH = "\x00"  # a level no rule can contain: MQTT forbids NUL in topics
_CACHE_LIMIT = 65536

GENERATED_BY = "mapleverse topics generate"


def covers(rule: str, topic_filter: str) -> bool:
    """Whether every topic that `topic_filter` can match is matched by `rule`.

    Decided with `matches()` on witness topics: each `+` of the filter becomes a level no rule
    can name, and a trailing `#` becomes both nothing (`a/#` matches `a`) and more levels than
    the rule has. A rule matching every witness matches every topic of the filter.
    """
    levels = topic_filter.split("/")
    multi = levels[-1] == "#"
    prefix = [_FRESH if level == "+" else level for level in (levels[:-1] if multi else levels)]
    if not multi:
        return matches(rule, "/".join(prefix))
    deep = "/".join([*prefix, *[_FRESH] * (rule.count("/") + 2)])
    if not matches(rule, deep):
        return False
    return not prefix or matches(rule, "/".join(prefix))


class Acl:
    """The access rules of every role of a topic tree, and the checker over them."""

    def __init__(self, tree: TopicTree, *, root: str | None = None) -> None:
        root = tree.root if root is None else root
        if not _ROOT_RE.match(root):
            raise TopicError(f"ACL root {root!r} must be levels of [a-z0-9_-]+ or '+'")
        self.tree = tree
        self.root = root
        old = tree.root + "/"
        self._rules: dict[str, tuple[AclRule, ...]] = {
            role: tuple(
                AclRule(r.access, root + "/" + r.pattern[len(old) :], r.topic)
                for r in tree.acl(role, USER_TOKEN)
            )
            for role in tree.roles
        }
        self._cache: dict[tuple[str, str, str, str], bool] = {}

    @property
    def roles(self) -> tuple[str, ...]:
        """The role names, in topics.yaml order."""
        return tuple(self._rules)

    def self_bound(self, role: str) -> bool:
        """Whether the role's username is its self parameter (`self:` in topics.yaml)."""
        return self.tree.roles[role].self_param is not None

    def rules(self, role: str) -> tuple[AclRule, ...]:
        """The role's rules; self-bound levels hold `%u`. Unknown role: TopicError."""
        try:
            return self._rules[role]
        except KeyError:
            raise TopicError(f"unknown role {role!r} (declared: {sorted(self._rules)})") from None

    def patterns(self, username: str, role: str, action: Action) -> tuple[str, ...]:
        """The filters a user may publish to / subscribe within, `%u` substituted."""
        access = "write" if action == "publish" else "read"
        if not USERNAME_RE.match(username):
            return ()
        return tuple(
            _substitute(r.pattern, username) for r in self.rules(role) if r.access == access
        )

    def allowed(self, username: str, role: str, action: Action, topic_or_filter: str) -> bool:
        """Whether `username` of `role` may publish on a topic / subscribe with a filter."""
        key = (username, role, action, topic_or_filter)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        result = self._decide(username, role, action, topic_or_filter)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = result
        return result

    def _decide(self, username: str, role: str, action: Action, topic: str) -> bool:
        if role not in self._rules or topic.startswith("$"):
            return False
        try:
            if action in ("publish", "receive"):
                validate_topic(topic)
            else:
                validate_filter(topic)
        except TopicError:
            return False
        patterns = self.patterns(username, role, action)
        if action == "subscribe":
            return any(overlaps(p, topic) for p in patterns)
        return any(matches(p, topic) for p in patterns)  # publish and receive


def _substitute(pattern: str, username: str) -> str:
    return "/".join(username if level == USER_TOKEN else level for level in pattern.split("/"))


def _pattern_lines(acl: Acl) -> list[tuple[str, str]]:
    """Every rule of the self-bound roles, deduplicated, in topics.yaml order."""
    lines: list[tuple[str, str]] = []
    for role in acl.roles:
        if acl.self_bound(role):
            for rule in acl.rules(role):
                if (rule.access, rule.pattern) not in lines:
                    lines.append((rule.access, rule.pattern))
    return lines


def _user_lines(acl: Acl, user: User, patterns: list[tuple[str, str]]) -> list[str]:
    """A user's section: denials of what the patterns would over-grant, then its own rules."""
    own = {
        "write": acl.patterns(user.name, user.role, "publish"),
        "read": acl.patterns(user.name, user.role, "subscribe"),
    }
    lines: list[str] = []
    for access, pattern in patterns:
        concrete = _substitute(pattern, user.name)
        line = f"topic deny {concrete}"
        if not any(covers(p, concrete) for p in own[access]) and line not in lines:
            lines.append(line)
    if not acl.self_bound(user.role):
        lines += [f"topic {r.access} {r.pattern}" for r in acl.rules(user.role)]
    return lines


def render_acl_file(acl: Acl, users: Iterable[User] | Mapping[str, User]) -> str:
    """The Mosquitto `acl_file` text for these users; deterministic (users sorted by name)."""
    items = sorted((users.values() if isinstance(users, Mapping) else users), key=lambda u: u.name)
    patterns = _pattern_lines(acl)
    self_roles = ", ".join(r for r in acl.roles if acl.self_bound(r)) or "none"
    out = [
        f"# Mosquitto acl_file, generated from topics.yaml by `{GENERATED_BY}`.",
        "# Do not edit: change topics.yaml or the users file and regenerate.",
        "#",
        f"# `pattern` lines are the grants of the self-bound roles ({self_roles}); `%u` is the",
        "# username, which is also the client id (use_username_as_clientid). Mosquitto applies",
        "# patterns to every user, so each user whose role lacks one of them gets `topic deny`",
        "# lines for it under its own name (deny wins over any grant; the few topics denied so",
        "# belong to an agent id that cannot exist, as usernames are unique). A `user` section",
        "# lists the rules of a role that is not self-bound. Mosquitto warns about patterns",
        "# without %u (e.g. a topic every role may read); they are meant for every user.",
        "",
    ]
    out += [f"pattern {access} {pattern}" for access, pattern in patterns]
    for user in items:
        lines = _user_lines(acl, user, patterns)
        if lines:
            out += ["", f"# role {user.role}", f"user {user.name}", *lines]
    return "\n".join(out) + "\n"
