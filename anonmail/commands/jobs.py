"""The mail commands' network work, as named jobs that run where the address key is open.

A command that needs the network (send, inbox, read, reply, discard, requests, allow, block,
contacts add, outbox --retry, address --publish and --verify) parses its arguments, then calls
`run_job(args, NAME, params)`: when `anonmail run` serves this home, the job is handed to that
running agent over the control socket (no passphrase asked: the agent opened the key once; one
writer for the Outbox and the permit book); otherwise the command opens the key itself (or
passes the identity it opened already) and runs one agent session (agent/session.py). Either
way the job is the same function below, given a MailAgent and JSON-able params, returning the
lines to print (`out` on stdout, `err` on stderr). After the job (except a `bare` one, which
does only what it says: `discard`), any session sends what waits for a permit that has come,
and republishes the address certificate when it is due (agent/service.py), so an `init` that
could not reach the network does not leave an address that is never published.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as _dt
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from anonmail import control
from anonmail.agent import held
from anonmail.agent.service import publish, publish_if_due
from anonmail.agent.session import AgentConfig, own_node_endpoint, session
from anonmail.anon.options import DEFAULT
from anonmail.clock import SystemClock
from anonmail.commands import common
from anonmail.errors import AnonmailError, UserError
from anonmail.mail.compose import Attachment
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.retrieve import UnreadableMessage
from anonmail.mail.send import recipient_certs
from anonmail.mail.user_agent import MailAgent
from anonmail.paths import CONTROL_PATH_MAX, Home
from anonmail.permit.book import Status
from anonmail.records.certs import anon_domain, fingerprint_words, is_anon_address
from anonmail.rng import SystemRng

ADDRESS_KEY_FILE = "address.key"
MAIL_DIR = "mail"
GUARD_FILE = "anon-guard.cbor"  # the anonymous sender's guard X, kept between sessions
JOB_TIMEOUT = 900.0  # seconds a command waits for the running agent (a large send, a slow net)


@dataclass
class Output:
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)

    def show(self) -> None:
        for line in self.out:
            print(line)
        for line in self.err:
            print(line, file=sys.stderr)


Job = Callable[[MailAgent, dict[str, Any]], Awaitable[Output]]
JOBS: dict[str, Job] = {}
BARE: set[str] = set()  # jobs that do only what they say (no check, flush or republish after)


def job(name: str, *, bare: bool = False) -> Callable[[Job], Job]:
    def register(fn: Job) -> Job:
        JOBS[name] = fn
        if bare:
            BARE.add(name)
        return fn
    return register


# -- where the key is -----------------------------------------------------------------------------

def open_identity(args: argparse.Namespace, home: Home) -> AddressIdentity:
    """The address identity, unsealed with the passphrase of the address key."""
    path = home.root / ADDRESS_KEY_FILE
    if not path.exists():
        raise UserError(f"no address in {home.root}: run `anonmail init` first")
    return AddressIdentity.load(path, common.passphrase(args, f"{common.ADDRESS_KEY} in {path}"))


def agent_config(home: Home) -> AgentConfig:
    cfg = common.load_config(home)
    entry = (own_node_endpoint(cfg.listen), *cfg.bootstrap)
    return AgentConfig(cfg.params, tuple(dict.fromkeys(entry)), cfg.trusted_cas,
                       home.root / MAIL_DIR, guard_file=home.root / GUARD_FILE,
                       options=DEFAULT.replace(delay_mean=cfg.anon_delay))


def _running_agent(home: Home) -> dict[str, Any] | None:
    """The status of the `anonmail run` agent serving this home, if one does."""
    if len(os.fsencode(home.control)) > CONTROL_PATH_MAX or not home.control.exists():
        return None
    found = control.probe(home.control)
    agent = found.get("agent") if found else None
    return agent if isinstance(agent, dict) and agent else None


def agent_running(home: Home) -> bool:
    """Whether `anonmail run` serves this home (a plain `anonmail node` has no agent)."""
    return _running_agent(home) is not None


def own_address(args: argparse.Namespace, home: Home) -> tuple[str, AddressIdentity | None]:
    """Our address: from the running agent (no passphrase asked), else from the key file,
    whose opened identity comes back too, for `run_job(..., identity=)` (asked once)."""
    agent = _running_agent(home)
    if agent is not None and isinstance(agent.get("address"), str):
        return str(agent["address"]), None
    identity = open_identity(args, home)
    return identity.address, identity


def run_job(args: argparse.Namespace, name: str, params: dict[str, Any], *,
            identity: AddressIdentity | None = None) -> Output:
    """Run job `name` in the running agent, else in one local session (with `identity` when
    the caller opened the key already, so the passphrase is not asked twice)."""
    home = common.home_of(args)
    direct = bool(getattr(args, "direct", False))
    params = {**params, "anonymous": not direct}
    if agent_running(home):
        try:
            reply = control.call(home.control, {"op": "job", "name": name, "params": params},
                                 timeout=JOB_TIMEOUT)
        except OSError as e:
            raise UserError(f"the running agent did not answer: {e.strerror or e}") from None
        return Output(list(reply.get("out", [])), list(reply.get("err", [])))
    if identity is None:
        identity = open_identity(args, home)
    config = agent_config(home)

    async def main() -> Output:
        assert identity is not None
        async with session(identity, config, SystemClock(), SystemRng(),
                           anonymous=not direct) as agent:
            return await execute(agent, name, params)

    return trio.run(main)


async def execute(agent: MailAgent, name: str, params: dict[str, Any]) -> Output:
    """Run one job in a session, then what every session does after its job."""
    fn = JOBS.get(name)
    if fn is None:
        raise UserError(f"unknown job {name!r}")
    out = await fn(agent, params)
    if name in BARE:
        return out
    out.err += await flush_waiting(agent)
    with contextlib.suppress(AnonmailError):  # due again next time
        if await publish_if_due(agent, agent.local.root):
            out.err.append("republished your address certificate")
    return out


async def flush_waiting(agent: MailAgent) -> list[str]:
    """Any session sends what waits for a permission that has come: if the Outbox holds
    messages waiting for a grant, read the inbox (grants arrive there) and send them."""
    if agent.checked or not any(w.permit for state in agent.local.outbox()
                                for w in state.waiting):
        return []
    with contextlib.suppress(UserError):  # the job's own result stands; they wait for later
        report = await agent.check()
        return [f"from your Outbox: {s.message_id} delivered to {', '.join(s.delivered)}"
                for s in report.flushed if s.delivered]
    return []


# -- the jobs -------------------------------------------------------------------------------------

@job("publish")
async def _publish(agent: MailAgent, p: dict[str, Any]) -> Output:
    stored = await publish(agent, agent.local.root)
    return Output([f"published your address certificate on {stored} nodes"])


def send_params(to: list[str], cc: list[str], bcc: list[str], subject: str, body: str | None,
                attachments: list[Attachment], raw: bytes | None) -> dict[str, Any]:
    return {"to": to, "cc": cc, "bcc": bcc, "subject": subject, "body": body,
            "attachments": [[a.filename, base64.b64encode(a.data).decode()]
                            for a in attachments],
            "raw": None if raw is None else base64.b64encode(raw).decode()}


@job("send")
async def _send(agent: MailAgent, p: dict[str, Any]) -> Output:
    if p.get("raw") is not None:
        report = await agent.send_message(base64.b64decode(p["raw"]))
    else:
        attachments = [Attachment(name, base64.b64decode(data))
                       for name, data in p.get("attachments", [])]
        report = await agent.send(p["to"], p["cc"], p["bcc"], p["subject"], p["body"] or "",
                                  attachments)
    how = "anonymously (storage nodes saw only go-betweens)" \
        if p.get("anonymous", True) else "directly (not anonymous: storage nodes saw your node)"
    lines = [f"{address}: delivered, {len(report.inboxes[address].receipts)} inbox "
             f"receipts verified" for address in report.delivered]
    lines += [f"{address}: {why}; the message waits in your Outbox and goes out by "
              f"itself once they allow you" for address, why in report.waiting.items()]
    if report.delivered:
        lines.append(f"sent {report.message_id} ({report.size:,} bytes) to "
                     f"{len(report.delivered)} recipient(s) {how}; "
                     f"{len(report.body.receipts)} body receipts verified")
    return Output(lines)


@job("check")
async def _check(agent: MailAgent, p: dict[str, Any]) -> Output:
    report = await agent.check()
    err = [f"{len(report.new)} new message(s)"]
    settled = report.settled
    if settled is not None and settled.granted:
        err.append(f"sent permits to {', '.join(settled.granted)}")
    for sent in report.flushed:
        if sent.delivered:
            err.append(f"from your Outbox: {sent.message_id} delivered to "
                       f"{', '.join(sent.delivered)}")
    if report.requests_pending:
        err.append(f"{report.requests_pending} request(s) to write to you: `anonmail "
                   "requests` lists them")
    return Output([], err)


def _notice(p: dict[str, Any]) -> tuple[str, str | None]:
    """(Message-ID, sender or None: the Message-ID's first notice) a job names."""
    sender = p.get("sender")
    return str(p["message_id"]), None if sender is None else str(sender)


@job("retrieve")
async def _retrieve(agent: MailAgent, p: dict[str, Any]) -> Output:
    """Retrieve one notice (`anonmail read`); an unreadable one is held, as the running agent
    holds it (agent/held.py: no session fetches it again by itself), one held before and
    retrieved now is no longer."""
    mid, sender = _notice(p)
    notice = agent.local.get_pending(mid, sender)
    try:
        await agent.retrieve(mid, sender)
    except UnreadableMessage as e:
        if notice is not None:
            held.hold(agent.local.root, mid, notice.sender, str(e))
        raise
    if notice is not None:
        held.release(agent.local.root, mid, notice.sender)
    return Output()


@job("discard", bare=True)
async def _discard(agent: MailAgent, p: dict[str, Any]) -> Output:
    """Give up one pending notice (`anonmail discard`): our right to its body is dropped on
    the network and the notice forgotten. Nothing else: no check, so nothing new is ACKed."""
    mid, sender = _notice(p)
    notice = agent.local.get_pending(mid, sender)
    nodes = await agent.discard(mid, sender)
    if notice is not None:
        held.release(agent.local.root, mid, notice.sender)
    return Output([], [f"your right to its body was dropped on {nodes} node(s)"])


@job("cert")
async def _cert(agent: MailAgent, p: dict[str, Any]) -> Output:
    """Fetch and verify ADDRESS's certificate as `send` does (send.py `recipient_certs`: the
    newest valid one of its replicas; for a .anon address its domain must be its key's
    fingerprint, else it is refused) and show the fingerprint to compare."""
    address = str(p["address"])
    found = await recipient_certs(agent.net, agent.dht, [address], agent.params.replication,
                                  agent.trusted_cas, agent.clock, agent.params.clock_skew)
    cert = found[address]
    lines = [address, f"fingerprint: {fingerprint_words(cert.sign_key)}"]
    if is_anon_address(address):
        if address.split("@")[1] != anon_domain(cert.sign_key):  # verify() refused it already
            raise UserError(f"the certificate of {address} is for another key: refused")
        lines.append("the address is self-certifying: its domain is the fingerprint of this "
                     "key, and the certificate is signed by that key")
    else:
        lines.append(f"certified by the CA {cert.issuer.hex()} (a CA in your config.toml "
                     "trusted_cas)")
    lines.append(f"valid until {_dt.datetime.fromtimestamp(cert.expires, tz=_dt.UTC):%Y-%m-%d} "
                 "UTC; compare the fingerprint with what its owner reads to you")
    return Output(lines)


def _other(agent: MailAgent, address: str) -> str:
    if address == agent.address:
        raise UserError("that is your own address")
    return address


@job("allow")
async def _allow(agent: MailAgent, p: dict[str, Any]) -> Output:
    address = _other(agent, str(p["address"]))
    if not await agent.permits.allow(address):
        return Output([f"{address} is allowed, but the permits could not be delivered now: "
                       "they go out with your next `anonmail inbox`"])
    return Output([f"{address} may now write to you (permits sent)"])


@job("block")
async def _block(agent: MailAgent, p: dict[str, Any]) -> Output:
    address = _other(agent, str(p["address"]))
    revoked, replicas = await agent.permits.block(address)
    return Output([f"{address} is blocked: {revoked} unspent permit(s) revoked on {replicas} "
                   "inbox replicas; its requests will be dropped"])


@job("contact-add")
async def _contact_add(agent: MailAgent, p: dict[str, Any]) -> Output:
    address = _other(agent, str(p["address"]))
    agent.permits.book.set_status(address, Status.CONTACT)
    agent.permits.book.save()
    sent = await agent.permits.grant(address)
    how = "permits sent" if sent else "permits go out with your next `anonmail inbox`"
    return Output([f"{address} is a contact ({how})"])


@job("retry")
async def _retry(agent: MailAgent, p: dict[str, Any]) -> Output:
    report = await agent.retry(str(p["message_id"]))
    done = ", ".join(report.delivered) or "nobody new"
    wait = "; ".join(f"{a}: {why}" for a, why in report.waiting.items())
    return Output([f"delivered to {done}" + (f"; still waiting: {wait}" if wait else "")])
