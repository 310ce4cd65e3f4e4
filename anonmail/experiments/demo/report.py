"""The demo's tables: what each node saw of the mail, per role, and the verdicts.

Everything printed is computed from the nodes' records (model.Seen): ids in short form, sizes,
counts and times relative to the start of Alice's send. The names of keys ("Bob's inbox") are
the narrator's, who knows the addresses and the message id; a node sees only the key. Content
never reaches these functions: the records hold none.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Iterable

from anonmail.anon.options import DEFAULT, SIZE_CLASSES
from anonmail.experiments.demo.model import (
    ROUTING,
    STORAGE_OPS,
    Phase,
    Seen,
    appears_in,
    find_roles,
    size_profile,
)
from anonmail.experiments.demo.run import MailRun
from anonmail.records import ids

WIDTH = 100
NBSP = "\u00a0"  # keeps a number and its unit on one line when a paragraph is wrapped
INDENT = " " * 17
PRONOUN = {"alice": "her", "bob": "his", "carol": "her"}


def _s(nid: bytes) -> str:
    return ids.short(nid)


def _wrap(first: str, text: str, indent: str = INDENT) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=first, subsequent_indent=indent,
                         break_on_hyphens=False)


def _count(c: Counter[str]) -> str:
    return ", ".join(f"{n} {what}" for what, n in sorted(c.items()))


def _sizes(seen: Iterable[Seen]) -> str:
    return ", ".join(f"{n} of {size:,}{NBSP}B" for size, n in sorted(size_profile(seen).items()))


class Labels:
    """The narrator's names for keys: the run's own, and fragments in the order stored."""

    def __init__(self, run: MailRun) -> None:
        self.names = dict(run.keys)
        frags = [s.key for s in sorted(run.seen, key=lambda s: s.time)
                 if s.what == "Store" and s.kind == "FRAGMENT" and s.key is not None]
        for i, key in enumerate(dict.fromkeys(frags)):
            self.names[key] = f"fragment {'abcdefghijklmnopqrstuvwxyz'[i % 26]}"
        # a lookup names a key's lookup home (records/ids.py), which an address's inbox,
        # request inbox and certificate share: the first name given to a home is its label
        self.homes: dict[bytes, str] = {}
        for key, name in self.names.items():
            self.homes.setdefault(ids.lookup_home(key), name)

    def __call__(self, key: bytes | None) -> str:
        if key is None:
            return "-"
        return self.names.get(key) or self.homes.get(key) or f"key {_s(key)}"

    def legend(self, keys: Iterable[bytes]) -> str:
        named = dict.fromkeys(k for k in keys if k in self.names)
        return ", ".join(f"{self.names[k]} = {_s(k)}" for k in named)


class Since:
    """Times relative to the send's start, as a point or a range."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0

    def __call__(self, seen: Iterable[Seen]) -> str:
        ts = [s.time - self.t0 for s in seen]
        if not ts:
            return "-"
        lo, hi = f"{min(ts):+.2f}", f"{max(ts):+.2f}"
        return f"{lo}{NBSP}s" if lo == hi else f"{lo}…{hi}{NBSP}s"


def _ops(at: list[Seen], label: Labels) -> str:
    """What a circuit's end did, by op: counts, target counts and the keys."""
    by: dict[str, list[Seen]] = {}
    for s in at:
        if s.what != "open":
            by.setdefault(s.what, []).append(s)
    parts = []
    for what, got in by.items():
        if what == "Locate":
            parts.append(f"{len(got)} Locate (random keys)")
            continue
        targets = sorted({s.targets for s in got if s.targets})
        to = f" to {'/'.join(map(str, targets))} node{'s' if targets != [1] else ''} each" \
            if targets else ""
        keys = ", ".join(dict.fromkeys(label(s.key) for s in got))
        parts.append(f"{len(got)} {what}{to} ({keys})")
    return "; ".join(parts)


