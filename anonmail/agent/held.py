"""The notices the agent holds (agent/service.py): pending messages whose body is there but
unreadable (retrieve.UnreadableMessage), which neither the agent nor any session fetches again
by itself until the user reads (`anonmail read ID`: one more try) or discards them.

`<mail_dir>/held`, one line per held notice (0600, written whole: fileio.write_private):

    <Message-ID> <sender address> <the one-line reason, may be empty>

A notice is one per (Message-ID, sender) (maildir.py, threat T-MAIL-DEDUP), so is a hold:
another sender's unreadable notice reusing a Message-ID does not hold the genuine one.
Backward compatible: a line with a Message-ID alone (written by versions that held by
Message-ID) holds every notice of that Message-ID, as it did; `settle` turns it into one line
per notice then pending, so nothing held is fetched again and nothing stored is lost. Lines
that do not parse are dropped (the notices stay pending: at worst one more fetch).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from anonmail.fileio import write_private
from anonmail.mail import compose

HELD_FILE = "held"
MAX_REASON = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# (Message-ID, sender; None: every sender, a previous version's line) -> reason ("" unknown)
Key = tuple[str, str | None]
Held = dict[Key, str]


def _sender_ok(text: str) -> bool:
    return 3 <= len(text) <= 254 and "@" in text and not any(c.isspace() for c in text)


def load(mail_dir: Path) -> Held:
    """The held notices (module docstring); {} when there is no file."""
    try:
        text = (mail_dir / HELD_FILE).read_text("utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    held: Held = {}
    for line in text.splitlines():
        parts = line.strip().split(" ", 2)
        if not parts or not compose.is_message_id(parts[0]):
            continue
        if len(parts) == 1:
            held.setdefault((parts[0], None), "")
        elif _sender_ok(parts[1]):
            held[(parts[0], parts[1])] = parts[2] if len(parts) == 3 else ""
    return held


def save(mail_dir: Path, held: Held) -> None:
    lines = [f"{mid}\n" if sender is None else f"{mid} {sender} {reason}".rstrip() + "\n"
             for (mid, sender), reason in sorted(held.items(), key=lambda kv: (kv[0][0],
                                                                               kv[0][1] or ""))]
    write_private(mail_dir / HELD_FILE, "".join(lines).encode())


def one_line(reason: str) -> str:
    """A reason as the file keeps it: one line, no control characters, at most MAX_REASON."""
    return " ".join(_CONTROL.sub(" ", reason).split())[:MAX_REASON]


def reason_of(held: Held, message_id: str, sender: str) -> str | None:
    """Why the notice of (message_id, sender) is held ("" if not known), None if it is not."""
    found = held.get((message_id, sender))
    return held.get((message_id, None)) if found is None else found


def settle(held: Held, pending: Iterable[Key]) -> Held:
    """Held notices as they stand: a previous version's line (a Message-ID alone) becomes one
    per pending notice of that Message-ID; holds of notices no longer pending (retrieved or
    discarded meanwhile) are dropped."""
    out: Held = {}
    for mid, sender in pending:
        if sender is None:
            continue
        reason = reason_of(held, mid, sender)
        if reason is not None:
            out[(mid, sender)] = reason
    return out


def hold(mail_dir: Path, message_id: str, sender: str, reason: str) -> Held:
    """Hold one notice (durably, before anything else happens); the held notices now."""
    held = load(mail_dir)
    held[(message_id, sender)] = one_line(reason)
    save(mail_dir, held)
    return held


def release(mail_dir: Path, message_id: str, sender: str) -> None:
    """Forget the hold of one notice (discarded); a previous version's line for its
    Message-ID is left for `settle` (other senders' notices may need it)."""
    held = load(mail_dir)
    if held.pop((message_id, sender), None) is not None:
        save(mail_dir, held)
