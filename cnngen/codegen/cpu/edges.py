"""The network's edges: NCHW in, NCHW out. The only place layouts are converted."""
from __future__ import annotations

from ..kernel import Buffer, Call, spec
from ..layout import Blocked


def to_blocked(name: str, layout: Blocked, n_batch: int) -> Call:
    """Read the user's array (buffer ``<name>:nchw``) into ``name``'s blocked buffer."""
    v = layout.vector
    size = n_batch * layout.channels * layout.height * layout.width
    kernel = spec("to_blocked", ("to_blocked",), f"nchw{v}c", bytes=4 * (size + layout.size(n_batch)),
                  channels=layout.channels, blocks=layout.blocks,
                  height=layout.height, width=layout.width, **layout.strides("out"))
    return Call(name, kernel, (Buffer(f"{name}:nchw"), Buffer(name)), edge=True)


def from_blocked(name: str, layout: Blocked, n_batch: int) -> Call:
    """Write ``name``'s blocked buffer to the NCHW array ``<name>:nchw`` returned to the user."""
    v = layout.vector
    size = n_batch * layout.channels * layout.height * layout.width
    kernel = spec("from_blocked", ("from_blocked",), f"nchw{v}c", bytes=4 * (size + layout.size(n_batch)),
                  channels=layout.channels, height=layout.height,
                  width=layout.width, **layout.strides("x"))
    return Call(name, kernel, (Buffer(name), Buffer(f"{name}:nchw")), edge=True)