def send_views(run: MailRun) -> list[str]:
    """Per role, what each node saw of Alice's send and what it could not see."""
    p = find_roles("alice", run.clients["alice"], run.seen, run.send_start, run.send_end)
    label, when = Labels(run), Since(run.send_start)
    alice = run.clients["alice"]
    keys = [s.key for s in p.seen if s.key is not None and s.what in STORAGE_OPS]
    out = [f"\n== What each node saw of Alice's send (t from its start; {len(run.nodes)} nodes; "
           "ids are node ids) ==",
           *_wrap("", f"Alice's agent is client node {_s(alice)}: a fresh key for this session, "
                      "no endpoint, so it only dials out. Keys of this mail (the names are the "
                      "narrator's: a node sees only the key): " + label.legend(keys) + ".", ""),
           ""]
    for x in p.guards:
        mine = [s for s in p.at(x) if s.peer == alice]
        opens = [s for s in mine if s.what == "open"]
        cells = [s for s in mine if s.what == "cell"]
        direct = Counter(s.what for s in mine if s.via == "direct" and s.what not in ROUTING)
        onward = {s.next for s in opens if s.next is not None}
        out += _wrap(f"X    {_s(x)}  ",
                     f"Alice's guard. Saw her client {_s(alice)}: {_count(direct)} (a Locate names "
                     f"a random key); {len(opens)} circuit opens, onward to {len(onward)} "
                     f"different nodes; {len(cells)} cells ({_sizes(cells)}); {when(mine)}.")
        out += _wrap(INDENT, "Could not see: the recipients, any key of the mail, what a cell "
                             "asks for, a byte of content (each cell is encrypted for every hop "
                             f"and padded to one of {len(SIZE_CLASSES)} sizes).")
    for node in p.ends:
        at = [s for s in p.at(node) if s.via == "end"]
        circuits = sum(1 for s in at if s.what == "open")
        # a circuit the session opened before the send (a lookup's, a cross-check's) shows here
        # only by its cells
        opened = f"{circuits} circuit{'s' if circuits != 1 else ''}" if circuits else \
            "circuits opened before the send,"
        out += _wrap(f"{p.roles(node):4} {_s(node)}  ",
                     f"{opened} from {_prevs(at, p)}; "
                     f"did {_ops(at, label)}; "
                     f"{when(at)}.")
    saw = [n for n in p.ends if n in appears_in(alice, run.seen).views]
    verdict = (f"None of these {len(p.ends)} circuit ends saw Alice's client in a circuit or a "
               "storage request: each saw only the relay before it." if not saw else
               f"{len(saw)} of these {len(p.ends)} circuit ends saw Alice's client: "
               f"{', '.join(map(_s, saw))}.")
    out += _wrap(INDENT, f"{verdict} (Y: cross-checks where Z is; Z: looks keys up and forwards "
                         "storage requests; W: cross-checks Z's lookups.)")
    out += _storage(p, label, when, alice)
    out += _timing_note(run, p, label, when)
    return out


def _prevs(seen: Iterable[Seen], p: Phase) -> str:
    # The guards first (the reader checks "from X" against the X line above), then by id.
    prevs = sorted({s.peer for s in seen}, key=lambda n: (n not in p.guards, n))
    return ", ".join(f"{p.roles(n) or 'node'} {_s(n)}" for n in prevs)


def _by_client(seen: Iterable[Seen], client: bytes) -> int:
    """Storage requests a node answered for `client` itself."""
    return sum(1 for s in seen if s.what in STORAGE_OPS and s.peer == client)


def _storage(p: Phase, label: Labels, when: Since, alice: bytes) -> list[str]:
    reqs = [s for s in p.seen if s.via == "direct" and s.what in STORAGE_OPS]
    groups: dict[tuple[str, bytes | None], list[Seen]] = {}
    for s in sorted(reqs, key=lambda s: s.time):
        groups.setdefault((s.what, s.key), []).append(s)
    out = ["", "Storage and inbox nodes (a request they answered: key, sizes, times; then from "
               "whom, on which nodes):"]
    for (what, key), got in groups.items():
        nodes = list(dict.fromkeys(s.node for s in got))
        by_role: dict[str, list[str]] = {}
        for n in sorted({s.peer for s in got}):
            role = "Z" if n in p.anonymizers else "W" if n in p.checkers else \
                "Alice's client" if n == alice else "node"
            by_role.setdefault(role, []).append(_s(n))
        who = "; ".join(f"{role} {', '.join(nids)}" for role, nids in by_role.items())
        out.append(f"  {what:6} {label(key):21} {_s(key) if key else '-':10} "
                   f"{_sizes(got):>18}  {when(got):>14}")
        out += _wrap(" " * 9, f"from {who}; on {len(nodes)} nodes: "
                     + " ".join(_s(n) for n in nodes), " " * 9)
    direct = _by_client(p.seen, alice)
    out += _wrap("  ", f"{direct or 'None'} of these requests came from Alice's client: a "
                       "storage node sees the Z that asked, the key and the size.", "  ")
    return out


