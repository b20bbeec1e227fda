"""The wire format: one ASCII JSON object per line, checked on the way in."""

from __future__ import annotations

import json

import pytest

from plait.kernel.protocol import MESSAGE_TYPES, ProtocolError, decode, encode, message


def test_round_trip_is_one_ascii_line() -> None:
    msg = message(
        "stream", {"name": "stdout", "text": 'a\nb "é" \u2028 {"id": 1}\n'}, parent_id="p"
    )
    line = encode(msg)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert line.isascii()
    assert decode(line) == msg


def test_message_fields() -> None:
    msg = message("execute_request", {"code": "1"})
    assert set(msg) == {"id", "parent_id", "type", "content"}
    assert msg["parent_id"] is None
    assert message("execute_request")["id"] != msg["id"]
    assert "execute_request" in MESSAGE_TYPES


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (b"hello\n", "not a JSON line: 'hello'"),
        (b"[1, 2]\n", "must be a JSON object"),
        (b'{"id": "a", "type": "stream"}\n', "message lacks parent_id, content"),
        (b'{"id": 1, "parent_id": null, "type": "stream", "content": {}}\n', "must be strings"),
        (
            b'{"id": "a", "parent_id": null, "type": "execute_requets", "content": {}}\n',
            "unknown message type 'execute_requets'",
        ),
        (b'{"id": "a", "parent_id": null, "type": "stream", "content": []}\n', "content must be"),
    ],
)
def test_bad_lines_say_what_is_wrong(line: bytes, says: str) -> None:
    with pytest.raises(ProtocolError, match=None) as info:
        decode(line)
    assert says in str(info.value)
    assert isinstance(info.value, ValueError)


def test_long_bad_line_is_shortened_in_the_error() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(json.dumps(["x" * 1000]))
    assert len(str(info.value)) < 300
