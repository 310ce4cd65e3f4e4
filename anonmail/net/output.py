"""Output budgets: bytes of answers encoded and waiting to be written, per connection and in all.

A peer that sends requests and never reads its answers makes us hold them (issue 7, item 3: 16
such connections asking for 960 KiB blobs grew a node from 86 MB to 1 GB). Every answer an
inbound connection produces is charged here from the moment it is encoded until it has been
written (or the connection is gone):

* `ConnectionOutput.reserve` admits an answer if the connection has nothing queued (so any one
  answer up to the frame size always goes) or it fits within the connection's share, and if it
  fits within the node's total; an answer that does not is replaced by a small BUSY reply
  (`force`: always charged, never refused), so what is held per connection is at most its share
  plus one frame, and what is held in all at most the node's total plus one small reply per
  request in flight;
* while a connection's queue is at or above its share, its reader reads no further requests
  (`wait_room`): back-pressure instead of work whose answers would be dropped. The link's send
  timeout (links.Link) closes a connection whose peer does not drain it.

Invariants: `queued` never goes below zero and returns to zero when every charged answer is
released; `NodeOutput.queued` is the sum of its connections'. Pure bookkeeping over trio events:
no I/O, no clock.
"""

from __future__ import annotations

import trio


class NodeOutput:
    """The node-wide total of queued answer bytes, shared by every inbound connection."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.queued = 0


class ConnectionOutput:
    """One connection's queued answer bytes, charged to the node's total too."""

    def __init__(self, node: NodeOutput, limit: int) -> None:
        self.node = node
        self.limit = limit
        self.queued = 0
        self._room = trio.Event()
        self._room.set()

    @property
    def full(self) -> bool:
        return self.queued >= self.limit

    def reserve(self, size: int) -> bool:
        """Charge an answer of `size` bytes if it fits; False (nothing charged) if not."""
        fits_here = self.queued == 0 or self.queued + size <= self.limit
        if not fits_here or self.node.queued + size > self.node.limit:
            return False
        self.force(size)
        return True

    def force(self, size: int) -> None:
        """Charge a reply that must go whatever the budgets say (a short BUSY)."""
        self.queued += size
        self.node.queued += size
        if self.full and self._room.is_set():
            self._room = trio.Event()

    def release(self, size: int) -> None:
        self.queued -= size
        self.node.queued -= size
        if not self.full:
            self._room.set()

    async def wait_room(self) -> None:
        """Return once the queue is below this connection's share."""
        while self.full:
            await self._room.wait()
