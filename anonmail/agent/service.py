"""The user's long-running agent (DESIGN.md §8): one address, unlocked once, doing on its own what
the one-shot commands do on request.

Schedule (all times from the injected Clock; intervals jittered with the injected Rng, so a
node watching one inbox cannot tell an agent's checks from its neighbours' by their period):
* check the inbox (and the request inbox) every `check_interval` seconds, ±50%; each check
  flushes what waits for a permit that has come, sends the grants that are due, and retrieves
  every pending message, so the Maildir a mail client reads is current;
* pending messages are retrieved one notice at a time, each by (Message-ID, sender): a
  co-recipient may sign a notice reusing a Message-ID (threat T-MAIL-DEDUP), and whatever
  befalls that notice (a wait, a hold) must not befall the genuine one;
* a pending message that could not be retrieved for now (its body or a fragment on no reachable
  node) is tried again after one check interval, then with the wait doubling up to
  RETRIEVE_RETRY_MAX (±50%), so a body that stays missing does not cost a fetch every check;
* ... but not after its body's expiry (`notices.expired`: the expiry its sender signed, at the
  latest the longest TTL after it arrived): the notice is *expired*, kept for the user to
  discard (`anonmail inbox` marks it), counted in the status, and never fetched again;
* a pending message whose body is there but unreadable (retrieve.UnreadableMessage: it does
  not decrypt, is malformed, or names another sender than its signed header) is *held*: the
  notice stays on disk (the user decides: `anonmail read` shows why, `anonmail discard` drops
  it), it goes to the held file with its one-line reason (held.py), it is logged once and shown in
  the status and `anonmail inbox`, and the agent never fetches it again by itself, since the
  same bytes would fail the same way (threat T-MAIL-HOSTILE-BODY);
* retry the Outbox: a message that failed (or was interrupted) is retried after 1 min, then with
  the wait doubling up to 1 h; a message handed in by a mail client (`submit`) is sent at once;
* republish the address certificate and inbox policy when the last publication is older than
  REPUBLISH_AFTER (a quarter of the 30 days nodes keep it) or was never made.

Invariants: one operation at a time (a lock; the permit book and the Outbox have one writer);
every operation is its own agent session with fresh client keys and go-betweens (session.py),
exactly as a one-shot command, so a running agent is no easier to link than separate commands;
a failing operation is logged as one line without addresses and retried later, never fatal --
not even an unexpected exception (a bug, or hostile input nobody foresaw: the agent shares its
process with the node and the gateway, commands/run_cmd.py); each pending message is retrieved
on its own, so one that fails does not stop the others; a submitted message is in the durable
Outbox before `submit` returns.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import trio

from anonmail.agent import held as held_mod
from anonmail.agent.session import AgentConfig, session
from anonmail.clock import Clock
from anonmail.errors import AnonmailError
from anonmail.fileio import write_private
from anonmail.mail import compose as compose_mod
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.maildir import LocalMail
from anonmail.mail.notices import expired
from anonmail.mail.retrieve import UnreadableMessage
from anonmail.mail.user_agent import MailAgent, with_bcc
from anonmail.rng import Rng

log = logging.getLogger("anonmail.agent")
T = TypeVar("T")

CHECK_INTERVAL = 300.0  # seconds between inbox checks, on average
REPUBLISH_AFTER = 7 * 86400  # nodes keep a certificate 30 days (user_agent.CERT_TTL)
RETRY_FIRST = 60.0
RETRY_MAX = 3600.0
PUBLISHED_FILE = "published"  # in the mail directory: when the certificate last went out
RETRIEVE_RETRY_MAX = 86400.0  # a body missing for long is tried about daily until it expires

# (anonymous) -> one agent session; session.py's on the real network, a simulated node's in tests
OpenSession = Callable[[bool], AbstractAsyncContextManager[MailAgent]]


def published_at(mail_dir: Path) -> int | None:
    """When this address's certificate and policy were last published (None: never)."""
    try:
        return int((mail_dir / PUBLISHED_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def mark_published(mail_dir: Path, now: float) -> None:
    write_private(mail_dir / PUBLISHED_FILE, str(int(now)).encode())


def publish_due(mail_dir: Path, now: float) -> bool:
    last = published_at(mail_dir)
    return last is None or now - last >= REPUBLISH_AFTER or last > now + 86400


async def publish(agent: MailAgent, mail_dir: Path) -> int:
    """Publish the certificate and policy now and remember when; the number of nodes that
    took the certificate."""
    stored = len(await agent.publish_cert())
    mark_published(mail_dir, agent.clock.now())
    return stored


async def publish_if_due(agent: MailAgent, mail_dir: Path) -> bool:
    """Publish the certificate and policy if due (any session may: an `init` that could not
    reach the network leaves it due). True if published now."""
    if not publish_due(mail_dir, agent.clock.now()):
        return False
    await publish(agent, mail_dir)
    return True


@dataclass
class Retry:
    attempts: int = 0
    at: float = 0.0  # when to try next


@dataclass
class AgentStatus:
    address: str
    last_check: float | None = None
    last_check_ok: bool | None = None
    next_check: float = 0.0
    last_error: str = ""
    checks: int = 0
    sent: int = 0
    retries: dict[str, Retry] = field(default_factory=dict)
    # (Message-ID, sender) of a notice not retrievable for now -> when to try it again
    retrieve_waits: dict[tuple[str, str], Retry] = field(default_factory=dict)
    held: int = 0  # pending messages held as unreadable
    expired: int = 0  # pending messages whose body is gone from the network


class AgentService:
    """Start with `await nursery.start(service.run)`; `operation()` for a one-shot command's
    job, `submit(data)` for a mail client's message."""

    def __init__(self, identity: AddressIdentity, config: AgentConfig, clock: Clock, rng: Rng,
                 *, check_interval: float = CHECK_INTERVAL,
                 open_session: OpenSession | None = None) -> None:
        self.identity = identity
        self.config = config
        self.clock = clock
        self.rng = rng
        self.check_interval = check_interval
        self.local = LocalMail(config.mail_dir)
        self.status = AgentStatus(identity.address)
        self._lock = trio.Lock()
        self._wake = trio.Event()
        self._open: OpenSession = open_session or (
            lambda anonymous: session(identity, config, clock, rng, anonymous=anonymous))

    # -- operations ------------------------------------------------------------------------------

    @asynccontextmanager
    async def operation(self, *, anonymous: bool = True) -> AsyncIterator[MailAgent]:
        """One agent session, with the lock held: what a one-shot command runs in."""
        async with self._lock, self._open(anonymous) as agent:
            yield agent

    async def run_job(self, job: Callable[[MailAgent], Awaitable[T]], *,
                      anonymous: bool = True) -> T:
        async with self.operation(anonymous=anonymous) as agent:
            return await job(agent)

    async def submit(self, data: bytes) -> str:
        """A mail client's message: checked (its From must be ours), queued durably in the
        Outbox with its Bcc line, and sent by the agent right after. Returns its Message-ID;
        UserError (one line) if it cannot be sent at all."""
        msg = compose_mod.prepare(data, self.identity.address, self.clock, self.rng)
        self.local.queue_outgoing(msg.message_id, with_bcc(msg))
        self.status.retries[msg.message_id] = Retry(0, self.clock.now())
        self._wake.set()
        return msg.message_id

    def kick(self) -> None:
        """Check now (e.g. after a command changed what waits)."""
        self.status.next_check = self.clock.now()
        self._wake.set()

    # -- the schedule ----------------------------------------------------------------------------

    def _jitter(self, seconds: float) -> float:
        return seconds * (0.5 + self.rng.random())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        self.status.next_check = self.clock.now()  # at start: check, flush, publish if due
        self._track_outbox(0.0)
        task_status.started()
        while True:
            await self._sleep_until_due()
            await self._due_work()

    async def _sleep_until_due(self) -> None:
        due = min([self.status.next_check, *(r.at for r in self.status.retries.values())])
        wait = due - self.clock.now()
        if wait > 0:
            with trio.move_on_after(wait):
                await self._wake.wait()
        self._wake = trio.Event()

    async def _due_work(self) -> None:
        now = self.clock.now()
        for mid, r in sorted(self.status.retries.items(), key=lambda kv: kv[1].at):
            if r.at <= now:
                await self._retry(mid, r)
        if self.status.next_check <= self.clock.now():
            await self._check()

    async def _retry(self, mid: str, r: Retry) -> None:
        if self.local.outgoing(mid) is None:  # sent or dropped meanwhile
            self.status.retries.pop(mid, None)
            return
        try:
            async with self.operation() as agent:
                report = await agent.retry(mid)
            self.status.sent += 1 if report.delivered else 0
        except Exception as e:  # never fatal (module docstring); Cancelled is no Exception
            self._failed("send", e)
        waiting = self.local.waiting(mid)
        if self.local.outgoing(mid) is None or (waiting and all(w.permit for w in waiting)):
            self.status.retries.pop(mid, None)  # sent, or waits for a permit (check flushes)
            return
        r.attempts += 1
        r.at = self.clock.now() + self._jitter(min(RETRY_MAX, RETRY_FIRST * 2 ** (r.attempts - 1)))

    def _track_outbox(self, delay: float) -> None:
        """Retry what a crash or a failed send (ours or a command's) left in the Outbox,
        except what waits for a permit (a check flushes that when the permit comes)."""
        at = self.clock.now() + delay
        for state in self.local.outbox():
            if not state.waiting or not all(w.permit for w in state.waiting):
                self.status.retries.setdefault(state.message_id, Retry(0, at))

    async def _check(self) -> None:
        self.status.last_check = self.clock.now()
        try:
            async with self.operation() as agent:
                report = await agent.check()
                self.status.sent += sum(1 for s in report.flushed if s.delivered)
                await self._retrieve_pending(agent)
                await publish_if_due(agent, self.config.mail_dir)
            self.status.last_check_ok = True
            self.status.checks += 1
        except Exception as e:  # never fatal (module docstring); Cancelled is no Exception
            self.status.last_check_ok = False
            self._failed("check", e)
        self._track_outbox(RETRY_FIRST)
        self.status.next_check = self.clock.now() + self._jitter(self.check_interval)

    async def _retrieve_pending(self, agent: MailAgent) -> None:
        """Retrieve every pending message that is due, not held and not expired, each on its
        own and by its sender: whatever one raises is recorded and the next one is tried
        (module docstring)."""
        mail_dir = self.config.mail_dir
        now, skew = self.clock.now(), self.config.params.clock_skew
        notices = [((n.header.message_id, n.sender), n) for n in agent.pending()]
        loaded = held_mod.load(mail_dir)
        held = held_mod.settle(loaded, [key for key, _ in notices])
        if held != loaded:  # discarded or retrieved by a command meanwhile
            held_mod.save(mail_dir, held)
        # Expired: never fetched again. (One whose Maildir copy a crash left is still
        # "retrieved": that needs no network, retrieve.py, and clears its notice.)
        gone = {key for key, n in notices
                if expired(n, now, skew) and not agent.local.has_message(key[0])}
        waits, live = self.status.retrieve_waits, {key for key, _ in notices} - gone
        for key in list(waits):
            if key not in live:
                del waits[key]
        # Each counted once: an expired notice cannot be retrieved, held or not.
        self.status.held, self.status.expired = len(held.keys() - gone), len(gone)
        for key, _ in notices:
            wait = waits.get(key)
            if key in held or key in gone or (wait is not None and wait.at > self.clock.now()):
                continue
            mid, sender = key
            try:
                await agent.retrieve(mid, sender)
            except UnreadableMessage as e:
                # Written before anything else: the agent must not fetch it again, even
                # after a crash. The notice itself stays: nothing stored is lost.
                held = held_mod.hold(mail_dir, mid, sender, str(e))
                waits.pop(key, None)
                self.status.held = len(held.keys() - gone)
                log.warning("a pending message is unreadable (%s); held: it is not fetched "
                            "again until you read or discard it", type(e).__name__)
                self.status.last_error = f"retrieve: {e}"
            except Exception as e:  # kept pending, tried again later, with a growing wait
                wait = waits.setdefault(key, Retry())
                wait.attempts += 1
                wait.at = self.clock.now() + self._jitter(min(
                    RETRIEVE_RETRY_MAX, self.check_interval * 2 ** (wait.attempts - 1)))
                self._failed("retrieve", e)
            else:
                waits.pop(key, None)

    def _failed(self, what: str, e: Exception) -> None:
        # The error's class only in the log (its text may name an address); the status, which
        # only the owner can read over the control socket, keeps our own errors' one line.
        # Anything else is a bug or input nobody foresaw: its text is not ours to show.
        if isinstance(e, AnonmailError):
            log.warning("%s failed (%s); will try again", what, type(e).__name__)
            self.status.last_error = f"{what}: {e}"
        else:
            log.error("%s failed unexpectedly (%s); will try again", what, type(e).__name__)
            self.status.last_error = f"{what}: unexpected {type(e).__name__}"

    def describe(self) -> dict[str, object]:
        """For `anonmail status`."""
        s = self.status
        last = published_at(self.config.mail_dir)
        return {
            "address": s.address,
            "last_check": s.last_check,
            "last_check_ok": s.last_check_ok,
            "next_check": s.next_check,
            "checks": s.checks,
            "outbox": len(self.local.outbox_keys()),
            "sent": s.sent,
            "cert_published": last,
            "cert_republish": None if last is None else last + REPUBLISH_AFTER,
            "last_error": s.last_error,
            "held": s.held,
            "expired": s.expired,
        }
