"""Retries that honour a server's Retry-After, with a cap; backoff that sees the error;
a real openai SDK against a local server that answers 429 and 500 now and then."""

from __future__ import annotations

import asyncio
import email.utils
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import openai
import pytest

import plait
from plait import LocalEngine, NodeDefinitionError, Pipeline, node
from plait.options import NodeOptions, server_delay

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from llm_server import fate, serve


def http_error(headers: dict[str, str], status: int = 429) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/v1")
    response = httpx.Response(status, headers=headers, request=request)
    return httpx.HTTPStatusError("refused", request=request, response=response)


def test_server_delay_reads_every_form_of_retry_after() -> None:
    assert server_delay(http_error({"Retry-After": "2"})) == 2.0
    assert server_delay(http_error({"retry-after": "0.5"})) == 0.5
    assert server_delay(http_error({"retry-after-ms": "250", "Retry-After": "9"})) == 0.25
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= (server_delay(http_error({"Retry-After": soon})) or 0) <= 31
    assert server_delay(http_error({"Retry-After": "soon-ish"})) is None
    assert server_delay(http_error({})) is None
    assert server_delay(ValueError("no response")) is None
    aio = aiohttp.ClientResponseError(
        request_info=None,  # type: ignore[arg-type]
        history=(),
        status=429,
        headers={"Retry-After": "3"},  # type: ignore[arg-type]
    )
    assert server_delay(aio) == 3.0


def test_delay_is_at_least_what_the_server_asks_and_at_most_max_backoff() -> None:
    options = NodeOptions(retries=3, backoff=0.1, max_backoff=5.0)
    assert options.delay(1, http_error({"Retry-After": "2"}), 0.5) == 2.0
    assert options.delay(1, http_error({"Retry-After": "120"}), 0.5) == 5.0
    assert options.delay(1, ValueError(), 0.5) == pytest.approx(0.1)
    assert options.delay(3, ValueError(), 0.5) == pytest.approx(0.4)
    ignoring = NodeOptions(retries=3, backoff=0.1, retry_after=False)
    assert ignoring.delay(1, http_error({"Retry-After": "2"}), 0.5) == pytest.approx(0.1)
    uncapped = NodeOptions(retries=3, backoff=100.0, max_backoff=None)
    assert uncapped.delay(2, ValueError(), 0.5) == 200.0


def test_backoff_may_see_the_exception() -> None:
    seen: list[tuple[int, str]] = []

    def backoff(attempt: int, exc: BaseException) -> float:
        seen.append((attempt, str(exc)))
        return 0.0

    calls = []

    @node(output_name="y", retries=2, backoff=backoff)
    def flaky(x: int) -> int:
        calls.append(x)
        if len(calls) < 3:
            raise ConnectionError(f"try {len(calls)}")
        return x

    assert Pipeline([flaky]).run({"x": 1}) == {"y": 1}
    assert seen == [(1, "try 1"), (2, "try 2")]


def test_bad_retry_options_name_the_node() -> None:
    def f(x: int) -> int:
        return x

    with pytest.raises(NodeDefinitionError, match=r"node 'f': max_backoff must be seconds"):
        node(f, output_name="y", max_backoff=-1)
    with pytest.raises(NodeDefinitionError, match=r"node 'f': retry_after must be True or"):
        node(f, output_name="y", retry_after="yes")
    with pytest.raises(NodeDefinitionError, match=r"\(attempt, exc\) -> seconds"):
        node(f, output_name="y", backoff="fast")


def test_batch_retries_only_what_retry_on_names() -> None:
    attempts: list[int] = []

    def call(item: int) -> int:
        attempts.append(item)
        if item == 1:
            raise ConnectionError("the request may have reached the server")
        return item

    with pytest.raises(ConnectionError):
        plait.batch(call, [0, 1], retries=3, retry_on=TimeoutError, backoff=0)
    assert attempts.count(1) == 1
    attempts.clear()
    results = plait.batch(
        call, [0, 1], retries=2, retry_on=ConnectionError, backoff=0, return_exceptions=True
    )
    assert attempts.count(1) == 3
    assert isinstance(results[1], ConnectionError)


def prompts_with(count: int, kind: str, rate_limited: float, failing: float) -> list[str]:
    found = [
        f"prompt {i}" for i in range(2000) if fate(f"prompt {i}", rate_limited, failing) == kind
    ]
    return found[:count]


async def answer_all(base_url: str, prompts: list[str], **controls: Any) -> list[str]:
    async def client(base_url: str) -> Any:
        llm = openai.AsyncOpenAI(base_url=base_url, api_key="local", max_retries=0)
        try:
            yield llm
        finally:
            await llm.close()

    @node(output_name="answer", **controls)
    async def ask(prompt: str, llm: Any = plait.Dep(client)) -> str:
        reply = await llm.chat.completions.create(
            model="local", messages=[{"role": "user", "content": prompt}]
        )
        return str(reply.choices[0].message.content)

    pipeline = Pipeline([ask], engine=LocalEngine(map_executor="async", max_concurrent=20))
    outcomes = await pipeline.amap({"prompt": prompts, "base_url": base_url}, map_over="prompt")
    return [o["answer"] for o in outcomes]  # type: ignore[index]


def test_the_openai_sdk_gets_every_answer_once_waiting_what_the_server_asks() -> None:
    rate_limited, failing = 0.05, 0.02
    prompts = [f"prompt {i}" for i in range(120)]
    refused = [p for p in prompts if fate(p, rate_limited, failing) != "ok"]
    assert any(fate(p, rate_limited, failing) == "429" for p in refused)
    assert any(fate(p, rate_limited, failing) == "500" for p in refused)
    with serve(latency=0.02, rate_limited=rate_limited, failing=failing, retry_after=0.3) as server:
        answers = asyncio.run(
            answer_all(
                server.url,
                prompts,
                retries=3,
                retry_on=(openai.RateLimitError, openai.InternalServerError),
                backoff=0.01,
            )
        )
        stats = server.stats
    assert answers == [f"echo: {p}" for p in prompts]
    assert stats.duplicates() == []
    assert stats.total_requests == len(prompts) + len(refused)
    after_429 = [wait for prompt, wait in stats.waits if prompt in stats.retry_after]
    assert after_429, "some prompts were rate limited"
    assert min(after_429) >= 0.3  # every retry of a 429 waited what the server asked
    after_500 = [wait for prompt, wait in stats.waits if prompt not in stats.retry_after]
    assert after_500
    assert max(after_500) < 0.3  # a 500 carries no Retry-After: the short backoff


def test_max_backoff_caps_a_long_retry_after() -> None:
    prompts = prompts_with(2, "429", 0.05, 0.0)
    with serve(latency=0.01, rate_limited=0.05, failing=0.0, retry_after=30) as server:
        start = time.perf_counter()
        answers = asyncio.run(
            answer_all(
                server.url,
                prompts,
                retries=1,
                retry_on=openai.RateLimitError,
                max_backoff=0.2,
            )
        )
        took = time.perf_counter() - start
    assert answers == [f"echo: {p}" for p in prompts]
    assert took < 5  # not the 30 s the server asked for
