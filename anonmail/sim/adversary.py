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

from anonmail.dht.messages import FindNode, FindTags, GetCerts, Nodes
from anonmail.dht.routing import Contact
from anonmail.dht.tags import answer_naming
from anonmail.net.base import Handler, Peer
from anonmail.sim.scenario import IdIndex, Scenario, SimNode


class Collusion:
    """A set of colluding hostile nodes installed on a scenario's world."""

    def __init__(self, scenario: Scenario, members: Iterable[SimNode]) -> None:
        self.scenario = scenario
        self.members = list(members)
        self.ids = frozenset(node.node_id for node in self.members)
        self.index = IdIndex(node.contact for node in self.members)
        self._last: tuple[bytes, int, list[Contact]] | None = None

    def lie(self, target: bytes, count: int) -> list[Contact]:
        """The `count` colluders closest to `target`. The same for every colluder, so the last
        one is kept: the colluders a lookup meets are asked the same question."""
        last = self._last
        if last is not None and last[0] == target and last[1] == count:
            return last[2]
        near = self.index.closest(target, count)
        self._last = (target, count, near)
        return near

    def reply(self, target: bytes, count: int) -> Nodes:
        """The lie as a FindNode answer: the colluders' certificates."""
        return Nodes(tuple(c.cert for c in self.lie(target, count)))

    def handler(self, honest: Handler) -> Handler:
        async def hostile(peer: Peer, msg: Any) -> Any:
            if isinstance(msg, FindTags | GetCerts):  # tags made once, with the contacts
                return answer_naming(self.lie(msg.target, msg.count), msg)
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
