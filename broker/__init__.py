"""Mapleverse's MQTT brokers: the embedded amqtt broker and the Mosquitto/NATS configurations.

Users and their `$7$` password hashes (`users`, `passwords`), the topic ACL derived from
topics.yaml (`acl`), the embedded broker (`EmbeddedBroker`, `BrokerSettings`; run it with
`python -m broker`), and the generated Mosquitto (`mosquitto`) and NATS (`nats`) configurations.
"""

from broker.acl import Acl, Action, covers, render_acl_file
from broker.embedded import EmbeddedBroker
from broker.errors import (
    BrokerError,
    BrokerStartError,
    PasswordHashError,
    SettingsError,
    UsersFileError,
)
from broker.mosquitto import generate, render_conf, render_test_conf, stale, write_generated
from broker.nats import nats_subjects, render_nats_conf
from broker.passwords import hash_password, parse_hash, verify_password
from broker.settings import BrokerSettings, load_settings
from broker.users import (
    User,
    dump_users,
    load_users,
    parse_users,
    render_password_file,
    save_users,
)

__all__ = [
    "Acl",
    "Action",
    "BrokerError",
    "BrokerSettings",
    "BrokerStartError",
    "EmbeddedBroker",
    "PasswordHashError",
    "SettingsError",
    "User",
    "UsersFileError",
    "covers",
    "dump_users",
    "generate",
    "hash_password",
    "load_settings",
    "load_users",
    "nats_subjects",
    "parse_hash",
    "parse_users",
    "render_acl_file",
    "render_conf",
    "render_nats_conf",
    "render_password_file",
    "render_test_conf",
    "save_users",
    "stale",
    "verify_password",
    "write_generated",
]
