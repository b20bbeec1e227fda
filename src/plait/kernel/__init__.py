"""The plait kernel: an AsyncSession in a subprocess, driven over JSON lines.

``KernelClient`` starts and drives one; ``python -m plait kernel`` is the
process; ``plait.kernel.protocol`` is the wire format (see docs/kernel.md).
"""

from plait.kernel.client import CellError, ExecuteReply, KernelClient, KernelDiedError
from plait.kernel.protocol import PROTOCOL_VERSION, ProtocolError

__all__ = [
    "PROTOCOL_VERSION",
    "CellError",
    "ExecuteReply",
    "KernelClient",
    "KernelDiedError",
    "ProtocolError",
]
