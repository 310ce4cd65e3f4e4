"""The SMTP submission server of the gateway: a thin trio driver of `smtp_protocol.SmtpSession`.

`serve_smtp` listens (on 127.0.0.1 when run by `anonmail run`), and runs each connection in its
own task: bytes in, events out, logins checked with `ctx.logins`, accepted messages handed to
`ctx.submit`. All protocol decisions are in smtp_protocol.py / smtp_message.py.

Invariants:
* one connection's failure (hostile input, a reset, a bug in `submit`) ends that connection
  only; the server keeps answering others;
* at most MAX_CONNECTIONS connections at once (more are answered 421 and closed); a connection
  idle for IDLE_TIMEOUT, or not reading our replies for that long, is closed (RFC 5321
  §4.5.3.2.7 asks servers to wait at least 5 minutes);
* logs carry event kinds and counts only, never addresses, passwords or message contents.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

import trio

from anonmail.errors import UserError
from anonmail.gateway import smtp_protocol as sp
from anonmail.gateway.context import GatewayContext

log = logging.getLogger("anonmail.gateway.smtp")

RECEIVE_SIZE = 65536
IDLE_TIMEOUT = 300.0
MAX_CONNECTIONS = 32


async def serve_smtp(host: str, port: int, ctx: GatewayContext, *,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve SMTP submission on host:port (0: any free port) until cancelled; `started` with
    the port bound."""
    async def handler(stream: trio.SocketStream) -> None:
        await handle_connection(stream, ctx)

    await serve_connections(host, port, handler,
                            b"421 4.3.2 Too many connections, try again later\r\n",
                            task_status=task_status)


async def serve_connections(host: str, port: int,
                            handler: Callable[[trio.SocketStream], Awaitable[None]],
                            busy_reply: bytes, *, max_connections: int = MAX_CONNECTIONS,
                            task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                            ) -> None:
    """Listen on host:port and run `handler` (which must not raise) for each connection, at
    most `max_connections` at once; a connection beyond gets `busy_reply` and is closed. Also
    the POP3 server's listener."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    if port == 0:  # one listener, or each address family would get another port
        for extra in listeners[1:]:
            await extra.aclose()
        listeners = listeners[:1]
    active = 0

    async def limited(stream: trio.SocketStream) -> None:
        nonlocal active
        if active >= max_connections:
            with trio.move_on_after(5), contextlib.suppress(trio.BrokenResourceError,
                                                            trio.ClosedResourceError):
                await stream.send_all(busy_reply)
            await stream.aclose()
            return
        active += 1
        try:
            await handler(stream)
        finally:
            active -= 1

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, limited, listeners)
        task_status.started(listeners[0].socket.getsockname()[1])


async def handle_connection(stream: trio.SocketStream, ctx: GatewayContext,
                            idle_timeout: float = IDLE_TIMEOUT) -> None:
    """One connection, from greeting to close. Never raises (but Cancelled)."""
    session = sp.SmtpSession(ctx.address, ctx.max_size)
    try:
        async with stream:
            await _drive(stream, session, ctx, idle_timeout)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away
    except Exception as e:  # our bug: end this connection, keep serving others
        log.error("smtp connection failed: %s", type(e).__name__)


async def _drive(stream: trio.SocketStream, session: sp.SmtpSession, ctx: GatewayContext,
                 idle_timeout: float) -> None:
    async def flush() -> bool:
        out = session.data_to_send()
        if out:
            with trio.move_on_after(idle_timeout):
                await stream.send_all(out)
                return True
            return False  # the client does not read its replies
        return True

    while True:
        event = session.next_event()
        if isinstance(event, sp.NeedData):
            if not await flush():
                return
            data = b""
            with trio.move_on_after(idle_timeout) as idle:
                data = await stream.receive_some(RECEIVE_SIZE)
            if idle.cancelled_caught:
                session.timed_out()
                await flush()
                return
            if not data:
                return
            session.receive_data(data)
        elif isinstance(event, sp.AuthAttempt):
            result = ctx.logins.check(event.user, event.password)
            log.debug("smtp login: %s", result.value)
            session.auth_result(result)
        elif isinstance(event, sp.Submit):
            if not await flush():
                return
            try:
                message_id = await ctx.submit(event.data)
            except UserError as e:
                log.debug("smtp submission refused by the agent")
                session.submit_failed(str(e))
            except Exception as e:  # the agent's bug: a temporary failure for the client
                log.error("smtp submission failed: %s", type(e).__name__)
                session.submit_error()
            else:
                log.debug("smtp message submitted (%d recipients)", len(event.recipients))
                session.submitted(message_id)
        else:
            await flush()
            return
