"""LLM fan-out with the real openai SDK, against a local OpenAI-compatible server.

The server (``llm_server.py``, on 127.0.0.1) answers each chat completion after
50 ms, refuses 5% of prompts once with ``429`` and a ``Retry-After``, and fails 2%
once with ``500``. The pipeline asks it 200 questions and counts the words of
each answer, with:

* one ``AsyncOpenAI`` client per map, set up and closed by a ``Dep``;
* retries on 429 and 500 only (a connection error may come after the server got
  the request: retrying it could answer twice), waiting what ``Retry-After`` asks;
* a rate limit and at most 20 requests in flight;
* a ``DiskCache``: the second run sends no request at all;
* a progress bar.

Run it with ``python examples/llm_fanout.py``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import openai

from llm_server import serve
from plait import Dep, DiskCache, LocalEngine, Pipeline, node
from plait.callbacks import ProgressCallback

PROMPTS = [f"Summarise document {i} in a sentence." for i in range(200)]


async def llm_client(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    """One client for the whole map, closed when the map ends (however it ends)."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="local", max_retries=0)
    try:
        yield client
    finally:
        await client.close()


@node(
    output_name="answer",
    retries=3,
    retry_on=(openai.RateLimitError, openai.InternalServerError),
    rate_limit="400/s",
)
async def ask(
    prompt: str, model: str = "local-model", llm: openai.AsyncOpenAI = Dep(llm_client)
) -> str:
    reply = await llm.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}]
    )
    return reply.choices[0].message.content or ""


@node(output_name="words")
def count_words(answer: str) -> int:
    return len(answer.split())


def main() -> None:
    engine = LocalEngine(map_executor="async", max_concurrent=20)
    with (
        serve(latency=0.05, rate_limited=0.05, failing=0.02, retry_after=0.2) as server,
        tempfile.TemporaryDirectory() as tmp,
        DiskCache(Path(tmp) / "cache") as cache,
    ):
        pipeline = Pipeline(
            [ask, count_words],
            engine=engine,
            cache=cache,
            callbacks=[ProgressCallback(file=sys.stdout, plain_interval=1.0)],
            name="llm",
        )
        inputs = {"prompt": PROMPTS, "base_url": server.url}

        start = time.perf_counter()
        results = pipeline.map(inputs, map_over="prompt")
        took = time.perf_counter() - start
        stats = server.stats
        words = sum(r["words"] for r in results)  # type: ignore[index]
        waits = [w for prompt, w in stats.waits if prompt in stats.retry_after]
        print(f"{len(results)} answers ({words} words) in {took:.2f} s")
        print(
            f"{stats.total_requests} requests: {sum(stats.refused.values())} refused once "
            f"({len(stats.retry_after)} with 429, the others with 500), "
            f"{len(stats.duplicates())} answered twice"
        )
        print(f"every retry after a 429 waited >= Retry-After: {min(waits) >= 0.2}")

        sent = stats.total_requests
        start = time.perf_counter()
        again = pipeline.map(inputs, map_over="prompt")
        print(
            f"second run: {len(again)} answers in {time.perf_counter() - start:.2f} s, "
            f"{stats.total_requests - sent} new requests (all from the cache)"
        )
    engine.close()


if __name__ == "__main__":
    main()
