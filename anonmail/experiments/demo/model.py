"""What the demo's nodes saw, as records, and the roles and verdicts computed from them.

Every node of the demo network reports what reaches it (run.py installs the hooks): as relay or
circuit end, the relay's `Sighting`s (anon/relay.py); as a node answering a request directly,
the request's type, its sender's node id, its size and the key it names. A `Seen` keeps exactly
that: ids, sizes, times and the storage kind a request declares, never a byte of content.

Roles are read off the records, the way an observer would, with no help from the senders: in a
phase where one person's agent is active, X is every node that relayed a circuit whose previous
hop is that agent's client node; Y is an end asked to `Locate` by an X; Z is an end that
forwarded storage requests; W is an end that looked keys up and forwarded nothing; storage and
inbox nodes are those that answered a storage request of a Z or W. One node may hold several
roles in a phase (each circuit draws its ends afresh). `appears_in` scans every record of every
node for a node id (as sender or as next hop), which is what the verdict lines print.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# What a storage or inbox node answers (store/messages.py) and what a circuit's end does.
STORAGE_OPS = frozenset({"Store", "Append", "Fetch", "Read", "Ack", "Delete"})
END_LOOKUPS = frozenset({"FindNodes"})
# The DHT's own requests: every client sends them.
ROUTING = frozenset({"FindTags", "GetCerts", "FindNode", "Ping"})


@dataclass(frozen=True, slots=True)
class Seen:
    """One thing one node saw (module docstring)."""

    node: bytes  # the node that saw it
    time: float  # wall-clock seconds
    what: str  # "open", "cell", a circuit op ("Locate", "FindNodes", "Store", ...), a request
    via: str  # "relay" or "end" (of a circuit), "direct" (a request this node answered)
    peer: bytes  # the node id that sent it
    next: bytes | None = None  # where a relay passed it on
    size: int = 0  # bytes received
    key: bytes | None = None  # the key an op or request names
    targets: int = 0  # nodes a forwarded request went to
    kind: str = ""  # the object kind a Store declares ("BODY", "FRAGMENT", "CERT")


@dataclass
class Phase:
    """One person's activity: the records of [start, end) and the roles found in them."""

    who: str
    client: bytes  # the person's agent's client node id
    start: float
    end: float
    seen: list[Seen]
    guards: list[bytes] = field(default_factory=list)  # X
    middles: list[bytes] = field(default_factory=list)  # relays after an X (hops = 2)
    locators: list[bytes] = field(default_factory=list)  # Y (a node may hold several roles)
    anonymizers: list[bytes] = field(default_factory=list)  # Z
    checkers: list[bytes] = field(default_factory=list)  # W
    storage: list[bytes] = field(default_factory=list)  # storage and inbox nodes

    def at(self, node: bytes) -> list[Seen]:
        return [s for s in self.seen if s.node == node]

    @property
    def ends(self) -> list[bytes]:
        return _ordered([*self.locators, *self.anonymizers, *self.checkers])

    def roles(self, node: bytes) -> str:
        """The node's roles in this phase, e.g. "Z+Y"."""
        tags = [tag for tag, group in (("X", self.guards), ("M", self.middles),
                                       ("Z", self.anonymizers), ("W", self.checkers),
                                       ("Y", self.locators)) if node in group]
        return "+".join(tags)


def _ordered(ids: Iterable[bytes]) -> list[bytes]:
    return list(dict.fromkeys(ids))


def find_roles(who: str, client: bytes, seen: Sequence[Seen], start: float,
               end: float) -> Phase:
    """The roles of one phase, from the records alone (module docstring)."""
    window = [s for s in seen if start <= s.time < end]
    p = Phase(who, client, start, end, window)
    p.guards = _ordered(s.node for s in window if s.via == "relay" and s.peer == client)
    p.middles = _ordered(s.node for s in window
                         if s.via == "relay" and s.peer in p.guards and s.node not in p.guards)
    before = {*p.guards, *p.middles}
    ends = [s for s in window if s.via == "end" and s.peer in before]
    ops: dict[bytes, set[str]] = defaultdict(set)
    for s in ends:
        ops[s.node].add(s.what)
    p.locators = _ordered(s.node for s in ends if "Locate" in ops[s.node])
    p.anonymizers = _ordered(s.node for s in ends if ops[s.node] & STORAGE_OPS)
    p.checkers = _ordered(s.node for s in ends if "FindNodes" in ops[s.node]
                          and not ops[s.node] & STORAGE_OPS)
    zw = {*p.anonymizers, *p.checkers}
    p.storage = _ordered(s.node for s in window
                         if s.via == "direct" and s.what in STORAGE_OPS and s.peer in zw)
    return p


@dataclass(frozen=True)
class Appearance:
    """Where one client node id shows up in what the nodes saw."""

    client: bytes
    views: dict[bytes, Counter[str]]  # node -> what it saw from (or towards) the client
    routing: dict[bytes, Counter[str]]  # node -> routing requests (FindNode, Ping) only
    routing_keys: frozenset[bytes]  # the keys the client's FindNodes named
    mail_keys_named: frozenset[bytes]  # those of them that are keys of the mail


def mail_keys(seen: Iterable[Seen]) -> frozenset[bytes]:
    """Every key a storage request or a circuit's lookup named: the keys of the mail."""
    return frozenset(s.key for s in seen if s.key is not None and
                     (s.what in STORAGE_OPS or s.what in END_LOOKUPS))


def appears_in(client: bytes, seen: Sequence[Seen]) -> Appearance:
    """Every node that saw `client` as a sender or next hop, by what it saw (module
    docstring); routing requests apart, with a check of the keys they named."""
    views: dict[bytes, Counter[str]] = defaultdict(Counter)
    routing: dict[bytes, Counter[str]] = defaultdict(Counter)
    keys = set()
    for s in seen:
        if client not in (s.peer, s.next):
            continue
        if s.via == "direct" and s.what in ROUTING:
            routing[s.node][s.what] += 1
            if s.key is not None:
                keys.add(s.key)
        else:
            views[s.node][s.what] += 1
    return Appearance(client, dict(views), dict(routing), frozenset(keys),
                      frozenset(keys) & mail_keys(seen))


def size_profile(seen: Iterable[Seen]) -> Counter[int]:
    """How many records of each size (a padded cell's size says only its class)."""
    return Counter(s.size for s in seen)
