"""`anonmail demo` — the README's first command — runs end to end and says what it showed: the
anonymous mail reached Bob and Carol byte for byte, and of all the nodes only each person's
guard X ever saw that person's circuit node id, and each agent's second node id, for its DHT
lookups, sent nothing but lookups, none for a key of the mail."""

from __future__ import annotations

import re

import pytest

from anonmail.cli import main

NID = r"[0-9a-f]{10}"


def test_demo_mails_anonymously_and_only_the_guard_sees_the_sender(
        capsys: pytest.CaptureFixture[str]) -> None:
    # 6 nodes (r = 8 is capped at what exists), an attachment large enough to be fragmented,
    # a small simulation for part 2.
    assert main(["demo", "--nodes", "6", "--attachment-kb", "800", "--sim-nodes", "200"]) == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())  # the prose is wrapped: match phrases across line breaks

    # the mail arrived, whole, at both
    assert out.count("delivered, ") == 2 and "NOT delivered" not in out
    assert out.count("photo.jpg, 800,000 bytes from 2 fragments: the bytes match what Alice "
                     "attached") == 2
    assert "DIFFER" not in out

    # the per-role sections exist, each role found in the nodes' records
    assert "== What each node saw of Alice's send" in out
    (x_line,) = re.findall(rf"^X +({NID})  Alice's guard\. Saw her client ({NID})", out, re.M)
    # Y is asked through X; Z and W are reached through X and a middle relay M (hops = 2)
    # (a node may also be Z or W and have circuits from M too; the prevs are listed X first)
    assert re.search(rf"^[MZWY+]*Y[MZWY+]* +{NID}  \d+ circuits? from X {x_line[0]}", out, re.M)
    for role in "ZW":  # a circuit opened before the send shows only by its cells
        assert re.search(rf"^[MZWY+]*{role}[MZWY+]* +{NID}  (?:\d+ circuits?|circuits opened "
                         rf"before the send,) from (?:X {x_line[0]}|[MZWY+]*M[MZWY+]* {NID})",
                         out, re.M), role
    assert "Could not see: the recipients, any key" in flat
    assert re.search(r"None of these \d+ circuit ends saw Alice's client", flat)
    assert re.search(r"^  Store  fragment a", out, re.M)
    assert re.search(r"^  Append Bob's inbox", out, re.M)
    assert re.search(r"^  Append Carol's inbox", out, re.M)
    assert "None of these requests came from Alice's client" in flat
    assert flat.count("none of these requests came from his client") == 1
    assert flat.count("none of these requests came from her client") == 1
    assert "== What the nodes saw of Bob's and Carol's checks and reads ==" in out

    # the verdicts: each client node id appears only in its own guard's view
    x, alice = x_line
    assert f"Alice's client node {alice} appears in the view of: X {x} (her guard) only" in out
    assert re.search(rf"Bob's client node {NID} appears in the view of: X {NID} \(his guard\) "
                     r"only", out)
    assert re.search(rf"Carol's client node {NID} appears in the view of: X {NID} \(her guard\) "
                     r"only", out)
    # each agent's lookup key: it did look keys up, and sent nothing else, and it is not the
    # circuit key the verdicts name
    for name in ("Alice", "Bob", "Carol"):
        m = re.search(rf"{name}'s, ({NID}), asked ([1-9]\d*) nodes about ([1-9]\d*) keys and "
                      "sent nothing else", flat)
        assert m, name
        assert f"{name}'s client node {m.group(1)}" not in flat
    assert "None of those keys belong to the mail" in flat

    # part 2: the lookup simulation
    assert "Part 2" in out
    assert "over 8 disjoint paths" in out


def test_circuit_ends_list_the_guard_first_whatever_the_ids() -> None:
    # The Y line's "from X ..." is what the reader (and the test above) checks; a node that is
    # also Z may have circuits from a middle relay whose id sorts before X's.
    from anonmail.experiments.demo.model import Seen, find_roles
    from anonmail.experiments.demo.report import _prevs
    client, x, m, end = b"\x05" * 32, b"\x09" * 32, b"\x01" * 32, b"\x07" * 32
    seen = [Seen(x, 1.0, "open", "relay", client, m), Seen(m, 1.1, "open", "relay", x, end),
            Seen(x, 1.2, "open", "relay", client, end),
            Seen(end, 1.3, "open", "end", m), Seen(end, 1.4, "Store", "end", m),
            Seen(end, 1.5, "open", "end", x), Seen(end, 1.6, "Locate", "end", x)]
    p = find_roles("alice", client, seen, 0.0, 2.0)
    assert p.guards == [x] and p.middles == [m] and p.roles(end) == "Z+Y"
    assert _prevs([s for s in seen if s.node == end], p) == \
        f"X {x.hex()[:10]}, M {m.hex()[:10]}"
