"""Start the gateway's servers (SMTP submission, POP3, IMAP) on the endpoints config.toml names,
each with `nursery.start`, and report where each one listens."""

from __future__ import annotations

import importlib
import logging
from typing import Any

import trio

from anonmail.config import GatewayEndpoints
from anonmail.errors import UserError
from anonmail.gateway.context import GatewayContext

log = logging.getLogger("anonmail.gateway")



def _load(name: str) -> Any:
    if name == "smtp":
        return importlib.import_module("anonmail.gateway.smtp")
    if name == "pop3":
        return importlib.import_module("anonmail.gateway.pop3")
    return importlib.import_module("anonmail.gateway.imap")


def _servers() -> list[tuple[str, Any]]:
    """(name, serve function) of the servers this installation has."""
    out = []
    for name in ("smtp", "pop3", "imap"):
        try:
            out.append((name, getattr(_load(name), f"serve_{name}")))
        except ModuleNotFoundError:
            log.warning("the %s server is not available in this version", name)
    return out


async def serve_gateway(endpoints: GatewayEndpoints, ctx: GatewayContext, *,
                        task_status: trio.TaskStatus[dict[str, str]] = trio.TASK_STATUS_IGNORED
                        ) -> None:
    """Run every configured server; `started` with {"smtp": "127.0.0.1:2587", ...}. A port in
    use is one line (UserError) naming the setting to change."""
    where: dict[str, str] = {}
    async with trio.open_nursery() as nursery:
        for name, serve in _servers():
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
