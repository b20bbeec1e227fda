"""Drive plait's subprocess kernel: run cells, stream output, time out a cell, survive a crash.

python examples/kernel_client.py
"""

from __future__ import annotations

from plait.kernel import KernelClient, KernelDiedError


def main() -> None:
    with KernelClient() as kernel:
        kernel.execute("import asyncio\nx = await asyncio.sleep(0, 41)")  # top-level await
        reply = kernel.execute(
            "print('thinking')\nx + 1",
            on_stream=lambda name, text: print(f"[{name}] {text}", end=""),
        )
        print("result:", reply.result)

        reply = kernel.execute("1 / 0")
        print("error:", reply.ename, reply.evalue)

        reply = kernel.execute("import time; time.sleep(100)", timeout=1)
        print("timed out:", reply.ename, "- namespace kept: x =", kernel.execute("x").result)

        try:
            kernel.execute("import os; os._exit(3)")
        except KernelDiedError as exc:
            print("kernel died with exit status", exc.exit_status)
        kernel.restart()
        print("restarted, fresh namespace:", kernel.execute("'x' in globals()").result)


if __name__ == "__main__":
    main()
