"""The POP3 server of the gateway: a thin trio driver of `pop3_protocol.Pop3Session` over the
INBOX Maildir (`ctx.maildir`, through maildir_view.py).

Invariants:
* one session at a time holds the maildrop (RFC 1939 §4: exclusive access); a second good
  login meanwhile gets -ERR [IN-USE]. The lock is released when the holding connection ends,
  however it ends;
* messages are deleted only on QUIT from the TRANSACTION state (RFC 1939 §6), by removing
  their files; a connection that breaks, times out or is refused deletes nothing;
* file access runs in worker threads (a large message must not stall other connections); one
  connection's failure ends that connection only;
* at most MAX_CONNECTIONS connections at once; a connection idle for IDLE_TIMEOUT (RFC 1939
  §3: at least 10 minutes) is closed without UPDATE; logs carry no addresses or contents.
"""

from __future__ import annotations

import logging

import trio

from anonmail.gateway import pop3_protocol as pp
from anonmail.gateway.auth import Login
from anonmail.gateway.context import GatewayContext
from anonmail.gateway.maildir_view import MaildirView
from anonmail.gateway.smtp import RECEIVE_SIZE, serve_connections

log = logging.getLogger("anonmail.gateway.pop3")

IDLE_TIMEOUT = 600.0
FLUSH_AT = 1 << 16  # octets of replies queued before they are written out


class Maildrop:
    """The one maildrop every POP3 session of a server shares, and who holds it."""

    def __init__(self, view: MaildirView) -> None:
        self.view = view
        self.holder: object | None = None


async def serve_pop3(host: str, port: int, ctx: GatewayContext, *,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve POP3 on host:port (0: any free port) until cancelled; `started` with the port."""
    drop = Maildrop(MaildirView(ctx.maildir))

    async def handler(stream: trio.SocketStream) -> None:
        await handle_connection(stream, ctx, drop)

    await serve_connections(host, port, handler,
                            b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
                            task_status=task_status)


async def handle_connection(stream: trio.SocketStream, ctx: GatewayContext, drop: Maildrop,
                            idle_timeout: float = IDLE_TIMEOUT) -> None:
    """One connection, from greeting to close. Never raises (but Cancelled)."""
    me = object()
    try:
        async with stream:
            await _drive(stream, pp.Pop3Session(), ctx, drop, me, idle_timeout)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away
    except Exception as e:  # our bug, or the Maildir unreadable: end this connection only
        log.error("pop3 connection failed: %s", type(e).__name__)
    finally:
        if drop.holder is me:
            drop.holder = None


async def _drive(stream: trio.SocketStream, session: pp.Pop3Session, ctx: GatewayContext,
                 drop: Maildrop, me: object, idle_timeout: float) -> None:
    async def flush() -> bool:
        out = session.data_to_send()
        if out:
            with trio.move_on_after(idle_timeout):
                await stream.send_all(out)
                return True
            return False  # the client does not read what we send
        return True

    while True:
        event = session.next_event()
        if isinstance(event, pp.NeedData):
            if not await flush():
                return
            data = b""
            with trio.move_on_after(idle_timeout) as idle:
                data = await stream.receive_some(RECEIVE_SIZE)
            if idle.cancelled_caught or not data:
                session.timed_out()
                return
            session.receive_data(data)
            continue
        if isinstance(event, pp.AuthAttempt):
            result = ctx.logins.check(event.user, event.password)
            log.debug("pop3 login: %s", result.value)
            if result is not Login.OK:
                session.auth_refused(result)
            elif drop.holder is not None:
                session.maildrop_busy()
            else:
                drop.holder = me
                listing = await trio.to_thread.run_sync(drop.view.messages)
                session.auth_ok([(m.uid, m.size) for m in listing])
        elif isinstance(event, pp.Retrieve):
            session.message(await trio.to_thread.run_sync(drop.view.read, event.uid))
        elif isinstance(event, pp.Commit):
            failed = await trio.to_thread.run_sync(_delete_all, drop.view, event.delete)
            log.debug("pop3 update: %d deleted, %d failed", len(event.delete), failed)
            drop.holder = None
            session.committed(failed)
        else:
            await flush()
            return
        if session.output_pending >= FLUSH_AT and not await flush():
            return


def _delete_all(view: MaildirView, uids: tuple[str, ...]) -> int:
    """Delete the messages; the number that could not be removed (one already gone counts as
    removed: another client deleted it)."""
    failed = 0
    for uid in uids:
        try:
            view.delete(uid)
        except OSError:
            failed += 1
    return failed
