"""The kernel's wire protocol: one JSON object per line, modelled on Jupyter's messages.

Every message is ``{"id", "parent_id", "type", "content"}``: ``id`` is unique,
``parent_id`` is the id of the request a message answers (``None`` for messages
that answer nothing, such as ``kernel_ready``). Lines are ASCII-only JSON
(``ensure_ascii``), so a newline inside any string is escaped and one line is
always exactly one message. See docs/kernel.md for every message type.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import threading
import uuid
from typing import Any, Final, Literal, TypedDict

from plait.errors import PlaitError

PROTOCOL_VERSION: Final = 1


@functools.cache
def plait_version() -> str:
    """The installed plait's version, read from its metadata (``"unknown"`` when plait
    runs from a source tree without being installed); imports nothing of plait."""
    try:
        return importlib.metadata.version("plait")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


MessageType = Literal[
    "kernel_ready",
    "execute_request",
    "execute_reply",
    "stream",
    "execute_result",
    "error",
    "input_request",
    "input_reply",
    "interrupt_request",
    "interrupt_reply",
    "shutdown_request",
    "shutdown_reply",
]
MESSAGE_TYPES: Final[frozenset[str]] = frozenset(MessageType.__args__)  # type: ignore[attr-defined]


class Message(TypedDict):
    """One protocol message."""

    id: str
    parent_id: str | None
    type: str
    content: dict[str, Any]


class ProtocolError(PlaitError, ValueError):
    """A line on the protocol channel is not a valid message."""


def new_id() -> str:
    """A fresh message id."""
    return uuid.uuid4().hex


def message(
    kind: str, content: dict[str, Any] | None = None, *, parent_id: str | None = None
) -> Message:
    """Build a message with a fresh id."""
    return {"id": new_id(), "parent_id": parent_id, "type": kind, "content": content or {}}


def encode(msg: Message) -> bytes:
    """One message as one line of ASCII JSON, newline included."""
    return json.dumps(msg, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"


def decode(line: bytes | str) -> Message:
    """Parse and check one line; raise ProtocolError saying what is wrong with it."""
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"not a JSON line: {_preview(line)} ({exc})") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"a message must be a JSON object, got: {_preview(line)}")
    missing = [key for key in ("id", "parent_id", "type", "content") if key not in data]
    if missing:
        raise ProtocolError(f"message lacks {', '.join(missing)}: {_preview(line)}")
    if not isinstance(data["id"], str) or not (
        data["parent_id"] is None or isinstance(data["parent_id"], str)
    ):
        raise ProtocolError(f"id and parent_id must be strings: {_preview(line)}")
    if data["type"] not in MESSAGE_TYPES:
        raise ProtocolError(f"unknown message type {data['type']!r}: {_preview(line)}")
    if not isinstance(data["content"], dict):
        raise ProtocolError(f"content must be a JSON object: {_preview(line)}")
    msg: Message = data  # type: ignore[assignment]  # checked above
    return msg


def _preview(line: bytes | str, limit: int = 120) -> str:
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    text = text.rstrip("\n")
    return repr(text if len(text) <= limit else text[:limit] + "...")


class MessageWriter:
    """Writes messages to a file descriptor; safe to share between threads."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()

    def send(self, msg: Message) -> None:
        """Write one message; raises OSError (BrokenPipeError) if the reader is gone."""
        data = memoryview(encode(msg))
        with self._lock:
            while data:
                data = data[os.write(self.fd, data) :]
