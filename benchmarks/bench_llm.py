"""LLM fan-out with the real openai SDK against a local OpenAI-compatible server.

500 prompts, answers after 50 ms, 5% refused once with 429 (``Retry-After: 0.2``)
and 2% once with 500, at most 20 requests in flight, retries on 429/500 only:
plait (a ``Dep`` client, ``retries``/``retry_on``, an ``"async"`` map) beside the
same work written by hand with ``asyncio`` (a semaphore, the same retry policy),
interleaved in one run. Also the requests sent and duplicate successful answers.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai

from harness import Row, row
from plait import Dep, LocalEngine, Pipeline, node
from plait.options import server_delay

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from llm_server import serve

PROMPTS = [f"question {i}" for i in range(500)]
CONCURRENCY = 20
RETRIES = 3
RETRY_ON = (openai.RateLimitError, openai.InternalServerError)
BACKOFF = 0.1
MAX_RATIO = 1.1


async def llm_client(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="local", max_retries=0)
    try:
        yield client
    finally:
        await client.close()


@node(output_name="answer", retries=RETRIES, retry_on=RETRY_ON, backoff=BACKOFF)
async def ask(prompt: str, llm: openai.AsyncOpenAI = Dep(llm_client)) -> str:
    reply = await llm.chat.completions.create(
        model="local", messages=[{"role": "user", "content": prompt}]
    )
    return reply.choices[0].message.content or ""


def by_plait(base_url: str) -> list[Any]:
    engine = LocalEngine(map_executor="async", max_concurrent=CONCURRENCY)
    pipeline = Pipeline([ask], engine=engine)
    return pipeline.map({"prompt": PROMPTS, "base_url": base_url}, map_over="prompt")


async def by_hand(base_url: str) -> list[str]:
    """The same work written by hand: a semaphore and the same retry policy."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="local", max_retries=0)
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(prompt: str) -> str:
        async with slots:
            for attempt in range(1, RETRIES + 2):
                try:
                    reply = await client.chat.completions.create(
                        model="local", messages=[{"role": "user", "content": prompt}]
                    )
                    return reply.choices[0].message.content or ""
                except RETRY_ON as exc:
                    if attempt > RETRIES:
                        raise
                    delay = BACKOFF * 2 ** (attempt - 1) * (0.5 + random.random())
                    await asyncio.sleep(min(60.0, max(delay, server_delay(exc) or 0.0)))
            raise AssertionError("unreachable")

    try:
        return await asyncio.gather(*(one(p) for p in PROMPTS))
    finally:
        await client.close()


def run() -> list[Row]:
    plait_s: list[float] = []
    hand_s: list[float] = []
    requests: dict[str, list[int]] = {"plait": [], "hand": []}
    duplicates = {"plait": 0, "hand": 0}
    for _ in range(3):
        for who in ("plait", "hand"):
            with serve(latency=0.05, rate_limited=0.05, failing=0.02, retry_after=0.2) as server:
                start = time.perf_counter()
                if who == "plait":
                    answers = [o["answer"] for o in by_plait(server.url)]
                else:
                    answers = asyncio.run(by_hand(server.url))
                took = time.perf_counter() - start
                assert answers == [f"echo: {p}" for p in PROMPTS]
                (plait_s if who == "plait" else hand_s).append(took)
                requests[who].append(server.stats.total_requests)
                duplicates[who] += len(server.stats.duplicates())
    wall, hand = statistics.median(plait_s), statistics.median(hand_s)
    return [
        row(
            "LLM fan-out: 500 prompts, openai SDK, 429/500, 20 in flight (s)",
            wall,
            hand,
            "s",
            limit=("ratio", MAX_RATIO),
        ),
        row(
            "  requests sent (prompts + retries)",
            statistics.median(requests["plait"]),
            statistics.median(requests["hand"]),
            "requests",
            overhead=False,
        ),
        row(  # beside the answers given in all: a share of 0 is the target
            "  duplicate successful answers, of all answers (3 runs)",
            duplicates["plait"] + duplicates["hand"],
            3 * 2 * len(PROMPTS),
            "answers",
            overhead=False,
            limit=("value", 0),
        ),
    ]
