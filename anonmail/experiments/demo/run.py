"""The demo's local network and its one anonymous mail, with every node's observations.

`run_mail(config, say)` starts `config.nodes` real `Node`s on 127.0.0.1 in this process
(testnet parameters, a small puzzle, in-memory stores), installs on each the two hooks that
report what the node sees (`Node.relay.observe` and `Node.on_request`, model.Seen), and runs
three agent sessions (agent/session.py, anonymous: every storage request through go-betweens),
each a DHT client with two fresh keys and no endpoint: one for its lookups, one for its
circuits, which only its guard X sees. Bob and Carol publish their address
certificates; Alice sends one mail with an attachment to both; Bob, then Carol, check and read
it. `say` gets the narration as it happens; the result holds everything report.py prints.

It reads the real clock and the OS RNG (this is a real network). Every network step runs under
`trio.fail_after`, so a stuck step ends the demo with an error rather than hanging it.
"""

from __future__ import annotations

import email
import email.policy
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from anonmail import wire
from anonmail.agent.session import AgentConfig, session
from anonmail.anon import messages as am
from anonmail.anon.anonymizer import FORWARDABLE, Sighting, request_key
from anonmail.anon.client import AnonymousStore
from anonmail.anon.options import DEFAULT
from anonmail.clock import SystemClock
from anonmail.dht.dht_node import DhtNode
from anonmail.dht.messages import FindNode, FindTags, GetCerts
from anonmail.experiments.demo.model import Seen
from anonmail.mail.compose import Attachment
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.send import SendReport
from anonmail.mail.user_agent import MailAgent
from anonmail.net.base import Peer
from anonmail.node.process import Node
from anonmail.records import ids
from anonmail.records.certs import Endpoint
from anonmail.records.params import NetworkParams, testnet
from anonmail.rng import SystemRng
from anonmail.store import messages as sm
from anonmail.store.client import append_replicated

PUZZLE_BITS = 8  # a real network asks 16 bits per node id
STEP_TIMEOUT = 60.0  # seconds for any one network step (start a node, publish, send, read)


@dataclass(frozen=True)
class MailConfig:
    nodes: int = 12
    attachment: int = 800_000  # bytes of photo.jpg: over ~720 kB the body is fragmented
    delay_mean: float = 0.1  # Z's mean random hold before a Store/Append (DEFAULT: 5 s)


@dataclass(frozen=True)
class Reading:
    """What one recipient read."""

    who: str
    subject: str
    sender: str
    attachment: str
    size: int
    matches: bool  # the attachment's bytes equal what Alice attached
    fragments: int


@dataclass
class MailRun:
    """Everything report.py prints: the records, the agents' client ids, the phases' times."""

    config: MailConfig
    nodes: list[bytes]
    clients: dict[str, bytes]  # "alice" -> her agent's client node id (its circuits)
    lookups: dict[str, bytes]  # "alice" -> the node id her agent looks keys up as
    keys: dict[bytes, str]  # the narrator's labels of the mail's keys (nodes see only keys)
    seen: list[Seen]
    send_start: float
    send_end: float
    reads: dict[str, tuple[float, float]]  # "bob" -> (start, end) of his check and read
    report: SendReport
    readings: list[Reading] = field(default_factory=list)


def _watch(node: Node, log: list[Seen], clock: SystemClock) -> None:
    nid = node.node_id

    def on_sighting(s: Sighting) -> None:
        log.append(Seen(nid, s.time, s.event, s.role, s.prev, s.next, s.size, s.key,
                        s.targets))

    def on_request(peer: Peer, msg: Any, reply: Any) -> None:
        if isinstance(msg, am.Open | am.Cell):
            return  # the relay's own sightings say more (the next hop)
        if isinstance(msg, am.Locate):  # asked directly, not at a circuit's end: relabel
            for i in range(len(log) - 1, -1, -1):
                s = log[i]
                if s.node == nid and s.what == "Locate" and s.via == "end" and \
                        s.peer == peer.node_id:
                    log[i] = Seen(nid, s.time, "Locate", "direct", s.peer, None, s.size, s.key)
                    return
        key = request_key(msg) if isinstance(msg, FORWARDABLE) else \
            msg.target if isinstance(msg, FindNode | FindTags | GetCerts) else None
        kind = msg.kind.name if isinstance(msg, sm.Store) else ""
        log.append(Seen(nid, clock.now(), type(msg).__name__, "direct", peer.node_id, None,
                        len(wire.encode(msg)), key, kind=kind))

    node.relay.observe = on_sighting
    node.on_request = on_request


