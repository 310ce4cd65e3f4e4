"""Short tags naming exact NodeCerts, so that FIND_NODE answers do not resend what the asker has.

A FIND_NODE answer used to carry a full certificate for every contact it named, though a lookup
meets the same few nodes near its key again and again: ~95% of the bytes of a send were
certificates the asker already held (issue 11). Two remedies, both here:

* the lookup's form (`FindTags` -> `Tags`, then `GetCerts` -> `Nodes`): the answer names every
  contact by tag; the asker resolves each tag in its `TagIndex` (the verified contacts it has
  met, bounded) and asks the same answerer for the certificates of the others only. One lookup
  fetches a certificate once (`InFlight`): d paths meet the same neighbourhood at once, and
  under the `have` form below each answer resent what a concurrent answer was already sending
  (measured: ~58 certificates per lookup for ~10 new ones, 1,000 nodes, d = 8);
* the `have` form (`FindNode.have` -> `Nodes.known`, bench rpc and simple clients): the asker
  lists the tags of the certificates it holds nearest the target (`Known`, at most `MAX_HAVE`),
  and the answer carries a full certificate only for contacts not listed.

A tag is the first `TAG_BYTES` (8) of H("node-cert-tag", the certificate's canonical bytes): it
names one version of one certificate, so a renewed certificate (new endpoints, new expiry) is
fetched in full by an asker holding only the old one.

Invariants (S/Kademlia §4.1, signed contacts only):
* a tag resolves only to a certificate the asker verified: one in its index, or one fetched for
  that tag whose own tag matches. A fetched certificate that was not asked for, or does not
  verify, is the answerer's fault. So nothing unsigned ever enters a lookup or a routing table;
* 64-bit tags: making a certificate whose tag equals a given one costs ~2^64 hashes (plus the
  node-id puzzle per try), so whoever delivers the bytes of a tag, the contact is exactly the
  one the naming answerer meant; a path never takes another path's contact in its place;
* a certificate the answerer named but does not send when asked is dropped from its answer:
  a round trip lost, bounded by `count` per answer, and never a contact;
* in the `have` form, a tag resolves only if the asker listed it in that very request; an
  answer naming any other tag is the answerer's fault;
* what the asker's messages tell the answerer: which of the contacts it was just told about it
  did not hold (`GetCerts`), or which it holds near the key (`have`). Lookups made for an
  anonymous sender run at the anonymizer (anon/), so they reveal the anonymizer's contacts,
  never the sender's.

A contact's tag is made once, with the contact (`Contact.tag`, dht/contacts.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence

import trio

from anonmail.dht.contacts import Contact, cert_tag
from anonmail.dht.messages import MAX_HAVE, TAG_BYTES, GetCerts, Nodes, Tags
from anonmail.errors import RemoteProtocolError
from anonmail.records.certs import NodeCert

__all__ = ["HAVE_PER_RESULT", "MAX_HAVE", "TAG_BYTES", "InFlight", "Known", "TagIndex",
           "answer_naming", "answer_parts", "split", "tag_of"]

INDEX_SIZE = 4096  # verified contacts a node keeps by tag, at least (a 4,000-node network, whole)

# A lookup for k nodes lists at most HAVE_PER_RESULT * k tags (and never more than MAX_HAVE):
# answers name k contacts near the key, and a longer list costs more request bytes than the
# certificates it spares. At k = 8, 1,000 nodes: 2k 2.27x the floor, 3k 2.27x, 4k 2.30x, 8k
# 2.36x (`anonmail bench mail --sim-nodes 1000`); at k = 20, 64 was the best (docs/performance.md).
HAVE_PER_RESULT = 3

tag_of = cert_tag  # the tag of one exact certificate (a Contact carries its own: Contact.tag)


def split(packed: bytes) -> list[bytes]:
    """The tags in a `have` or `known` field; raises RemoteProtocolError if it is not whole
    tags."""
    if len(packed) % TAG_BYTES:
        raise RemoteProtocolError(f"{len(packed)} bytes is not a whole number of tags")
    return [packed[i:i + TAG_BYTES] for i in range(0, len(packed), TAG_BYTES)]


class Known:
    """The verified contacts one lookup holds, nearest its key first, and the `have` list they
    make (module docstring)."""

    __slots__ = ("_by_tag", "_have", "_limit", "_listed", "_near", "_t")

    def __init__(self, key: bytes, contacts: Iterable[Contact] = (), limit: int = MAX_HAVE
                 ) -> None:
        self._t = int.from_bytes(key, "big")
        self._limit = max(0, min(MAX_HAVE, limit))
        self._near: list[tuple[int, bytes]] = []  # (distance to the key, tag), nearest first
        self._by_tag: dict[bytes, Contact] = {}
        self._have: bytes | None = b""
        self._listed: tuple[bytes, frozenset[bytes]] = (b"", frozenset())  # have, its tags
        self.add(contacts)

    def add(self, contacts: Iterable[Contact]) -> None:
        by_tag, t = self._by_tag, self._t
        new = []
        for c in contacts:
            tag = c.tag
            if tag not in by_tag:
                by_tag[tag] = c
                new.append((c.int_id ^ t, tag))
        if not new:
            return
        near = self._near
        limit = self._limit
        if len(near) >= limit:
            if not near:
                return
            new = [e for e in new if e < near[-1]]  # farther than all we list: not listed
            if not new:
                return
        near.extend(new)
        near.sort()
        del near[limit:]
        self._have = None

    def have(self) -> bytes:
        """The packed tags of the (at most MAX_HAVE) contacts nearest the key."""
        if self._have is None:
            self._have = b"".join(tag for _, tag in self._near)
        return self._have

    def resolve(self, known: bytes, listed: bytes) -> list[Contact]:
        """The contacts an answer named by tag; every tag must be one of `listed` (the `have`
        sent with that request), else RemoteProtocolError."""
        out: list[Contact] = []
        if not known:
            return out
        if self._listed[0] != listed:  # parsed once per list, not per answer
            self._listed = (listed, frozenset(split(listed)))
        allowed = self._listed[1]
        for tag in split(known):
            if tag not in allowed:
                raise RemoteProtocolError("an answer named a certificate tag we did not list")
            out.append(self._by_tag[tag])
        return out


def answer_parts(near: Iterable[Contact], have: bytes) -> tuple[tuple[NodeCert, ...], bytes]:
    """The server's side: (full certificates, packed tags) naming `near`, a tag for each contact
    whose tag the asker listed in `have`."""
    if not have:
        return tuple(c.cert for c in near), b""
    listed = _parsed(have)
    certs: list[NodeCert] = []
    tags: list[bytes] = []
    for c in near:
        tag = c.tag
        if tag in listed:
            tags.append(tag)
        else:
            certs.append(c.cert)
    return tuple(certs), b"".join(tags)


def answer_naming(near: Sequence[Contact], msg: object) -> Tags | Nodes:
    """The lookup-form answer (to a FindTags, or to a GetCerts `msg`) naming exactly `near`:
    for stand-in servers that decide what to name themselves (sim/adversary.py, tests)."""
    if isinstance(msg, GetCerts):
        want = _parsed(msg.want)
        return Nodes(tuple(c.cert for c in near if c.tag in want))
    return Tags(b"".join([c.tag for c in near]))


_PARSED: OrderedDict[bytes, frozenset[bytes]] = OrderedDict()
MAX_PARSED = 1024  # `have` lists remembered parsed: a lookup sends the same one again and again


def _parsed(have: bytes) -> frozenset[bytes]:
    hit = _PARSED.get(have)
    if hit is None:
        hit = frozenset(split(have))  # raises on a malformed list before anything is kept
        if len(_PARSED) >= MAX_PARSED:
            _PARSED.popitem(last=False)
        _PARSED[have] = hit
    return hit


class TagIndex:
    """The verified contacts a node has met, by tag, bounded: it keeps at least the `capacity`
    most recently used (added or named), never more than twice that. Only `Contact`s go in, and
    a `Contact` is only ever made from a verified NodeCert.

    Two generations of plain dicts, not one OrderedDict in exact recency order: every node holds
    one with its whole routing table in it, and an OrderedDict costs ~75 bytes an entry and a
    `move_to_end` per tag of every answer. A use of a tag in the young generation changes
    nothing; one in the old generation moves it to the young one; when the young one is full
    it becomes the old one and the old one, what nobody used for a whole generation, is
    dropped. So a FIND_NODE answer's tags cost a dict lookup each, and an entry ~30 bytes
    (10,000 simulated nodes: 470 -> 389 MB at the peak; docs/performance.md)."""

    __slots__ = ("_new", "_old", "capacity")

    def __init__(self, capacity: int = INDEX_SIZE) -> None:
        self.capacity = max(1, capacity)
        self._new: dict[bytes, Contact] = {}  # used since the last turn of generations
        self._old: dict[bytes, Contact] = {}  # used in the generation before, not since

    def __len__(self) -> int:
        return len(self._new) + len(self._old)

    def __contains__(self, tag: bytes) -> bool:
        return tag in self._new or tag in self._old

    def __iter__(self) -> Iterator[bytes]:
        """The tags held: the old generation's, then the young one's."""
        yield from self._old
        yield from self._new

    def get(self, tag: bytes) -> Contact | None:
        hit = self._new.get(tag)
        if hit is None:
            hit = self._old.pop(tag, None)
            if hit is not None:
                self._use(tag, hit)
        return hit

    def resolve(self, named: Sequence[bytes], now: float, skew: float) -> list[Contact] | None:
        """The contacts `named`, in its order, when every tag is here and every contact's
        certificate is valid at `now` (± `skew`); each is then used, in order, as `add` of each
        in turn would leave them. None, with nothing changed, otherwise: the caller fetches or
        drops (dht_node.py). No verification: what is here was verified when it was made (a
        Contact), and only the validity window depends on `now` (dht/contacts.py)."""
        young = self._new.get
        old = self._old
        found: list[Contact] = []
        aged = False
        for tag in named:
            hit = young(tag)
            if hit is None:
                hit = old.get(tag)
                if hit is None:
                    return None
                aged = True
            cert = hit.cert
            if not cert.issued - skew <= now <= cert.expires + skew:
                return None
            found.append(hit)
        if aged:  # each is used, in order (a turn of generations half-way sees those before)
            for tag, hit in zip(named, found, strict=True):
                if tag not in self._new:
                    self._old.pop(tag, None)  # (or dropped by a turn this very loop made)
                    self._use(tag, hit)
        return found

    def add(self, contact: Contact) -> None:
        tag = contact.tag
        if tag in self._new:
            self._new[tag] = contact
            return
        self._old.pop(tag, None)
        self._use(tag, contact)

    def drop(self, tag: bytes) -> None:
        self._new.pop(tag, None)
        self._old.pop(tag, None)

    def _use(self, tag: bytes, contact: Contact) -> None:
        """Put `contact`, held in neither generation, into the young one."""
        if len(self._new) >= self.capacity:  # the old generation goes; the young one ages
            self._old = self._new
            self._new = {}
        self._new[tag] = contact


class InFlight:
    """The certificates one lookup is fetching, so that each is fetched once (module
    docstring): `claim` the tags nobody is fetching, `done` them when the fetch ends (however
    it ends), `wait` for the others."""

    __slots__ = ("_events", "_tickets")

    # Waiters woken by one fetch resume this far apart, in the order they claimed: trio runs
    # tasks woken at one instant in an arbitrary order, and the lookup applies answers in the
    # order they resume, so without it a simulated run would not replay from its seed.
    TURN = 1e-6

    def __init__(self) -> None:
        self._events: dict[bytes, trio.Event] = {}
        self._tickets = 0

    async def wait(self, events: Sequence[trio.Event], ticket: int) -> None:
        """Until every fetch in `events` has ended, then this waiter's turn."""
        for ev in events:
            await ev.wait()
        await trio.sleep(ticket * self.TURN)

    def claim(self, tags: Sequence[bytes]) -> tuple[list[bytes], list[trio.Event], int]:
        """(the tags this caller is to fetch, the fetches in flight it should wait for, its
        ticket for `wait`)."""
        mine: list[bytes] = []
        others: list[trio.Event] = []
        events = self._events
        for tag in tags:
            ev = events.get(tag)
            if ev is None:
                events[tag] = trio.Event()
                mine.append(tag)
            elif not ev.is_set():
                others.append(ev)
        if others:
            self._tickets += 1
        return mine, others, self._tickets

    def done(self, tags: Iterable[bytes]) -> None:
        for tag in tags:
            ev = self._events.pop(tag, None)
            if ev is not None:
                ev.set()
