"""Run notebook-style cells with plait's AsyncSession: top-level await, output, interrupts.

python examples/session_cells.py
"""

from __future__ import annotations

import asyncio

from plait.session import AsyncSession

CELLS = [
    # Top-level await; the namespace persists from cell to cell.
    "import asyncio, time, plait\nanswer = await asyncio.sleep(0.01, 41)",
    "answer + 1",
    # Blocking code runs on a worker thread: the loop's other tasks keep going.
    "time.sleep(0.3)\nprint('slept without freezing the loop')",
    # A sync plait call runs its async nodes on the session's loop.
    "@plait.node(output_name='doubled')\n"
    "async def double(x):\n"
    "    await asyncio.sleep(0.01)\n"
    "    return 2 * x\n"
    "plait.Pipeline([double]).run(inputs={'x': answer})['doubled']",
    # Errors come back with the cell's own lines.
    "def ratio(a, b):\n    return a / b\nratio(1, 0)",
]


async def main() -> None:
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beating = asyncio.create_task(heartbeat())
    async with AsyncSession() as session:
        for code in CELLS:
            before = ticks
            result = await session.run_cell(code)
            print(f"[{result.execution_count}] value={result.value!r}", end="")
            print(f" stdout={result.stdout!r}" if result.stdout else "", end="")
            print(f" heartbeat ticks={ticks - before}" if "sleep(0.3)" in code else "")
            if result.traceback:
                print(result.traceback, end="")

        # A timeout (or interrupt()) stops a busy loop; the session goes on.
        stopped = await session.run_cell("n = 0\nwhile True:\n    n += 1", timeout=0.2)
        print(
            f"[{stopped.execution_count}] {stopped.error!r}, n kept: {session.namespace['n'] > 0}"
        )
    beating.cancel()
    await asyncio.gather(beating, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