def _client(agent: MailAgent) -> bytes:
    return agent.net.local_cert.node_id  # the session's client node (through its go-betweens)


def _lookup_client(agent: MailAgent) -> bytes:
    """The session's other key: its DHT lookups (bootstrap, go-betweens' random keys)."""
    store = agent.net
    assert isinstance(store, AnonymousStore), "the demo's sessions are anonymous"
    dht = store.gb.dht
    assert isinstance(dht, DhtNode)
    return dht.node_id


async def run_mail(config: MailConfig, say: Callable[[str], None]) -> MailRun:
    params = testnet(puzzle_bits=PUZZLE_BITS, k=8)
    clock, rng = SystemClock(), SystemRng()
    log: list[Seen] = []
    with tempfile.TemporaryDirectory(prefix="anonmail-demo-") as tmp:
        try:
            return await _network(config, params, clock, rng, log, Path(tmp), say)
        except BaseExceptionGroup as group:
            # One error (a step's timeout, a UserError) as itself, not wrapped in the nursery's
            # group: the command line shows a UserError as one line. Several stay a group.
            if len(group.exceptions) == 1 and not isinstance(group.exceptions[0],
                                                             BaseExceptionGroup):
                raise group.exceptions[0] from None
            raise


async def _network(config: MailConfig, params: NetworkParams, clock: SystemClock,
                   rng: SystemRng, log: list[Seen], root: Path,
                   say: Callable[[str], None]) -> MailRun:
    t0 = time.perf_counter()
    nodes: list[Node] = []
    async with trio.open_nursery() as nursery:
        for _ in range(config.nodes):
            boot = (nodes[0].endpoint,) if nodes and nodes[0].endpoint else ()
            # port 0: the OS picks a free port; the node puts the real one in its cert
            node = Node(ids.grind_node_key(params.puzzle_bits, rng), params, clock, rng,
                        listen=Endpoint("127.0.0.1", 0), bootstrap=boot)
            with trio.fail_after(STEP_TIMEOUT):
                await nursery.start(node.run)
            nodes.append(node)
        for node in nodes:  # a second pass: early joiners learn of the later ones
            with trio.fail_after(STEP_TIMEOUT):
                await node.join()
        for node in nodes:
            _watch(node, log, clock)
        say(f"{len(nodes)} nodes up on 127.0.0.1 in {time.perf_counter() - t0:.1f} s (node "
            f"ids solve the static puzzle at {params.puzzle_bits} bits; r = "
            f"{params.replication})")
        run = await _mail(nodes, params, config, clock, rng, log, root, say)
        nursery.cancel_scope.cancel()
    return run


