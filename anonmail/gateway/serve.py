"""Start the gateway's servers (SMTP submission, POP3, IMAP) on the endpoints config.toml names,
each with `nursery.start`, and report where each one listens."""

from __future__ import annotations

import logging
from typing import Any

import trio

from anonmail.config import GatewayEndpoints
from anonmail.errors import UserError
from anonmail.gateway.context import GatewayContext
from anonmail.gateway.imap import serve_imap
from anonmail.gateway.pop3 import serve_pop3
from anonmail.gateway.smtp import serve_smtp

log = logging.getLogger("anonmail.gateway")



# (name, serve function): each `async def serve_x(host, port, ctx, *, task_status)`, started
# with the port it bound.
SERVERS: tuple[tuple[str, Any], ...] = (("smtp", serve_smtp), ("pop3", serve_pop3),
                                        ("imap", serve_imap))


async def serve_gateway(endpoints: GatewayEndpoints, ctx: GatewayContext, *,
                        task_status: trio.TaskStatus[dict[str, str]] = trio.TASK_STATUS_IGNORED
                        ) -> None:
    """Run every configured server; `started` with {"smtp": "127.0.0.1:2587", ...}. A port in
    use is one line (UserError) naming the setting to change."""
    where: dict[str, str] = {}
    async with trio.open_nursery() as nursery:
        for name, serve in SERVERS:
            ep = getattr(endpoints, name)
            if ep is None:
                continue
            try:
                port = await nursery.start(serve, ep.host, ep.port, ctx)
            except OSError as e:
                raise UserError(f"cannot serve {name.upper()} on {ep}: "
                                f"{e.strerror or e}; set another gateway.{name} in config.toml "
                                f"(or \"off\")") from None
            where[name] = f"{ep.host}:{port}"
        task_status.started(where)
