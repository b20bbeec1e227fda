"""Batch nodes: embed 400 texts with one request per 64 texts, not one per text.

The server (``llm_server.py``, on 127.0.0.1) answers ``POST /v1/embeddings`` after
20 ms plus 0.1 ms per input, through the real openai SDK. ``embed`` has a
single-item form (one text per request) and a batch form (up to 64 texts per
request, the way embedding APIs are meant to be called); both make at most 4
requests at once (``max_concurrent`` counts requests, not texts). A map groups
its items into batches; a ``run`` uses the single form. The vectors are the same,
in the same order.

Run it with ``python examples/batch_embeddings.py``.
"""

from __future__ import annotations

import time

import openai

from llm_fanout import llm_client  # one AsyncOpenAI client per map, closed at its end
from llm_server import serve
from plait import Dep, LocalEngine, Pipeline, node

TEXTS = [f"document {i}" for i in range(400)]


async def embed_many(
    text: list[str], llm: openai.AsyncOpenAI = Dep(llm_client)
) -> list[list[float]]:
    """The batch form: every text of the batch in one request, vectors in their order."""
    reply = await llm.embeddings.create(model="local-embed", input=text)
    return [item.embedding for item in sorted(reply.data, key=lambda item: item.index)]


@node(output_name="vector", batch=embed_many, batch_size=64, max_concurrent=4)
async def embed(text: str, llm: openai.AsyncOpenAI = Dep(llm_client)) -> list[float]:
    """The single form: one request for one text."""
    reply = await llm.embeddings.create(model="local-embed", input=[text])
    return reply.data[0].embedding


@node(output_name="norm")
def norm(vector: list[float]) -> float:
    return round(sum(v * v for v in vector) ** 0.5, 4)


def main() -> None:
    with serve(latency=0.02, per_input=0.0001) as server:
        inputs = {"text": TEXTS, "base_url": server.url}
        engine = LocalEngine(map_executor="async", max_concurrent=1000)
        batched = Pipeline([embed, norm], engine=engine)
        single = Pipeline(
            [node(embed.func, output_name="vector", max_concurrent=4), norm], engine=engine
        )

        start = time.perf_counter()
        results = batched.map(inputs, map_over="text")
        batch_seconds = time.perf_counter() - start
        batch_requests = list(server.stats.embedding_requests)
        server.stats.embedding_requests.clear()

        start = time.perf_counter()
        one_by_one = single.map(inputs, map_over="text")
        single_seconds = time.perf_counter() - start
        single_requests = len(server.stats.embedding_requests)

        assert results == one_by_one
        print(
            f"batch form: {len(results)} vectors from {len(batch_requests)} requests "
            f"(largest {max(batch_requests)} texts) in {batch_seconds:.2f} s"
        )
        print(f"single form: {single_requests} requests in {single_seconds:.2f} s")
        print(f"same vectors, same order: {results == one_by_one}")
        print(batched.run(inputs={"text": "document 7", "base_url": server.url})["norm"])
        engine.close()


if __name__ == "__main__":
    main()
