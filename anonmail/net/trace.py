"""A `Network` wrapper that records every request it carries: who was asked what, when, and how
it went. For demos (a lookup traced hop by hop), for measurements (messages per operation), and
for observing adversaries in simulation (what a node sees). It changes nothing it carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio

from anonmail.errors import AnonmailError
from anonmail.net.base import Handler, Network
from anonmail.records.certs import Endpoint, NodeCert


@dataclass(frozen=True, slots=True)
class TraceEntry:
    sent_at: float  # trio time
    took: float  # seconds until the answer (or the failure)
    to: bytes  # node id asked
    request: Any
    response: Any  # the response message, or None on failure
    error: str | None  # exception type name on failure


class TracingNetwork:
    """Wraps `inner`; `entries` lists the requests in the order they completed."""

    def __init__(self, inner: Network) -> None:
        self.inner = inner
        self.entries: list[TraceEntry] = []

    @property
    def local_cert(self) -> NodeCert:
        return self.inner.local_cert

    async def request(self, to: NodeCert, msg: Any, *, timeout: float | None = None) -> Any:
        start = trio.current_time()
        try:
            response = await self.inner.request(to, msg, timeout=timeout)
        except AnonmailError as e:
            self.entries.append(TraceEntry(start, trio.current_time() - start, to.node_id, msg,
                                           None, type(e).__name__))
            raise
        self.entries.append(TraceEntry(start, trio.current_time() - start, to.node_id, msg,
                                       response, None))
        return response

    async def introduce(self, endpoint: Endpoint, *, timeout: float | None = None) -> NodeCert:
        return await self.inner.introduce(endpoint, timeout=timeout)

    async def serve(self, handler: Handler, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.inner.serve(handler, task_status=task_status)

    def clear(self) -> None:
        self.entries.clear()
