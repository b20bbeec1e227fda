"""plait.batch from sync code that runs inside a running event loop.

An async application calls an old sync helper; the helper fans out requests with
``plait.batch``. There is no nest_asyncio: the work runs on plait's portal loop,
the caller's loop waits, and a RunningLoopWarning says once that ``await
plait.abatch(...)`` would not block it.

python examples/batch_in_loop.py
"""

from __future__ import annotations

import asyncio
import time
import warnings

import plait


async def lookup(word: str) -> str:
    await asyncio.sleep(0.2)  # stands in for an HTTP call
    return word.upper()


def legacy_helper(words: list[str]) -> list[str]:
    """Sync code written before the app went async."""
    return plait.batch(lookup, words, max_concurrent=5, retries=2)


async def main() -> None:
    words = [f"w{i}" for i in range(10)]
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        answers = legacy_helper(words)  # called from inside the running loop
    elapsed = time.perf_counter() - start
    print(answers)
    print(f"10 lookups of 0.2 s, 5 at a time: {elapsed:.2f} s")
    print("warned:", [type(w.message).__name__ for w in caught])
    print("in async code, await the async form:", await plait.abatch(lookup, words[:3]))


if __name__ == "__main__":
    asyncio.run(main())
