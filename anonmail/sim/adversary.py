"""Adversaries for simulations: alternative handlers, never monkey-patches (DESIGN.md §1, §9).

`Collusion` is the lookup adversary of S/Kademlia (Baumgart & Mies 2007, §5): a fraction of the
nodes are hostile and collude. A hostile node behaves in every way but one: asked FIND_NODE
(either form, dht/tags.py), it names only colluding nodes, the ones closest to the target,
trying to pull the lookup into a region it controls. Its lies are well-formed (real, validly
signed certs of real colluders, no more than asked for), so signature checks alone do not catch
them; disjoint paths do. Hostile nodes sit at random places in the id space, as the static
puzzle forces (§4.1).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from anonmail.dht.messages import FindNode, FindTags, GetCerts, Nodes, Tags
from anonmail.dht.routing import Contact
from anonmail.dht.tags import split
from anonmail.net.base import Handler, Peer
from anonmail.sim.scenario import IdIndex, Scenario, SimNode


class Collusion:
    """A set of colluding hostile nodes installed on a scenario's world."""

    def __init__(self, scenario: Scenario, members: Iterable[SimNode]) -> None:
        self.scenario = scenario
        self.members = list(members)
        self.ids = frozenset(node.node_id for node in self.members)
        self.index = IdIndex(node.contact for node in self.members)
        self._last: tuple[bytes, int, Nodes, Tags, list[Contact]] | None = None

    def reply(self, target: bytes, count: int) -> Nodes:
        """The lie: the `count` colluders closest to `target`. The same for every colluder, so
        the last one is kept: the colluders a lookup meets are asked the same question."""
        return self._lie(target, count)[0]

    def _lie(self, target: bytes, count: int) -> tuple[Nodes, Tags, list[Contact]]:
        """The lie in both forms (dht/tags.py): certificates, the tags naming them, and the
        colluders' contacts (whose tags are made once, with them)."""
        last = self._last
        if last is not None and last[0] == target and last[1] == count:
            return last[2], last[3], last[4]
        near = self.index.closest(target, count)
        lie = Nodes(tuple(c.cert for c in near))
        named = Tags(b"".join(c.tag for c in near))
        self._last = (target, count, lie, named, near)
        return lie, named, near

    def handler(self, honest: Handler) -> Handler:
        async def hostile(peer: Peer, msg: Any) -> Any:
            if isinstance(msg, FindTags):
                return self._lie(msg.target, msg.count)[1]
            if isinstance(msg, GetCerts):
                want = frozenset(split(msg.want))
                return Nodes(tuple(c.cert for c in self._lie(msg.target, msg.count)[2]
                                   if c.tag in want))
            if isinstance(msg, FindNode):
                return self.reply(msg.target, msg.count)
            return await honest(peer, msg)

        return hostile

    def install(self) -> Collusion:
        for node in self.members:
            self.scenario.world.set_handler(node.node_id, self.handler(node.services.handle))
        return self

    def uninstall(self) -> None:
        for node in self.members:
            self.scenario.world.set_handler(node.node_id, node.services.handle)

    def honest(self) -> list[SimNode]:
        return [node for node in self.scenario.nodes if node.node_id not in self.ids]
