"""The envelope and the one codec: orjson outside, pydantic models at the edges.

Every Mapleverse payload is a JSON object, the envelope, with the model under `data`::

    {"id": "4f1c2a9e-1f", "sender": "health-main", "ts": 1764038400.123, "v": 1,
     "corr": "...", "reply": "mv/rpc/reply/cli-1", "trace": "...", "data": {...}}

`corr`, `reply` and `trace` are left out when empty. Everything a message needs travels in the
payload, so it works on MQTT 3.1.1 brokers (amqtt, NATS) as well as on MQTT 5 ones. A payload
without the envelope (a JSON object lacking `v` and `data`) is accepted as bare `data`, so a
device or a script with a plain MQTT client can publish the model alone.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel, ValidationError

from bus.errors import PayloadError

SCHEMA_VERSION = 1

__all__ = [
    "SCHEMA_VERSION",
    "Encoder",
    "Envelope",
    "IdGenerator",
    "decode",
    "encode",
    "encode_data",
]


class Envelope(NamedTuple):
    """What every message carries besides its data (see the module docstring)."""

    id: str
    sender: str
    ts: float
    v: int = SCHEMA_VERSION
    corr: str | None = None
    reply: str | None = None
    trace: str | None = None


class IdGenerator:
    """Message ids unique across processes: a random prefix and a counter (cheaper than uuid4)."""

    def __init__(self) -> None:
        self.prefix = os.urandom(5).hex() + "-"
        self.next_number = itertools.count(1).__next__

    def __call__(self) -> str:
        return f"{self.prefix}{self.next_number():x}"


def encode_data(data: BaseModel | dict[str, Any]) -> bytes:
    if isinstance(data, BaseModel):
        return data.__pydantic_serializer__.to_json(data)
    return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)


_SAFE_RE = re.compile(r"^[A-Za-z0-9_.:/+-]*$")  # needs no JSON escaping


def _json_str(value: str) -> bytes:
    return b'"' + value.encode() + b'"' if _SAFE_RE.match(value) else orjson.dumps(value)


def encode(
    data: BaseModel | dict[str, Any],
    *,
    id: str,
    sender: str,
    ts: float | None = None,
    corr: str | None = None,
    reply: str | None = None,
    trace: str | None = None,
) -> bytes:
    """The envelope around `data`, as bytes."""
    parts = [
        b'{"id":',
        _json_str(id),
        b',"sender":',
        _json_str(sender),
        b',"ts":',
        repr(time.time() if ts is None else float(ts)).encode(),
        b',"v":1',
    ]
    if corr is not None:
        parts += (b',"corr":', _json_str(corr))
    if reply is not None:
        parts += (b',"reply":', _json_str(reply))
    if trace is not None:
        parts += (b',"trace":', _json_str(trace))
    parts += (b',"data":', encode_data(data), b"}")
    return b"".join(parts)


class Encoder:
    """`encode` for one sender, with the constant part of the envelope made once (hot path)."""

    def __init__(self, sender: str) -> None:
        self.ids = IdGenerator()
        self._sender = b',"sender":' + _json_str(sender) + b',"ts":'
        self._head = b'{"id":"' + self.ids.prefix.encode()
        self.sender = sender

    def __call__(
        self,
        data: BaseModel | dict[str, Any],
        corr: str | None = None,
        reply: str | None = None,
        trace: str | None = None,
    ) -> bytes:
        if corr is None and reply is None and trace is None:
            ser = (
                data.__pydantic_serializer__.to_json(data)
                if isinstance(data, BaseModel)
                else orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
            )
            return b"".join(
                (
                    self._head,
                    b"%x" % self.ids.next_number(),
                    b'"',
                    self._sender,
                    repr(time.time()).encode(),
                    b',"v":1,"data":',
                    ser,
                    b"}",
                )
            )
        return encode(data, id=self.ids(), sender=self.sender, corr=corr, reply=reply, trace=trace)


_MISSING: Any = object()
_OPTIONAL = (str, type(None))


def decode(raw: bytes, model: type[BaseModel] | None) -> tuple[Envelope, BaseModel | Any]:
    """Split and validate a payload; raises PayloadError with the reason."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"not JSON: {exc}") from exc
    if type(obj) is not dict:
        raise PayloadError(f"expected a JSON object, got {type(obj).__name__}")
    data = obj.get("data", _MISSING)
    v = obj.get("v", _MISSING)
    if data is not _MISSING and v is not _MISSING:
        env = Envelope(
            obj.get("id", ""),
            obj.get("sender", ""),
            obj.get("ts", 0.0),
            v,
            obj.get("corr"),
            obj.get("reply"),
            obj.get("trace"),
        )
        if type(v) is not int:
            raise PayloadError(f"bad envelope: v must be an integer, got {v!r}")
        if v > SCHEMA_VERSION:
            raise PayloadError(f"schema version {v} is newer than {SCHEMA_VERSION}")
        if type(env.id) is not str or type(env.sender) is not str:
            raise PayloadError("bad envelope: id and sender must be strings")
        if type(env.ts) not in (float, int):
            raise PayloadError("bad envelope: ts must be a number")
        if not (
            isinstance(env.corr, _OPTIONAL)
            and isinstance(env.reply, _OPTIONAL)
            and isinstance(env.trace, _OPTIONAL)
        ):
            raise PayloadError("bad envelope: corr, reply and trace must be strings or null")
    else:
        env = Envelope(id="", sender="", ts=time.time())
        data = obj
    if model is None:
        return env, data
    try:
        return env, model.__pydantic_validator__.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "payload"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise PayloadError(f"{model.__name__}.{where}: {first.get('msg')}{more}") from exc