def _timing_note(run: MailRun, p: Phase, label: Labels, when: Since) -> list[str]:
    """X may also hold a replica: then it alone sees both ends of the send, by time."""
    out: list[str] = []
    alice = run.clients["alice"]
    for x in p.guards:
        stored = [s for s in p.at(x) if s.via == "direct" and s.what in STORAGE_OPS]
        if not stored:
            continue
        cells = [s for s in p.at(x) if s.peer == alice]
        what = "; ".join(dict.fromkeys(f"{s.what} {label(s.key)}" for s in stored))
        out += ["", *_wrap("Note: ", f"X {_s(x)} is also a storage or inbox node here: it saw "
                            f"Alice's cells at {when(cells)} and, from a Z, {what} at "
                            f"{when(stored)}. Matching such times is the pooled adversary of "
                            f"DESIGN.md §7; Z's random hold (Exp, mean "
                            f"{run.config.delay_mean:g} s in this demo, "
                            f"{DEFAULT.delay_mean:g} s on the main network) and the padding are "
                            "what blur it.", "      ")]
    return out


def read_views(run: MailRun) -> list[str]:
    """Bob's and Carol's check and read, one short paragraph each."""
    label, when = Labels(run), Since(run.send_start)
    out = ["\n== What the nodes saw of Bob's and Carol's checks and reads =="]
    for name, (start, end) in run.reads.items():
        client = run.clients[name]
        p = find_roles(name, client, run.seen, start, end)
        zw = {*p.anonymizers, *p.checkers}
        reqs = [s for s in p.seen if s.via == "direct" and s.what in STORAGE_OPS and s.peer in zw]
        relayed = Counter(s.what for s in p.seen if s.via == "relay" and s.peer == client)
        keys = ", ".join(dict.fromkeys(label(s.key) for s in reqs))
        out += _wrap(f"{name.capitalize():6} ",
                     f"{when(p.seen)}: {PRONOUN[name]} X {', '.join(map(_s, p.guards))} saw "
                     f"{PRONOUN[name]} client {_s(client)} ({relayed['open']} circuit opens, "
                     f"{relayed['cell']} cells); through Z {', '.join(map(_s, p.anonymizers))}"
                     f"{' and W ' + ', '.join(map(_s, p.checkers)) if p.checkers else ''}, "
                     f"{len({s.node for s in reqs})} storage and inbox nodes answered "
                     f"{_count(Counter(s.what for s in reqs))} about {keys}; "
                     f"{_by_client(p.seen, client) or 'none'} of these requests came from "
                     f"{PRONOUN[name]} client.",
                     " " * 7)
    return out


def verdicts(run: MailRun) -> list[str]:
    """Where each agent's client node id appears in every record of every node."""
    out = [f"\n== Verdict, from all {len(run.seen):,} records of all {len(run.nodes)} nodes "
           "(the whole run) =="]
    for name, client in run.clients.items():
        a = appears_in(client, run.seen)
        guards = {s.node for s in run.seen if s.via == "relay" and s.peer == client}
        head = f"{name.capitalize()}'s client node {_s(client)} appears in the view of: "
        if set(a.views) == guards and len(guards) == 1:
            out.append(f"{head}X {_s(next(iter(guards)))} ({PRONOUN[name]} guard) only")
        else:
            out += _wrap("", head + (", ".join(
                f"{'X ' if n in guards else ''}{_s(n)} ({_count(c)})"
                for n, c in a.views.items()) or "no node"), "  ")
    return out + _routing(run)


def _routing(run: MailRun) -> list[str]:
    """The agents' other keys: what their lookups showed, and that they showed nothing else."""
    parts, named = [], 0
    for name, lookup in run.lookups.items():
        a = appears_in(lookup, run.seen)
        other = f"and also {_count(sum(a.views.values(), Counter()))}" if a.views else \
            "and sent nothing else"
        parts.append(f"{name.capitalize()}'s, {_s(lookup)}, asked {len(a.routing)} nodes about "
                     f"{len(a.routing_keys)} keys {other}")
        named += len(a.mail_keys_named)
    alice = run.lookups["alice"]
    during = [s for s in run.seen if s.peer == alice and s.what in ROUTING
              and run.send_start <= s.time < run.send_end]
    text = (f"Besides, each agent is a DHT client that asks nodes directly where keys are "
            f"(FindNode), under a second fresh key that no circuit uses: {'; '.join(parts)}. "
            f"{named or 'None'} of those keys belong to the mail, an inbox or a certificate: "
            "they are the client's own id and random keys for choosing go-betweens. They do "
            f"tell a node when a client is busy: {len(during)} of Alice's FindNodes, to "
            f"{len({s.node for s in during})} nodes, fell inside her send.")
    return ["", *_wrap("", text, "")]
