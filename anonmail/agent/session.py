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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import trio

from anonmail.clock import Clock
from anonmail.dht.dht_node import DhtNode
from anonmail.errors import TransportError, UserError
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.user_agent import MailAgent
from anonmail.net.tcp import TcpNetwork
from anonmail.records import ids
from anonmail.records.certs import CertCache, Endpoint, NodeCert
from anonmail.records.params import NetworkParams
from anonmail.rng import Rng

BOOTSTRAP_TIMEOUT = 30.0


@dataclass(frozen=True)
class AgentConfig:
    params: NetworkParams
    entry_points: tuple[Endpoint, ...]  # own node first, then the bootstrap list
    trusted_cas: frozenset[bytes]
    mail_dir: Path


def own_node_endpoint(listen: Endpoint) -> Endpoint:
    """Where to reach our own node from this machine: its listen address, or loopback when it
    listens on every interface."""
    ip = ipaddress.ip_address(listen.host)
    if ip.is_unspecified:
        return Endpoint("::1" if ip.version == 6 else "127.0.0.1", listen.port)
    return listen


@asynccontextmanager
async def session(identity: AddressIdentity, config: AgentConfig, clock: Clock,
                  rng: Rng) -> AsyncIterator[MailAgent]:
    """Join the network as a client and yield a MailAgent; connections close on exit."""
    params = config.params
    key = ids.grind_node_key(params.puzzle_bits, rng)
    net = TcpNetwork(key, params, clock, rng, cert_cache=CertCache())
    net.cert = NodeCert.issue(key, (), clock.now(), params)
    dht = DhtNode(net, key, params, clock, rng, CertCache())
    try:
        with trio.move_on_after(BOOTSTRAP_TIMEOUT):
            with suppress(TransportError):
                await dht.bootstrap(config.entry_points)
        if not dht.contacts():
            where = ", ".join(str(e) for e in config.entry_points) or "none configured"
            raise UserError(f"cannot reach the network (tried {where}): start your node with "
                            "`anonmail node` or add a bootstrap node to config.toml")
        yield MailAgent(identity, net, dht, config.mail_dir, params, clock, rng,
                        trusted_cas=config.trusted_cas)
    finally:
        with trio.CancelScope(shield=True):
            await net.aclose()
