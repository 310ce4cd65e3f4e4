"""The SMTP baseline of `anonmail bench mail` (experiments/bench/smtp_baseline.py): it delivers
the workload byte-identical into a Maildir, and counts a delivery only when the bytes read back
equal the bytes sent. Real loopback sockets and threads, each run under an absolute timeout."""

from __future__ import annotations

import mailbox
import smtplib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

pytest.importorskip("aiosmtpd")

from anonmail.experiments.bench import command, smtp_baseline
from anonmail.experiments.bench.smtp_baseline import SmtpBench

LIMIT = 20.0  # seconds: far above a run's ~0.1 s, so only a hang trips it


async def _in_thread(fn: Callable[[], SmtpBench]) -> SmtpBench:
    with trio.fail_after(LIMIT):
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


async def test_baseline_delivers_every_message_byte_identical() -> None:
    b = await _in_thread(partial(smtp_baseline.bench_smtp, 4, 3_000))
    assert (b.messages, b.size, b.delivered, b.fsync) == (4, 3_000, 4, True)
    assert b.seconds > 0 and b.per_second == 4 / b.seconds
    assert "4/4 byte-identical" in smtp_baseline.format_smtp(b)


async def test_a_message_stored_with_other_bytes_is_not_a_delivery(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = smtp_baseline._MaildirHandler.handle_DATA

    async def corrupting(self: Any, server: Any, session: Any, envelope: Any) -> str:
        if self.count % 2:  # the 2nd and 4th message: one body byte flipped on the way in
            data = bytearray(envelope.content)
            data[-3] ^= 1
            envelope.content = bytes(data)
        return await real(self, server, session, envelope)

    monkeypatch.setattr(smtp_baseline._MaildirHandler, "handle_DATA", corrupting)
    b = await _in_thread(partial(smtp_baseline.bench_smtp, 4, 1_000, fsync=False))
    assert b.delivered == 2


def _deliver_and_list(root: Path, sent: list[bytes]) -> dict[str, bytes]:
    mailbox.Maildir(str(root), factory=None, create=True)
    handler = smtp_baseline._MaildirHandler(root, fsync=True)
    with smtp_baseline._server(handler, 1 << 20) as port, \
            smtplib.SMTP("127.0.0.1", port, local_hostname="test.invalid",
                         timeout=LIMIT) as client:
        for data in sent:
            assert client.sendmail(smtp_baseline.SENDER, [smtp_baseline.RECIPIENT], data) == {}
    return {p.name: p.read_bytes() for p in (root / "new").iterdir()}


async def test_the_maildir_holds_exactly_the_bytes_sent(tmp_path: Path) -> None:
    sent = [smtp_baseline.build_message(i, 1_500 + 7 * i) for i in range(3)]
    with trio.fail_after(LIMIT):
        files = await trio.to_thread.run_sync(
            partial(_deliver_and_list, tmp_path / "Maildir", sent), abandon_on_cancel=True)
    assert sorted(files.values()) == sorted(sent)
    assert [len(m) for m in sent] == [1_500, 1_507, 1_514]
    assert not list((tmp_path / "Maildir" / "tmp").iterdir())  # every file renamed into new/
    box = mailbox.Maildir(str(tmp_path / "Maildir"), factory=None, create=False)
    assert sorted(box.get_bytes(k) for k in box.iterkeys()) == sorted(sent)


def test_built_messages_are_exact_sized_and_valid_smtp_lines() -> None:
    for size in (300, 301, 302, 379, 380, 381, 20_000):
        data = smtp_baseline.build_message(0, size)
        assert len(data) == size and data.endswith(b"\r\n")
        assert max(len(line) for line in data.split(b"\r\n")) <= 998
        assert b"\n" not in data.replace(b"\r\n", b"")
    assert smtp_baseline.build_message(0, 500) != smtp_baseline.build_message(0, 500)


def test_the_ratio_line_and_the_missing_extra(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    b = SmtpBench(messages=10, size=1_000, delivered=10, seconds=0.1, fsync=True)
    assert smtp_baseline.format_ratio(5.0, b).startswith(
        "anonmail deliveries/s over SMTP's: 0.050x  (SMTP is 20.0x faster;")
    assert "n/a" in smtp_baseline.format_ratio(0.0, b)
    monkeypatch.setattr(smtp_baseline, "available", lambda: False)
    command._smtp_baseline(1, 1_000, 1.0)
    assert capsys.readouterr().out.strip() == smtp_baseline.MISSING
    assert "pip install 'anonmail[bench]'" in smtp_baseline.MISSING
