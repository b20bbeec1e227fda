"""A local OpenAI-compatible chat server that misbehaves like a real provider.

``POST /v1/chat/completions`` answers after ``latency`` seconds with an echo of
the last user message; ``POST /v1/embeddings`` answers after ``latency`` seconds
plus ``per_input`` per input, with a small deterministic vector for each input.
A deterministic share of prompts is refused on their first attempt:
``rate_limited`` of them with ``429`` and a ``Retry-After`` header, ``failing``
of them with ``500``. The server counts every request and every successful
answer per prompt, so a test can check that nothing was lost and nothing was
answered twice. It binds 127.0.0.1 only.

    with serve(latency=0.05) as server:
        client = openai.AsyncOpenAI(base_url=server.url, api_key="local", max_retries=0)
"""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Stats:
    """What the server saw, per prompt."""

    requests: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    #: (prompt, seconds between a 429 and the retry that followed it)
    waits: list[tuple[str, float]] = field(default_factory=list)
    retry_after: dict[str, float] = field(default_factory=dict)
    #: Inputs of each embeddings request, in arrival order.
    embedding_requests: list[int] = field(default_factory=list)
    _refused_at: dict[str, float] = field(default_factory=dict)

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def duplicates(self) -> list[str]:
        """Prompts answered successfully more than once."""
        return [prompt for prompt, n in self.answers.items() if n > 1]


def fate(prompt: str, rate_limited: float, failing: float) -> str:
    """``"429"``, ``"500"`` or ``"ok"`` for a prompt's first attempt (deterministic)."""
    share = (zlib.crc32(prompt.encode()) % 10_000) / 10_000
    if share < rate_limited:
        return "429"
    if share < rate_limited + failing:
        return "500"
    return "ok"


class Server:
    """The running server: its base URL (for ``base_url=``) and its :class:`Stats`."""

    def __init__(
        self, latency: float, rate_limited: float, failing: float, retry_after: float
    ) -> None:
        self.latency = latency
        self.rate_limited = rate_limited
        self.failing = failing
        self.retry_after = retry_after
        self.per_input = 0.0
        self.stats = Stats()
        self.url = ""
        self._lock = threading.Lock()

    async def completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        now = time.monotonic()
        with self._lock:
            stats = self.stats
            attempt = stats.requests[prompt]
            stats.requests[prompt] += 1
            if prompt in stats._refused_at:
                stats.waits.append((prompt, now - stats._refused_at.pop(prompt)))
        await asyncio.sleep(self.latency)
        kind = fate(prompt, self.rate_limited, self.failing) if attempt == 0 else "ok"
        if kind != "ok":
            with self._lock:
                stats.refused[prompt] += 1
                stats._refused_at[prompt] = time.monotonic()
            if kind == "429":
                stats.retry_after[prompt] = self.retry_after
                return web.json_response(
                    {"error": {"message": "Rate limit reached", "type": "requests"}},
                    status=429,
                    headers={"Retry-After": f"{self.retry_after:g}"},
                )
            return web.json_response(
                {"error": {"message": "The server had an error", "type": "server_error"}},
                status=500,
            )
        with self._lock:
            stats.answers[prompt] += 1
        return web.json_response(_completion(body.get("model", "local"), f"echo: {prompt}"))

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        with self._lock:
            self.stats.embedding_requests.append(len(texts))
        await asyncio.sleep(self.latency + self.per_input * len(texts))
        data = [
            {"object": "embedding", "index": i, "embedding": _vector(text)}
            for i, text in enumerate(texts)
        ]
        usage = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
        return web.json_response(
            {"object": "list", "data": data, "model": body.get("model", "local"), "usage": usage}
        )


def _vector(text: str) -> list[float]:
    """Four numbers that depend only on ``text``."""
    digest = zlib.crc32(text.encode())
    return [((digest >> shift) & 0xFF) / 255 for shift in (0, 8, 16, 24)]


def _completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-local",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@contextmanager
def serve(
    latency: float = 0.05,
    rate_limited: float = 0.05,
    failing: float = 0.02,
    retry_after: float = 0.2,
    per_input: float = 0.0,
) -> Iterator[Server]:
    """Run the server on 127.0.0.1 (a free port) in a thread for the block's duration."""
    server = Server(latency, rate_limited, failing, retry_after)
    server.per_input = per_input
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.completions)
    app.router.add_post("/v1/embeddings", server.embeddings)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    ready = threading.Event()

    def main() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        server.url = f"http://127.0.0.1:{port}/v1"
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=main, name="llm-server", daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
