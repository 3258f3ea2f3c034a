"""Who may connect and what they may do: the embedded broker's authentication and ACL.

`Guard` holds the users (broker.users) and the ACL (broker.acl) and decides; two amqtt plugins
hand it amqtt's questions (amqtt calls `authenticate` and `topic_filtering` on plugins):

* `GuardAuthPlugin` checks the password (PBKDF2, constant time) and that the client id is the
  username (an empty client id with clean session becomes the username, as with Mosquitto's
  `use_username_as_clientid`).
* `GuardTopicPlugin` allows a PUBLISH, SUBSCRIBE or delivery only when `Acl.allowed()` says
  so. amqtt answers a refused SUBSCRIBE with the SUBACK failure code 0x80 and drops a refused
  PUBLISH (still acknowledged, as Mosquitto does). As on Mosquitto 2, a filter is granted when
  it overlaps something the user may read, and each delivery (`receive`) is checked against
  the read rules, so a broad filter (`mv/#`) shows only what the user may read.

`admit()` runs before amqtt touches any session (see broker.server), so a refused CONNECT cannot
take over, delete or alter another client's session. A Will on a topic the user may not
publish to is dropped, as Mosquitto drops it when it would fire.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from amqtt.contexts import Action as AmqttAction
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from broker.acl import Acl
from broker.users import User

__all__ = [
    "CONNACK_ACCEPTED",
    "CONNACK_IDENTIFIER_REJECTED",
    "CONNACK_NOT_AUTHORIZED",
    "Guard",
    "GuardAuthPlugin",
    "GuardTopicPlugin",
]

log = logging.getLogger("broker.guard")

CONNACK_ACCEPTED = 0
CONNACK_IDENTIFIER_REJECTED = 2
CONNACK_NOT_AUTHORIZED = 5  # Mosquitto answers a bad password with 5 as well
_AMQTT_RANDOM_ID = "amqtt/"  # amqtt's id for a CONNECT with an empty client id


class Guard:
    """The users and the ACL; every decision the embedded broker takes about a client."""

    def __init__(self, users: Mapping[str, User], acl: Acl) -> None:
        self.acl = acl
        self._users: dict[str, User] = dict(users)

    @property
    def users(self) -> Mapping[str, User]:
        return self._users

    def set_users(self, users: Mapping[str, User]) -> None:
        """Replace the users (a reload); connected clients keep their connection."""
        self._users = dict(users)

    def role_of(self, username: str | None) -> str | None:
        user = self._users.get(username or "")
        return user.role if user else None

    def check_password(self, username: str | None, password: str | None) -> bool:
        user = self._users.get(username or "")
        if user is None or password is None:
            return False
        return user.check_password(password)

    def admit(self, session: Session) -> int:
        """The CONNACK code for a CONNECT; may set an empty client id and drop a Will."""
        username = session.username
        if not self.check_password(username, session.password):
            log.info("refused CONNECT of %r: unknown user or wrong password", username)
            return CONNACK_NOT_AUTHORIZED
        client_id = session.client_id or ""
        if client_id.startswith(_AMQTT_RANDOM_ID) and session.clean_session:
            session.client_id = username
        elif client_id != username:
            log.info("refused CONNECT of %r: client id %r is not the username", username, client_id)
            return CONNACK_IDENTIFIER_REJECTED
        if session.will_flag and not self.may(username, "publish", session.will_topic or ""):
            log.warning(
                "dropped the Will of %r: may not publish to %r", username, session.will_topic
            )
            session.will_flag = False
        return CONNACK_ACCEPTED

    def may(self, username: str | None, action: str, topic: str) -> bool:
        """Whether the user may publish on a topic / subscribe with a filter."""
        role = self.role_of(username)
        if role is None or username is None or action not in ("publish", "subscribe", "receive"):
            return False
        return self.acl.allowed(username, role, action, topic)  # type: ignore[arg-type]


@dataclass
class _GuardConfig:
    guard: Any = None  # a Guard; typed Any because amqtt builds this with dacite


class GuardAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt ships no types
    """amqtt authentication by `Guard`: password and client id."""

    Config = _GuardConfig

    async def authenticate(self, *, session: Session) -> bool | None:
        guard: Guard = self.config.guard
        if not guard.check_password(session.username, session.password):
            return False
        return bool(session.client_id == session.username)


class GuardTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]  # amqtt ships no types
    """amqtt topic filtering by `Guard`: the ACL for PUBLISH and SUBSCRIBE."""

    Config = _GuardConfig

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: AmqttAction | None = None,
    ) -> bool | None:
        if session is None or topic is None or action is None:
            return False
        guard: Guard = self.config.guard
        allowed = guard.may(session.username, str(action), topic)
        if not allowed and action != AmqttAction.RECEIVE:
            log.info("refused %s of %r on %r", action, session.username, topic)
        return allowed
