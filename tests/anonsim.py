"""Anonymous agents on the mail simulation (tests/mailsim.py) for tests/test_anon_*.py.

`anon_agent` gives an agent on a simulated node whose store client goes through go-betweens
(anon/client.py `AnonymousStore`); `Watch` records, on every node, which node sent it which
request (what a storage node, an inbox node, X or Z can see of its peers).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mailsim import TRUSTED, Sim

from anonmail.anon.client import AnonymousStore
from anonmail.anon.gobetweens import GoBetweens
from anonmail.anon.options import AnonOptions
from anonmail.mail.identity import AddressIdentity
from anonmail.mail.permits import introduce
from anonmail.mail.user_agent import MailAgent
from anonmail.net.base import Peer


def anonymous_store(sim: Sim, i: int, name: str,
                    options: AnonOptions | None = None) -> AnonymousStore:
    x = sim.node(i)
    gb = GoBetweens(x.net, x.dht, sim.s.params, sim.s.clock, sim.s.rng.fork(f"gb-{name}"),
                    options=options or AnonOptions())
    return AnonymousStore(gb)


def anon_agent(sim: Sim, i: int, identity: AddressIdentity, name: str,
               options: AnonOptions | None = None,
               knows: Sequence[MailAgent] = ()) -> tuple[MailAgent, AnonymousStore]:
    """An anonymous agent; `knows`: agents it starts as contacts of (as after RTS/CTS)."""
    store = anonymous_store(sim, i, name, options)
    agent = MailAgent(identity, store, store, sim.tmp / name, sim.s.params, sim.s.clock,
                      sim.s.rng.fork(f"agent-{name}"), trusted_cas=TRUSTED)
    for other in knows:
        introduce(agent.permits, other.permits)
    return agent, store


@dataclass
class Watch:
    """Per node: (sender node id, request type name) of every request it answered."""

    seen: dict[bytes, list[tuple[bytes, str]]] = field(default_factory=lambda: defaultdict(list))

    def install(self, sim: Sim) -> None:
        for x in sim.s.nodes:
            handler = x.services.handle
            nid = x.node_id

            async def watched(peer: Peer, msg: Any, handler: Any = handler,
                              nid: bytes = nid) -> Any:
                self.seen[nid].append((peer.node_id, type(msg).__name__))
                return await handler(peer, msg)

            x.net.set_handler(watched)

    def who_sent(self, kinds: set[str]) -> set[bytes]:
        return {peer for got in self.seen.values() for peer, kind in got if kind in kinds}

    def saw_from(self, sender: bytes) -> dict[bytes, set[str]]:
        out: dict[bytes, set[str]] = defaultdict(set)
        for nid, got in self.seen.items():
            for peer, kind in got:
                if peer == sender:
                    out[nid].add(kind)
        return out
