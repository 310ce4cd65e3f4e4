"""The notices the agent holds (agent/service.py): pending messages whose body is there but
unreadable (retrieve.UnreadableMessage), which neither the agent nor any session fetches again
by itself until the user reads (`anonmail read ID`: one more try) or discards them.

`<mail_dir>/held`, one line per held notice (0600, written whole: fileio.write_private):

    <Message-ID> <sender address> <the one-line reason, may be empty>

A notice is one per (Message-ID, sender) (notices.py, threat T-MAIL-DEDUP), so is a hold:
another sender's unreadable notice reusing a Message-ID does not hold the genuine one. Lines
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

# (Message-ID, sender) -> the one-line reason ("" unknown)
Key = tuple[str, str]
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
        if len(parts) >= 2 and compose.is_message_id(parts[0]) and _sender_ok(parts[1]):
            held[(parts[0], parts[1])] = parts[2] if len(parts) == 3 else ""
    return held


def save(mail_dir: Path, held: Held) -> None:
    lines = [f"{mid} {sender} {reason}".rstrip() + "\n"
             for (mid, sender), reason in sorted(held.items())]
    write_private(mail_dir / HELD_FILE, "".join(lines).encode())


def one_line(reason: str) -> str:
    """A reason as the file keeps it: one line, no control characters, at most MAX_REASON."""
    return " ".join(_CONTROL.sub(" ", reason).split())[:MAX_REASON]


def settle(held: Held, pending: Iterable[Key]) -> Held:
    """The holds of notices still pending (one retrieved or discarded meanwhile is no longer
    held)."""
    return {key: held[key] for key in pending if key in held}


def hold(mail_dir: Path, message_id: str, sender: str, reason: str) -> Held:
    """Hold one notice (durably, before anything else happens); the held notices now."""
    held = load(mail_dir)
    held[(message_id, sender)] = one_line(reason)
    save(mail_dir, held)
    return held


def release(mail_dir: Path, message_id: str, sender: str) -> None:
    """Forget the hold of one notice (retrieved or discarded)."""
    held = load(mail_dir)
    if held.pop((message_id, sender), None) is not None:
        save(mail_dir, held)
