"""The sync/async bridge: await from sync code anywhere, and run sync code on a loop.

* :func:`run_sync`, :func:`syncify`, :func:`block_on`: await to completion from
  sync code, whatever runs in this thread (see :mod:`plait.bridge.loops`).
* :mod:`plait.bridge.portal`: the greenlet portal, through which sync code that
  plait runs on its loop awaits without blocking that loop.
* :mod:`plait.bridge.inline`: coroutines that run without any loop when they can.
* :func:`iterate`: an async iterator consumed from sync code.

Nothing here knows about pipelines; everything above builds on it.
"""

from plait.bridge.inline import drive_inline, ensure_loop, is_loop_optional, loop_optional
from plait.bridge.loops import (
    Delegation,
    LoopThread,
    block_on,
    delegate_to,
    run_sync,
    syncify,
)
from plait.bridge.streams import iterate

__all__ = [
    "Delegation",
    "LoopThread",
    "block_on",
    "delegate_to",
    "drive_inline",
    "ensure_loop",
    "is_loop_optional",
    "iterate",
    "loop_optional",
    "run_sync",
    "syncify",
]