async def _mail(nodes: list[Node], params: NetworkParams, config: MailConfig,
                clock: SystemClock, rng: SystemRng, log: list[Seen], root: Path,
                say: Callable[[str], None]) -> MailRun:
    options = DEFAULT.replace(delay_mean=config.delay_mean)
    people = {name: AddressIdentity.create_anon(name, rng, clock.now())
              for name in ("alice", "bob", "carol")}
    async with AsyncExitStack() as stack:
        agents: dict[str, MailAgent] = {}
        for i, (name, ident) in enumerate(people.items()):
            entry = nodes[(3 * i + 1) % len(nodes)].endpoint  # each joins through another node
            assert entry is not None
            cfg = AgentConfig(params, (entry,), frozenset(), root / name, options=options)
            with trio.fail_after(STEP_TIMEOUT):
                agents[name] = await stack.enter_async_context(
                    session(ident, cfg, clock, rng, anonymous=True))
        alice, bob, carol = agents["alice"], agents["bob"], agents["carol"]
        clients = {n: _client(a) for n, a in agents.items()}
        lookups = {n: _lookup_client(a) for n, a in agents.items()}
        for name, whose in (("alice", "her"), ("bob", "his"), ("carol", "her")):
            say(f"{name.capitalize():5} {agents[name].address}  ({whose} agent: client node "
                f"{ids.short(clients[name])}, lookups as {ids.short(lookups[name])})")
        for who in (alice, bob, carol):
            with trio.fail_after(STEP_TIMEOUT):
                receipts = await who.publish_cert()
            say(f"{who.address.split('@')[0].capitalize()} published the address certificate "
                f"and inbox policy (permits required) anonymously: {len(receipts)} signed "
                "receipts")
        await _spam(alice, bob, params, say)

        photo = rng.bytes(config.attachment)
        msg = alice.compose([bob.address, carol.address], subject="Photo from the trip",
                            body="Here it is. Nobody on the way knows it came from me.\n",
                            attachments=[Attachment("photo.jpg", photo, "image/jpeg")])
        with trio.fail_after(STEP_TIMEOUT):
            asked = await alice.send_composed(msg)
        say("\nAlice writes to Bob and Carol for the first time:")
        for address, why in asked.waiting.items():
            say(f"  {address}: {why}; the message waits in her Outbox")
        for name in ("bob", "carol"):
            with trio.fail_after(STEP_TIMEOUT):
                await agents[name].check()
            for c in agents[name].permits.book.requests():
                note = c.request.note if c.request else ""
                say(f"{name.capitalize()} reviews a request to write from {c.address} "
                    f"({note!r}) and allows it")
                with trio.fail_after(STEP_TIMEOUT):
                    await agents[name].permits.allow(c.address)
        with trio.fail_after(STEP_TIMEOUT):
            await alice.check(flush=False)  # the grants come in ...
        send_start = clock.now()
        with trio.fail_after(STEP_TIMEOUT):
            flushed = await alice.flush()  # ... and the message goes out by itself
        send_end = clock.now()
        report = next((r for r in flushed if r.message_id == msg.message_id), asked)
        say(f"\nAlice's next session saw both permits; her Outbox sent {len(msg.data):,} bytes "
            f"(photo.jpg, {len(photo):,} bytes) by itself, anonymously, in "
            f"{send_end - send_start:.1f} s, stored once for both:")
        say(f"  body: {len(report.body.receipts)} verified receipts"
            + (f"; {len(report.fragments)} fragments: "
               + ", ".join(str(len(f.receipts)) for f in report.fragments) + " receipts"
               if report.fragments else " (one object, no fragments)"))
        for address, step in report.inboxes.items():
            state = "delivered" if address in report.delivered else "NOT delivered"
            say(f"  to {address}: {state}, {len(step.receipts)} verified inbox receipts; "
                f"body: {len(report.body.receipts)}")

        run = MailRun(config, [n.node_id for n in nodes], clients, lookups,
                      _labels(people, msg.message_id), log, send_start, send_end, {}, report)
        for name in ("bob", "carol"):
            start = clock.now()
            with trio.fail_after(STEP_TIMEOUT):
                got = await _read(agents[name], name, photo)
            run.reads[name] = (start, clock.now())
            run.readings.append(got)
            say(f"{name.capitalize()} checked and read anonymously: \"{got.subject}\" from "
                f"{got.sender}\n      {got.attachment}, {got.size:,} bytes"
                f"{f' from {got.fragments} fragments' if got.fragments else ''}: "
                + ("the bytes match what Alice attached" if got.matches else
                   "THE BYTES DIFFER from what Alice attached"))
        return run


async def _spam(sender: MailAgent, victim: MailAgent, params: NetworkParams,
                say: Callable[[str], None]) -> None:
    """A stranger's append straight into the victim's inbox, without a permit."""
    with trio.fail_after(STEP_TIMEOUT):
        placed = await append_replicated(sender.net, sender.dht, ids.inbox_key(victim.address),
                                         b"BUY NOW " * 64, 3600, None, params.replication,
                                         rounds=1)
    codes = sorted({e.code.name for e in placed.refusals.values()})
    say(f"A spammer appends straight to Bob's inbox without a permit: {len(placed.receipts)} "
        f"of {params.replication} replicas took it (refused: {', '.join(codes) or 'none'})")


async def _read(agent: MailAgent, name: str, photo: bytes) -> Reading:
    await agent.check()
    got = await agent.retrieve_all()
    if len(got) != 1:
        return Reading(name, "(nothing)", "", "", 0, False, 0)
    parsed = email.message_from_bytes(got[0].data, policy=email.policy.default)
    parts = list(parsed.iter_attachments())
    payload = parts[0].get_payload(decode=True) if parts else None
    data = payload if isinstance(payload, bytes) else b""
    filename = (parts[0].get_filename() or "") if parts else ""
    return Reading(name, str(parsed["Subject"]), str(parsed["From"]), filename, len(data),
                   data == photo, got[0].fragments)


def _labels(people: dict[str, AddressIdentity], message_id: str) -> dict[bytes, str]:
    out = {ids.body_key(message_id): "the mail's body"}
    for name, ident in people.items():
        out[ids.inbox_key(ident.address)] = f"{name.capitalize()}'s inbox"
        out[ident.cert.key] = f"{name.capitalize()}'s address cert"
    return out
