"""The charges ledger: which requesting party each stored row is charged to, in SQLite beside the
rows themselves (store/db.py writes it in the same transactions; store/budget.py reads it).

An *item* is one accounted row: ("o", key) an object or tombstone, ("e", inbox, entry id) an
inbox entry, ("a", inbox, entry id) an ACK record, ("n", scope) an owner-proof nonce, ("s",
inbox, spend) a spent one-time right. A *party* is who asked for it: the requesting node key
and its source address (`Party`), both as keyed pseudonyms (store/budget.py `party_of`); `LOCAL`
is the node itself, and rows older than schema version 3.

Invariants (tests/test_store_budgets.py checks them after every step):
* the charges of an item add up to its row's accounted size, so the charges of all items add
  up to `meta.used_bytes`; an item's charges go when its row goes (expiry, delete, ACK,
  handover), in the same transaction;
* `usage` holds, per key and per source, the sum of that party's charges (kept incrementally:
  a budget check is one indexed read, not a sum over a party's rows); units at zero are dropped;
* a charge only ever grows by what its party asked for: a merge (the same object stored again)
  charges only the growth, to the one who asked; a shrink (a deleted object's tombstone) scales
  every payer down in proportion and never raises anyone's charge.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

Item = tuple[str, bytes, bytes]  # (table tag, first key, second key or b"")

# The rows of each tag whose expiry has come, as items (`release_expired`). Objects are not
# here: StoreDb.expire drops them one by one through drop_object, which releases them.
_EXPIRING = (
    "SELECT 'e', inbox, entry_id FROM entries WHERE expires <= ?",
    "SELECT 'a', inbox, entry_id FROM acked WHERE expires <= ?",
    "SELECT 'n', scope, X'' FROM nonces WHERE expires <= ?",
    "SELECT 's', inbox, spend FROM spent WHERE expires <= ?",
)


@dataclass(frozen=True, slots=True)
class Party:
    """Who a stored row is charged to."""

    key: bytes  # pseudonym of the requesting node id; b"": the node itself
    source: bytes | None = None  # pseudonym of its source address; None: judged by key alone


LOCAL = Party(b"")


def object_item(key: bytes) -> Item:
    return ("o", key, b"")


class Ledger:
    """The `charges` and `usage` tables of one StoreDb connection. Writes happen only inside
    the StoreDb's transactions (StoreDb calls them; nothing else writes)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._c = conn

    # -- reading ---------------------------------------------------------------------------------

    def usage(self, party: Party) -> tuple[int, int]:
        """(bytes charged to the party's key, bytes charged to its source: 0 without one)."""
        return (self._unit("k", party.key),
                0 if party.source is None else self._unit("s", party.source))

    def _unit(self, kind: str, who: bytes) -> int:
        row = self._c.execute("SELECT bytes FROM usage WHERE kind=? AND who=?",
                              (kind, who)).fetchone()
        return 0 if row is None else int(row[0])

    def charges(self, item: Item) -> dict[Party, int]:
        return {Party(bytes(k), bytes(s) or None): int(b) for k, s, b in self._c.execute(
            "SELECT party, source, bytes FROM charges WHERE tab=? AND k1=? AND k2=?", item)}

    def total(self) -> int:
        return int(self._c.execute("SELECT COALESCE(SUM(bytes), 0) FROM charges").fetchone()[0])

    def consistent(self) -> bool:
        """Does `usage` equal the sums of `charges` (tests)?"""
        c = self._c
        keys = dict(c.execute("SELECT party, SUM(bytes) FROM charges GROUP BY party "
                              "HAVING SUM(bytes) != 0"))
        sources = dict(c.execute("SELECT source, SUM(bytes) FROM charges WHERE source != X'' "
                                 "GROUP BY source HAVING SUM(bytes) != 0"))
        units = {(str(k), bytes(w)): int(b) for k, w, b in c.execute("SELECT * FROM usage")}
        want = ({("k", bytes(k)): int(b) for k, b in keys.items()}
                | {("s", bytes(s)): int(b) for s, b in sources.items()})
        return units == want

    # -- writing ---------------------------------------------------------------------------------

    def charge(self, item: Item, party: Party, amount: int) -> None:
        """Add `amount` (> 0, or nothing happens) to the party's charge for the item."""
        if amount <= 0:
            return
        self._c.execute(
            "INSERT INTO charges VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tab, k1, k2, party, "
            "source) DO UPDATE SET bytes = bytes + excluded.bytes",
            (*item, party.key, party.source or b"", amount))
        self._use(party, amount)

    def release(self, item: Item) -> None:
        """The item's row is gone: drop its charges."""
        for party, amount in self.charges(item).items():
            self._use(party, -amount)
        self._c.execute("DELETE FROM charges WHERE tab=? AND k1=? AND k2=?", item)

    def release_expired(self, now: float) -> None:
        """Release the items of every entry, ACK record, nonce and spent right expiring at
        `now` (before StoreDb.expire deletes those rows)."""
        for query in _EXPIRING:
            for item in [(str(t), bytes(a), bytes(b))
                         for t, a, b in self._c.execute(query, (now,))]:
                self.release(item)

    def replace(self, item: Item, size: int, party: Party) -> None:
        """A new row under the item's name: all of it is the party's."""
        self.release(item)
        self.charge(item, party, size)

    def settle(self, item: Item, size: int, party: Party) -> None:
        """The same row rewritten at `size` (a merge, a delete). Growth is charged to the party
        that asked for it; a shrink scales every payer down in proportion (cumulative rounding:
        the shares add up to `size` exactly and none grows)."""
        held = self.charges(item)
        total = sum(held.values())
        if size >= total:
            self.charge(item, party, size - total)
            return
        self.release(item)
        done = cum = 0
        for payer in sorted(held, key=lambda p: (p.key, p.source or b"")):
            cum += held[payer]
            upto = cum * size // total
            self.charge(item, payer, upto - done)
            done = upto

    def _use(self, party: Party, delta: int) -> None:
        units = [("k", party.key)]
        if party.source is not None:
            units.append(("s", party.source))
        for kind, who in units:
            self._c.execute("INSERT INTO usage VALUES (?, ?, ?) ON CONFLICT (kind, who) "
                            "DO UPDATE SET bytes = bytes + excluded.bytes", (kind, who, delta))
            self._c.execute("DELETE FROM usage WHERE kind=? AND who=? AND bytes=0", (kind, who))
