"""bus.codecs: the envelope round trip and the reasons a payload is refused."""

from __future__ import annotations

import re

import orjson
import pytest

from bus import codecs
from bus.codecs import SCHEMA_VERSION, Envelope, IdGenerator, decode, encode
from bus.errors import PayloadError
from bus.payloads import Probe, Status, Telemetry


def test_envelope_round_trip_keeps_every_field() -> None:
    status = Status(state="online", kind="echo", id="e1", epoch=7, topics=["mv/x"])
    raw = encode(
        status,
        id="m-1",
        sender="echo-e1",
        ts=1764038400.5,
        corr="c-9",
        reply="mv/rpc/reply/cli-1",
        trace="t-3",
    )
    env, payload = decode(raw, Status)
    assert env == Envelope(
        id="m-1",
        sender="echo-e1",
        ts=1764038400.5,
        v=SCHEMA_VERSION,
        corr="c-9",
        reply="mv/rpc/reply/cli-1",
        trace="t-3",
    )
    assert payload == status
    assert isinstance(payload, Status)


def test_the_wire_form_is_readable_json_with_empty_fields_left_out() -> None:
    raw = encode(Probe(seq=3, text="hi"), id="m-2", sender="cli", ts=12.0)
    assert orjson.loads(raw) == {
        "id": "m-2",
        "sender": "cli",
        "ts": 12.0,
        "v": SCHEMA_VERSION,
        "data": {"seq": 3, "text": "hi"},
    }


def test_a_dict_payload_is_encoded_as_is() -> None:
    raw = encode({"n": 1, "columns": {"a": [1]}}, id="m", sender="s", ts=1.0)
    assert orjson.loads(raw)["data"] == {"n": 1, "columns": {"a": [1]}}


def test_encode_stamps_the_current_time_when_no_ts_is_given() -> None:
    raw = encode(Probe(), id="m", sender="s")
    assert orjson.loads(raw)["ts"] > 1.7e9


def test_decode_without_a_model_returns_the_plain_data() -> None:
    env, data = decode(encode({"x": [1, 2]}, id="m", sender="s", ts=1.0), None)
    assert data == {"x": [1, 2]}
    assert env.id == "m"


def test_a_bare_payload_without_the_envelope_is_accepted() -> None:
    env, payload = decode(b'{"x": 1.5, "y": -2, "battery": 0.5}', Telemetry)
    assert payload == Telemetry(x=1.5, y=-2, battery=0.5)
    assert env.id == "" and env.sender == ""
    assert env.v == SCHEMA_VERSION
    assert env.corr is None and env.reply is None


def test_an_envelope_with_a_null_version_is_refused() -> None:
    with pytest.raises(PayloadError, match=r"\bv\b"):
        decode(b'{"id": "m", "sender": "s", "ts": 1.0, "v": null, "data": {"seq": 5}}', Probe)


def test_unknown_fields_from_newer_senders_are_ignored() -> None:
    _, payload = decode(b'{"seq": 1, "colour": "red"}', Probe)
    assert payload == Probe(seq=1)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe garbage", "not JSON"),
        (b"", "not JSON"),
        (b'{"seq": 1', "not JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'"text"', "expected a JSON object, got str"),
        (b"42", "expected a JSON object, got int"),
        (b'{"v": 2, "data": {}}', "schema version 2 is newer than 1"),
    ],
)
def test_undecodable_payloads_raise_payload_error_with_the_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as info:
        decode(raw, Probe)
    assert reason in info.value.reason
    assert info.value.topic is None


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"seq": "abc"}', "Probe.seq"),
        (b'{"v": 1, "data": {"seq": [1]}}', "Probe.seq"),
        (b'{"v": 1, "data": {"seq": 1, "text": 5}}', "Probe.text"),
    ],
)
def test_model_validation_errors_name_the_model_and_field(raw: bytes, field: str) -> None:
    with pytest.raises(PayloadError) as info:
        decode(raw, Probe)
    assert info.value.reason.startswith(f"{field}:")


def test_a_missing_required_field_is_named_and_further_errors_counted() -> None:
    with pytest.raises(PayloadError) as info:
        decode(b'{"v": 1, "data": {"x": "far", "battery": 9}}', Telemetry)
    reason = info.value.reason
    assert reason.startswith("Telemetry.x:")
    assert "(+2 more)" in reason  # y is missing, battery is out of range


def test_a_non_object_data_is_refused_by_the_model() -> None:
    with pytest.raises(PayloadError, match=r"^Probe\.payload:"):
        decode(b'{"v": 1, "data": [1, 2]}', Probe)


def test_model_rules_beyond_types_are_enforced() -> None:
    with pytest.raises(PayloadError, match=r"^Telemetry\.battery: .*less than or equal to 1"):
        decode(b'{"x": 1, "y": 0, "battery": 2}', Telemetry)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"v": "one", "data": {}}', "v"),
        (b'{"v": 1, "ts": "noon", "data": {}}', "ts"),
        (b'{"v": 1, "id": 5, "data": {}}', "id"),
        (b'{"v": 1, "reply": ["a"], "data": {}}', "reply"),
    ],
)
def test_a_bad_envelope_field_is_named(raw: bytes, field: str) -> None:
    with pytest.raises(PayloadError) as info:
        decode(raw, Probe)
    assert info.value.reason.startswith("bad envelope")
    assert re.search(rf"\b{field}\b", info.value.reason), info.value.reason


def test_payload_error_carries_the_topic_when_given() -> None:
    err = PayloadError("not JSON", topic="mv/sys/health")
    assert err.topic == "mv/sys/health"
    assert str(err) == "mv/sys/health: not JSON"


def test_ids_are_unique_and_differ_between_generators() -> None:
    first, second = IdGenerator(), IdGenerator()
    ids = {first() for _ in range(1000)}
    assert len(ids) == 1000
    assert second() not in ids
    assert codecs.SCHEMA_VERSION == 1
