"""Fault reflection over real TCP (issue 7 item 1, must-show): a hostile node answers every
FIND_NODE with valid certificates of its own making whose endpoint is an honest node's. After
100 lookups through the hostile node, the honest node (the victim) has not been charged a fault
nor banned by any peer, its own requests are admitted everywhere, and it answers lookups.

Real `Node`s on 127.0.0.1 in this process. Judged both ways a node can judge a loopback peer: by
address (the worst case: everyone here is 127.0.0.1, so a single fault charged to the address
would count against the victim too) and by key (how a testnet judges).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from anonmail.clock import SystemClock
from anonmail.dht.messages import FindNode, FindTags, GetCerts, Nodes, Ping, Pong
from anonmail.dht.routing import Contact
from anonmail.dht.tags import answer_naming
from anonmail.net.admission import AdmissionLimits
from anonmail.net.base import Peer
from anonmail.node.process import Node
from anonmail.records import ids
from anonmail.records import params as netparams
from anonmail.records.certs import Endpoint, NodeCert
from anonmail.rng import SeededRng

PARAMS = netparams.testnet(puzzle_bits=2, k=8)
HONEST = 6  # the victim is honest node 0
LOOKUPS = 100
FORGED = 40  # certificates the liar made, each naming the victim's endpoint

BY_ADDRESS = AdmissionLimits(shared_loopback=False, max_per_source=256,
                             handshake_rate=1e6, handshake_burst=1e6)
BY_KEY = AdmissionLimits(shared_everywhere=True)


@pytest.mark.threat("T-FAULT-REFLECT")
@pytest.mark.parametrize("admission", [BY_ADDRESS, BY_KEY], ids=["by-address", "by-key"])
async def test_hundred_lookups_through_a_liar_leave_the_victim_admitted(
        admission: AdmissionLimits) -> None:
    clock, rng = SystemClock(), SeededRng(7)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nodes: list[Node] = []
            for i in range(HONEST + 1):
                boot = (nodes[0].endpoint,) if nodes and nodes[0].endpoint else ()
                node = Node(ids.grind_node_key(PARAMS.puzzle_bits, rng.fork(f"n{i}")), PARAMS,
                            clock, rng.fork(f"r{i}"), listen=Endpoint("127.0.0.1", 0),
                            bootstrap=boot, admission=admission)
                if i == HONEST:
                    liar = node
                    lie = Liar(nodes[0], rng)
                    node.handle = lie.handle  # type: ignore[method-assign]
                await nursery.start(node.run)
                nodes.append(node)
            honest, victim = nodes[:HONEST], nodes[0]
            for node in honest:
                await node.join()
                node.dht.add_contacts([liar.cert])

            askers = honest[1:]
            for n in range(LOOKUPS):
                asker = askers[n % len(askers)]
                asker.dht.add_contacts([liar.cert])  # a liar keeps being re-learned
                before = lie.answered
                await asker.lookup(rng.bytes(32))
                assert lie.answered > before, "the lookup went through the liar"

            bad = sum(node.dht.stats.bad_contacts for node in askers)
            print(f"\n{LOOKUPS} lookups through the liar ({lie.answered} FIND_NODE answers, "
                  f"{lie.named} forged contacts named): {bad} bad contacts dropped; victim "
                  f"answered {victim.net.inbound_connections} connections now open")
            for node in nodes[1:]:
                unit = node.net.admission.unit_of("127.0.0.1", victim.node_id)
                now = trio.current_time()
                assert node.net.faults.get(unit, 0) == 0, "a fault reflected onto the victim"
                assert not node.net.admission.banned(unit, now)
            for node in honest[1:]:
                assert await victim.dht.ping(node.cert), "the victim is admitted by every peer"
                found = await node.lookup(victim.node_id)
                assert victim.node_id in {c.node_id for c in found.nodes}
            assert victim.dht.stats.handled > 0  # and it answers lookups
            nursery.cancel_scope.cancel()


class Liar:
    """Answers FIND_NODE with the forged certificates nearest the target, and Ping."""

    def __init__(self, victim: Node, rng: SeededRng) -> None:
        assert victim.endpoint is not None
        now = SystemClock().now()
        self.forged = [NodeCert.issue(ids.grind_node_key(PARAMS.puzzle_bits, rng.fork(f"f{i}")),
                                      (victim.endpoint,), now, PARAMS) for i in range(FORGED)]
        self.answered = 0
        self.named = 0

    async def handle(self, peer: Peer, msg: Any) -> Any:
        if isinstance(msg, FindNode | FindTags | GetCerts):
            ranked = sorted(self.forged, key=lambda c: ids.distance(c.node_id, msg.target))
            if isinstance(msg, GetCerts):
                return answer_naming([Contact.of(c) for c in ranked[:msg.count]], msg)
            self.answered += 1
            self.named += min(msg.count, len(ranked))
            return Nodes(tuple(ranked[:msg.count])) if isinstance(msg, FindNode) else \
                answer_naming([Contact.of(c) for c in ranked[:msg.count]], msg)
        if isinstance(msg, Ping):
            return Pong()
        raise NotImplementedError
