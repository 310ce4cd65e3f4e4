"""The README's claim that an anonymous session needs at least three other nodes, over real
processes: on a test network of two nodes `anonmail send` refuses with one line naming
`--direct`, sends nothing and keeps the message in the Outbox; on three it sends (here, a
first contact's RTS)."""

from __future__ import annotations

from pathlib import Path

import pytest
from procnet import anonmail, local_net, user


@pytest.mark.parametrize("nodes", [2, 3])
def test_an_anonymous_session_needs_three_other_nodes(tmp_path: Path, nodes: int) -> None:
    with local_net(tmp_path / "net", nodes) as t:
        alice, _ = user(t, tmp_path, "alice")
        _, bob = user(t, tmp_path, "bob")
        (tmp_path / "body.txt").write_text("Hello.\n")
        r = anonmail("send", "--home", str(alice), "--to", bob, str(tmp_path / "body.txt"),
                     timeout=180)
        kept = anonmail("outbox", "--home", str(alice))
    if nodes < 3:
        assert r.returncode == 2 and r.stdout == "", r.stdout
        assert r.stderr.count("\n") == 1 and "too few nodes" in r.stderr, r.stderr
        assert "--direct" in r.stderr
        assert not any((alice / "mail" / "Maildir" / ".Sent" / "new").iterdir())
        assert kept.returncode == 0 and "not sent" in kept.stdout, kept.stdout
    else:
        assert r.returncode == 0, r.stderr
        assert f"{bob}: asked for permission" in r.stdout, r.stdout
