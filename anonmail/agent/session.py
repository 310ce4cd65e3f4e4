"""A user agent session on the real network: what each mail command runs.

The agent is a DHT *client*: it joins no routing table (its certificate has no endpoints) and
uses a fresh, puzzle-solving key for every session, so storage nodes cannot link one session of
a user to the next by its transport key. It bootstraps through the user's own node when one runs
on this machine (the config's `listen`, dialled on loopback) and through the configured
bootstrap nodes, then does its work through `mail.MailAgent` and closes its connections.

Invariants: the address key is opened only here, in memory, for the session; nothing it sends
is in the clear (every link is the authenticated, encrypted handshake of net/tcp.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import trio

from anonmail.anon.client import AnonymousStore
from anonmail.anon.gobetweens import GoBetweens, load_state, save_state
from anonmail.anon.options import DEFAULT, AnonOptions
from anonmail.clock import Clock
from anonmail.dht.dht_node import DhtNode
from anonmail.errors import TransportError, UserError, network_name
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.user_agent import MailAgent
from anonmail.net.tcp import TcpNetwork
from anonmail.records import ids
from anonmail.records.certs import CertCache, Endpoint, NodeCert
from anonmail.records.params import NetworkParams
from anonmail.rng import Rng

BOOTSTRAP_TIMEOUT = 30.0
REFILL_TIMEOUT = 20.0


@dataclass(frozen=True)
class AgentConfig:
    params: NetworkParams
    entry_points: tuple[Endpoint, ...]  # own node first, then the bootstrap list
    trusted_cas: frozenset[bytes]
    mail_dir: Path
    guard_file: Path | None = None  # where the anonymous sender keeps its guard X
    options: AnonOptions = DEFAULT


def own_node_endpoint(listen: Endpoint) -> Endpoint:
    """Where to reach our own node from this machine: its listen address, or loopback when it
    listens on every interface."""
    ip = ipaddress.ip_address(listen.host)
    if ip.is_unspecified:
        return Endpoint("::1" if ip.version == 6 else "127.0.0.1", listen.port)
    return listen


def unreachable(entry_points: Sequence[Endpoint], params: NetworkParams,
                other_networks: Mapping[str, bytes]) -> str:
    """The line for a session that reached no node: a node that said it is on another network
    (net/tcp.py `other_networks`) is named, else every endpoint tried, with this home's
    network, which a node on another network refuses."""
    ours = network_name(params.network_id)
    for ep in entry_points:
        theirs = other_networks.get(str(ep))
        if theirs is not None:
            return (f"the bootstrap node {ep} is on another network ({network_name(theirs)}; "
                    f"this home is on {ours}): check [network] name in config.toml")
    where = ", ".join(str(e) for e in entry_points) or "none configured"
    return (f"cannot reach the network (tried {where}; this home is on {ours}): start your "
            "node with `anonmail node`, or add a bootstrap node of that network to config.toml")


@asynccontextmanager
async def session(identity: AddressIdentity, config: AgentConfig, clock: Clock,
                  rng: Rng, *, anonymous: bool = True) -> AsyncIterator[MailAgent]:
    """Join the network as a client and yield a MailAgent; connections close on exit.

    `anonymous` (the default): every storage request of the agent (certificates, bodies,
    inbox appends, reads and acknowledgements) goes through go-betweens (anon/client.py), so
    storage and inbox nodes never see this session's node; the guard X is kept in
    `config.guard_file` across sessions, and the circuits use a second transport key that
    only X sees (the DHT lookups use the first). Otherwise the agent talks to them directly."""
    params = config.params
    key = ids.grind_node_key(params.puzzle_bits, rng)
    certs = CertCache()  # one per session: a certificate is verified once (issue 11)
    net = TcpNetwork(key, params, clock, rng, cert_cache=certs)
    net.cert = NodeCert.issue(key, (), clock.now(), params)
    dht = DhtNode(net, key, params, clock, rng, certs)
    try:
        with trio.move_on_after(BOOTSTRAP_TIMEOUT):
            with suppress(TransportError):
                await dht.bootstrap(config.entry_points)
        if not dht.contacts():
            raise UserError(unreachable(config.entry_points, params, net.other_networks))
        if not anonymous:
            yield MailAgent(identity, net, dht, config.mail_dir, params, clock, rng,
                            trusted_cas=config.trusted_cas)
            return
        # Two identities: the lookups above (bootstrap, and the random keys go-betweens are
        # drawn from) use `key`; the circuits use `sender`, which only the guard X ever sees.
        # So the nodes a lookup queried cannot tie it to anything the session sends.
        sender = ids.grind_node_key(params.puzzle_bits, rng)
        circuits = TcpNetwork(sender, params, clock, rng, cert_cache=certs)
        circuits.cert = NodeCert.issue(sender, (), clock.now(), params)
        gb = GoBetweens(circuits, dht, params, clock, rng, options=config.options,
                        cert_cache=certs)
        if config.guard_file is not None:
            load_state(config.guard_file, gb)
        store = AnonymousStore(gb)
        try:
            yield MailAgent(identity, store, store, config.mail_dir, params, clock, rng,
                            trusted_cas=config.trusted_cas)
            # Nodes for the next session's channels, found now so they are not found just
            # before they are used (anon/gobetweens.py `refill`).
            with trio.move_on_after(REFILL_TIMEOUT), suppress(TransportError, UserError):
                await gb.refill()
        finally:
            if config.guard_file is not None:
                save_state(config.guard_file, gb)
            with trio.CancelScope(shield=True):
                await store.aclose()
                await circuits.aclose()
    finally:
        with trio.CancelScope(shield=True):
            await net.aclose()
